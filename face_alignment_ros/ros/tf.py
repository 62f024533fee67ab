"""TF output: tf2_ros' broadcaster where importable, else tf2_msgs/TFMessage on /tf directly
(what the broadcaster does; the stand-in tf2_msgs built by `make setup` is wire-identical)."""
from __future__ import annotations

from face_alignment_ros.ros.qos import TF_QOS


class TfPublisher:
    def __init__(self, node):
        try:
            from tf2_ros import TransformBroadcaster  # full ROS 2 installs

            self._broadcaster = TransformBroadcaster(node)
            self._publisher = None
            self.backend = "tf2_ros"
        except ImportError:
            from tf2_msgs.msg import TFMessage

            self._broadcaster = None
            self._message = TFMessage
            self._publisher = node.create_publisher(TFMessage, "/tf", TF_QOS)
            self.backend = "tf2_msgs"

    def send(self, transforms) -> None:
        if not transforms:
            return
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(list(transforms))
        else:
            self._publisher.publish(self._message(transforms=list(transforms)))
