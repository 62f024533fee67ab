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

A transition that is not valid from the current state is refused (``SafeLifecycleNode``). Each
failure's reason is logged and published on /diagnostics with the current state.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn

from face_alignment_ros.core import resources
from face_alignment_ros.core.descent_model import DESCRIPTOR_KINDS, DescentModel
from face_alignment_ros.core.morphable_model import ModelFileError
from face_alignment_ros.msg import DescentModel as DescentModelMsg
from face_alignment_ros.ros.callbacks import CallbackGuard
from face_alignment_ros.ros.lifecycle_node import SafeLifecycleNode
from face_alignment_ros.ros.parameters import Param, ParameterSet, sha256_check
from face_alignment_ros.ros.qos import DIAGNOSTICS_QOS, LATCHED_QOS

NODE_NAME = "descent_model_node"

PARAMS = [
    Param("model_file", "",
          "Descent model file (.npz); empty means the shipped assets/descent_<descriptor>.npz. "
          "Read at configure."),
    Param("descriptor", "dff", "Descriptor kind the model must be trained for.", choices=DESCRIPTOR_KINDS),
    Param("iterations", 0, "Cascade iterations the model must hold; 0 accepts any count.", range=(0, 100)),
    Param("sha256", "", "Expected SHA-256 of the file (hex); empty skips the check.", check=sha256_check),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", range=(0.05, 60.0), read_only=True),
]


def shipped_model_file(descriptor: str) -> Path:
    return resources.shipped_models(descriptor).descent


def model_path(params: dict) -> Path:
    """The file the parameters name: ``model_file``, else the shipped one of ``descriptor``."""
    return Path(params["model_file"]) if params["model_file"] else shipped_model_file(params["descriptor"])


def load_model(params: dict) -> tuple[DescentModel, bytes, str]:
    """Load and validate the file of ``params`` (this node's parameter values): (model, file
    bytes, sha256). Raises ModelFileError with the reason. ``face-align-bag`` loads with it too."""
    path = model_path(params)
    if not path.is_file():
        raise ModelFileError(f"descent model file not found: {path}"
                             + ("" if params["model_file"] else f". {resources.TRAIN_HINT}"))
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    expected = params["sha256"].lower()
    if expected and sha != expected:
        raise ModelFileError(f"descent model {path}: sha256 is {sha}, the parameter sha256 expects {expected}")
    model = DescentModel.from_bytes(data, source=str(path), expect_descriptor=params["descriptor"])
    if params["iterations"] and model.iterations != params["iterations"]:
        raise ModelFileError(f"descent model {path}: field 'iterations' is {model.iterations}, "
                             f"the parameter iterations expects {params['iterations']}")
    return model, data, sha


class DescentModelNode(SafeLifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.params = ParameterSet(self, PARAMS)
        self._publisher = None
        self.model: DescentModel | None = None
        self._message: DescentModelMsg | None = None
        self.callback_errors = 0
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_timer(self.params["diagnostics_period"], CallbackGuard(self, self._callback_error)(
            self.publish_diagnostics))

    def model_path(self) -> Path:
        return model_path(self.params.values)

    def load(self) -> tuple[DescentModel, bytes, str]:
        """Load and validate the configured file; raises ModelFileError with the reason."""
        return load_model(self.params.values)

    # --- diagnostics ----------------------------------------------------------------------
    def _callback_error(self, text: str) -> None:
        self.callback_errors += 1
        self.last_error = text

    def publish_diagnostics(self) -> None:
        state = self.state_label()
        if self.last_error:
            level, message = DiagnosticStatus.WARN, f"{state}; last error: {self.last_error}"
        elif state == "active":
            level, message = DiagnosticStatus.OK, f"active: descent model {self._message.sha256[:12]} published"
        else:
            level, message = DiagnosticStatus.WARN, f"{state}: no descent model published"
        values = {"state": state, "model file": str(self.model_path()),
                  "model sha256": self._message.sha256 if self._message else "", "last error": self.last_error,
                  "refused transitions": self.refused_transitions, "callback errors": self.callback_errors}
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: descent model", message=message,
                                  hardware_id=self.get_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        out = DiagnosticArray(status=[status])
        out.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(out)

    def _change_state_checked(self, request, response):
        response = super()._change_state_checked(request, response)
        self.publish_diagnostics()  # the outcome at once, not only at the next period
        return response

    # --- transitions ----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            model, data, sha = self.load()
        except Exception as exc:  # ModelFileError, OSError, or anything a malformed file raises
            reason = str(exc) if isinstance(exc, (ModelFileError, OSError)) else \
                f"descent model {self.model_path()}: {type(exc).__name__}: {exc}"
            self.report_error(f"configure failed: {reason}")
            return TransitionCallbackReturn.FAILURE
        self.model = model
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
        cause = f" after: {self.last_error}" if self.last_error else ""
        self.report_error(f"error in {state.label}; released, back to unconfigured{cause}")
        return TransitionCallbackReturn.SUCCESS


def main(args=None) -> int:
    from face_alignment_ros.ros.node_main import spin_node

    return spin_node(DescentModelNode, args=args)
