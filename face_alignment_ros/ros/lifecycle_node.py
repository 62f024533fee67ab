"""A LifecycleNode whose change_state service refuses an invalid transition instead of dying.

rclpy 7.1 (Jazzy) calls into rcl with any requested transition id; one that is not valid from
the current state (configure while active, anything after shutdown) raises
``RCLError: Transition is not registered`` out of the service callback, which ends the
executor and every node on it (ros2/rclpy#1209, fixed upstream by ros2/rclpy#1319, not in the
installed release). Here the request is checked against the current state's transitions
first, and refused with success=False. lifecycle_msgs/ChangeState's reply has only that
flag, so the reason is logged and kept in ``last_error`` for the node's diagnostics.

rclpy also turns an exception inside a transition callback (on_activate, ...) into ERROR and
drops the exception; here each callback is wrapped so that its reason and traceback are
reported first.
"""
from __future__ import annotations

import functools
import traceback

from rclpy.lifecycle import LifecycleNode


class SafeLifecycleNode(LifecycleNode):
    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.last_error = ""        # the reason of the last failed or refused transition
        self.refused_transitions = 0
        service = self._service_change_state  # rclpy's handler is name-mangled: wrap it here
        self._unchecked_change_state = service.callback
        service.callback = self._change_state_checked
        for state_id, callback in list(self._callbacks.items()):
            self._callbacks[state_id] = self._reporting(callback)

    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def report_error(self, text: str) -> None:
        """Log and keep ``text`` as the node's last error (diagnostics show it)."""
        self.last_error = text
        self.get_logger().error(text)

    def _reporting(self, callback):
        """``callback`` that reports its exception before rclpy turns it into ERROR."""
        @functools.wraps(callback)
        def run(previous_state):
            try:
                return callback(previous_state)
            except Exception as exc:
                self.get_logger().error(traceback.format_exc())
                self.report_error(f"{callback.__name__} from '{previous_state.label}' raised "
                                  f"{type(exc).__name__}: {exc}")
                raise
        return run

    def _change_state_checked(self, request, response):
        transition = request.transition
        available = {tid: label for tid, label, *_ in self._state_machine.available_transitions}
        valid = transition.label in available.values() if transition.label else transition.id in available
        if not valid:
            self.refused_transitions += 1
            names = {tid: label for tid, label, *_ in self._state_machine.transition_graph}
            asked = f"'{transition.label or names.get(transition.id, '?')}' (id {transition.id})"
            self.report_error(f"change_state refused: transition {asked} is not valid from state "
                              f"'{self.state_label()}' (valid: {', '.join(sorted(available.values())) or 'none'})")
            response.success = False
            return response
        self.last_error = ""  # it describes the last transition
        try:
            return self._unchecked_change_state(request, response)
        except Exception as exc:  # never let a transition take the executor down
            self.report_error(f"change_state {transition.label or transition.id} failed: "
                              f"{type(exc).__name__}: {exc}")
            response.success = False
            return response
