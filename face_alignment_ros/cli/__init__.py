"""cli floor of face_alignment_ros: the console entry points, on top of every other floor
(docs/ARCHITECTURE.md)."""
