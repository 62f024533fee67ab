"""The package's graph in one process: ``face_alignment_node`` + ``descent_model_node`` on a
MultiThreadedExecutor, the lifecycle node driven through its real change_state services.
Used by ``face-align-ros`` and the tests (launch_ros is absent from PyPI)."""
from __future__ import annotations

import threading
import traceback

from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from face_alignment_ros.ros.descent_model_node import DescentModelNode
from face_alignment_ros.ros.face_alignment_node import FaceAlignmentNode
from face_alignment_ros.ros.lifecycle_client import LifecycleClient


def node_args(params_file: str | None = None, remaps: dict | None = None, overrides: dict | None = None) -> list:
    """rcl arguments for one node: a parameter file, remappings, single parameter overrides."""
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", str(params_file)]
    for src, dst in (remaps or {}).items():
        args += ["-r", f"{src}:={dst}"]
    for name, value in (overrides or {}).items():
        args += ["-p", f"{name}:={_yaml_value(value)}"]
    return args


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


class Graph:
    """Both nodes plus a small manager node holding the lifecycle client."""

    def __init__(self, image_topic: str = "image", params_file: str | None = None, namespace: str = "",
                 aligner_overrides: dict | None = None, model_overrides: dict | None = None, context=None,
                 camera_info_topic: str | None = None):
        remaps = {"image": image_topic}
        if camera_info_topic:
            remaps["camera_info"] = camera_info_topic
        self.context = context
        self.aligner = FaceAlignmentNode(namespace=namespace, context=context,
                                         cli_args=node_args(params_file, remaps, aligner_overrides))
        self.model_node = DescentModelNode(namespace=namespace, context=context,
                                           cli_args=node_args(params_file, None, model_overrides))
        self.manager = Node("face_alignment_manager", namespace=namespace, context=context)
        self.lifecycle = LifecycleClient(self.manager, self.model_node.get_fully_qualified_name())
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        for n in (self.aligner, self.model_node, self.manager):
            self.executor.add_node(n)
        self._thread = None
        self._stopped = threading.Event()
        self.failure: BaseException | None = None  # what stopped the executor, if anything did

    def start(self) -> Graph:
        """Spin in a background thread."""
        self._thread = threading.Thread(target=self._spin, name="face_alignment_executor", daemon=True)
        self._thread.start()
        return self

    def _spin(self):
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # the callbacks are guarded; this is the last line
            self.failure = exc
            self.manager.get_logger().fatal(f"executor stopped by {type(exc).__name__}: {exc}\n"
                                            f"{traceback.format_exc()}")
        finally:
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the executor has stopped (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)

    def bring_up(self, timeout: float = 30.0) -> bool:
        """configure + activate the descent model node via its services; True on success."""
        if not self.lifecycle.wait_for_services(timeout):
            raise TimeoutError("lifecycle services of the descent model node did not appear")
        log = self.manager.get_logger()
        for transition in ("configure", "activate"):
            if not self.lifecycle.change_state(transition, timeout):
                log.error(f"descent model node: {self.model_node.last_error or transition + ' failed'}")
                return False
        return True

    def shutdown(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        for n in (self.aligner, self.model_node, self.manager):
            n.destroy_node()
