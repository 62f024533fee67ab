"""Helpers for tests, the demo and benchmarks: waiting on conditions, a per-process ROS domain,
and stand-in model files (untrained DFF network, zero descent matrices of the right shapes)
for when the trained models are not shipped yet."""
from __future__ import annotations

import os
import time
from pathlib import Path


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


def domain_id(offset: int) -> int:
    """A ROS domain for one test module (offset 0..3) that differs between concurrent test
    processes on the machine with high probability; within [10, 101] (valid on Linux)."""
    return 10 + (os.getpid() % 23) * 4 + offset % 4


def trained_models_available(descriptor: str = "dff") -> bool:
    from face_alignment_ros.core.resources import trained_models_present

    return trained_models_present(descriptor)


def model_files(folder) -> tuple[Path, Path, bool]:
    """(descent, DFF weights, trained?): the shipped models when present, else stand-ins."""
    from face_alignment_ros.evaluation.stand_in_models import trained_or_stand_in_files

    return trained_or_stand_in_files(folder)
