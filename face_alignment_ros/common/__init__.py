"""common floor of face_alignment_ros: what training, evaluation and ros all read (metrics,
annotation I/O, the photo split, the render format, sample images and streams, stand-in models).
Imports only core (docs/ARCHITECTURE.md)."""
