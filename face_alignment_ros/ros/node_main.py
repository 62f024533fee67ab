"""The ``main`` of a stand-alone node executable: init, spin until Ctrl-C or shutdown, clean up.
An executor that dies of an exception ends the process with status 1, the reason logged."""
from __future__ import annotations

import traceback

import rclpy
import rclpy.executors

from face_alignment_ros.ros.transport_profile import use_shipped_profile


def spin_node(node_factory, executor_factory=None, args=None) -> int:
    use_shipped_profile()  # before rclpy.init: Fast DDS reads it when the middleware loads
    rclpy.init(args=args)
    node = node_factory()
    status = 0
    try:
        rclpy.spin(node, executor=executor_factory() if executor_factory else None)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except Exception as exc:
        node.get_logger().fatal(f"executor stopped by {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        status = 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return status
