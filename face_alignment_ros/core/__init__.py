"""core floor of face_alignment_ros, the ground: the 3DMM, camera, crop, detectors, descriptors,
cascade and the ``FaceAligner`` facade. Imports nothing else of the package and never rclpy
(docs/ARCHITECTURE.md)."""
