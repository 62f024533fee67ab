"""ROS 2 floor of face_alignment_ros (docs/ARCHITECTURE.md): a thin adapter over the core.

Message and image conversion, parameters, QoS, TF, diagnostics, the ``face_alignment_node``
and the ``descent_model_node`` lifecycle node. No maths lives here: geometry comes from
``face_alignment_ros.core`` (metric pose: ``core.head_frame.metric_pose``). See docs/ros.md.

Modules importing rclpy are not imported here, so ``image_conversion`` stays usable without
ROS (the bag tool reads rosbags messages with it too). Reads core and common, never training or
evaluation.
"""
