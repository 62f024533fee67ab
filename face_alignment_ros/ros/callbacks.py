"""Callbacks that survive their own exceptions. rclpy lets an exception raised in a
subscription, timer or event callback end ``executor.spin()``, which stops every node on that
executor. Each of our callbacks is wrapped: the exception is logged with its traceback, counted
and reported in diagnostics, and the executor goes on with the next message."""
from __future__ import annotations

import functools
import traceback
from collections.abc import Callable


class CallbackGuard:
    """``guard(callback)`` returns ``callback`` wrapped; ``on_error(text)`` is called with
    "<callback>: <Exception>: <message>" for each exception (e.g. to count it)."""

    def __init__(self, node, on_error: Callable[[str], None]):
        self._node = node
        self._on_error = on_error

    def __call__(self, callback: Callable) -> Callable:
        name = getattr(callback, "__name__", repr(callback))

        @functools.wraps(callback)
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as exc:  # the rule: log, count, keep running
                text = f"{name}: {type(exc).__name__}: {exc}"
                self._on_error(text)
                self._node.get_logger().error(f"callback {text}\n{traceback.format_exc()}",
                                              throttle_duration_sec=5.0)
                return None
        return guarded
