"""Support for the ROS tests: a per-process ROS domain. Waiting on conditions is
``face_alignment_ros.ros.waiting``; models are ``common.stand_in_models.trained_or_stand_in_files``."""
from __future__ import annotations

import os


def domain_id(offset: int) -> int:
    """A ROS domain for one test module (offset 0..7, one per module, so that a module's
    leftovers never meet the next one's) that differs between concurrent test processes on the
    machine with high probability; within [10, 97] (valid on Linux)."""
    return 10 + (os.getpid() % 11) * 8 + offset % 8
