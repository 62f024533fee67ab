"""Waiting on a condition with a timeout instead of a fixed sleep: discovery, a model reaching
the aligner, a message arriving. Used by the ROS benchmark and the ROS tests."""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
