"""Drive a lifecycle node through its real services (<node>/change_state, <node>/get_state),
as `ros2 lifecycle set` or launch_ros' lifecycle events do. Blocking calls: the node that owns
the clients must be spun by an executor in another thread."""
from __future__ import annotations

import threading

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE, "cleanup": Transition.TRANSITION_CLEANUP,
    "activate": Transition.TRANSITION_ACTIVATE, "deactivate": Transition.TRANSITION_DEACTIVATE,
    "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
    "inactive_shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN,
    "active_shutdown": Transition.TRANSITION_ACTIVE_SHUTDOWN,
}
STATE_LABELS = {State.PRIMARY_STATE_UNCONFIGURED: "unconfigured", State.PRIMARY_STATE_INACTIVE: "inactive",
                State.PRIMARY_STATE_ACTIVE: "active", State.PRIMARY_STATE_FINALIZED: "finalized"}


class LifecycleClient:
    def __init__(self, node, target: str):
        """``target``: the lifecycle node's fully qualified name, e.g. '/descent_model_node'."""
        self.target = target.rstrip("/")
        self._change = node.create_client(ChangeState, f"{self.target}/change_state")
        self._get = node.create_client(GetState, f"{self.target}/get_state")

    def wait_for_services(self, timeout: float = 10.0) -> bool:
        return self._change.wait_for_service(timeout) and self._get.wait_for_service(timeout)

    @staticmethod
    def _call(client, request, timeout: float):
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            raise TimeoutError(f"no answer from {client.srv_name} within {timeout} s")
        return future.result()

    def change_state(self, transition: str, timeout: float = 30.0) -> bool:
        """True when the transition succeeded."""
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[transition]
        return bool(self._call(self._change, req, timeout).success)

    def get_state(self, timeout: float = 10.0) -> str:
        state = self._call(self._get, GetState.Request(), timeout).current_state
        return STATE_LABELS.get(state.id, state.label)
