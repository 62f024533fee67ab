"""``descent_model_node``: a lifecycle node that loads the trained descent directions and hands
them to ``face_alignment_node`` on the transient-local topic ``descent_model``.

Transitions (as ros2/demos lifecycle_py):
- configure: read the parameters, load and validate the file (schema, descriptor, iteration
  count, optional SHA-256); create the lifecycle publisher. A missing or corrupt file fails the
  transition with the reason logged, and the node stays unconfigured: fix the parameter and
  configure again.
- activate: publish the model once; transient-local durability delivers it to aligners that
  start later. A running aligner swaps to it between two frames.
- deactivate: the publisher stops sending (the aligner keeps the model it has).
- cleanup: release the model and destroy the publisher. shutdown: the same, from any state.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from face_alignment_ros.core import resources
from face_alignment_ros.core.descent_model import DESCRIPTOR_KINDS, DescentModel
from face_alignment_ros.core.morphable_model import ModelFileError
from face_alignment_ros.msg import DescentModel as DescentModelMsg
from face_alignment_ros.ros.parameters import Param, ParameterSet, sha256_check
from face_alignment_ros.ros.qos import LATCHED_QOS

NODE_NAME = "descent_model_node"

PARAMS = [
    Param("model_file", "",
          "Descent model file (.npz); empty means the shipped assets/descent_<descriptor>.npz. "
          "Read at configure."),
    Param("descriptor", "dff", "Descriptor kind the model must be trained for.", choices=DESCRIPTOR_KINDS),
    Param("iterations", 0, "Cascade iterations the model must hold; 0 accepts any count.", range=(0, 100)),
    Param("sha256", "", "Expected SHA-256 of the file (hex); empty skips the check.", check=sha256_check),
]


def shipped_model_file(descriptor: str) -> Path:
    return resources.ASSETS_DIR / resources.DESCENT_MODEL_FILES[descriptor]


class DescentModelNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.params = ParameterSet(self, PARAMS)
        self._publisher = None
        self.model: DescentModel | None = None
        self._message: DescentModelMsg | None = None
        self.last_error = ""

    def model_path(self) -> Path:
        return Path(self.params["model_file"]) if self.params["model_file"] else \
            shipped_model_file(self.params["descriptor"])

    def load(self) -> tuple[DescentModel, bytes, str]:
        """Load and validate the configured file; raises ModelFileError with the reason."""
        path = self.model_path()
        if not path.is_file():
            raise ModelFileError(f"descent model file not found: {path}"
                                 + ("" if self.params["model_file"] else f". {resources.TRAIN_HINT}"))
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        expected = self.params["sha256"].lower()
        if expected and sha != expected:
            raise ModelFileError(f"descent model {path}: sha256 is {sha}, the parameter sha256 expects {expected}")
        model = DescentModel.from_bytes(data, source=str(path), expect_descriptor=self.params["descriptor"])
        if self.params["iterations"] and model.iterations != self.params["iterations"]:
            raise ModelFileError(f"descent model {path}: field 'iterations' is {model.iterations}, "
                                 f"the parameter iterations expects {self.params['iterations']}")
        return model, data, sha

    # --- transitions ----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            model, data, sha = self.load()
        except (ModelFileError, OSError) as exc:
            self.last_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.model, self.last_error = model, ""
        self._message = DescentModelMsg(metadata_json=json.dumps(model.metadata()), npz_bytes=data, sha256=sha)
        self._publisher = self.create_lifecycle_publisher(DescentModelMsg, "descent_model", LATCHED_QOS)
        self.get_logger().info(f"configured: {self.model_path()} ({model.descriptor}, {model.iterations} "
                               f"iterations, {len(data)} bytes, sha256 {sha[:12]})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publisher
        self._publisher.publish(self._message)
        self.get_logger().info(f"activated: descent model {self._message.sha256[:12]} published on "
                               f"{self._publisher.topic_name}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def _release(self) -> None:
        if self._publisher is not None:
            self.destroy_lifecycle_publisher(self._publisher)
        self._publisher, self.model, self._message = None, None, None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info(f"shut down from {state.label}")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().error(f"error in {state.label}; released, back to unconfigured")
        return TransitionCallbackReturn.SUCCESS


def main(args=None) -> int:
    from face_alignment_ros.ros.node_main import spin_node

    return spin_node(DescentModelNode, args=args)
