"""Support for the ROS tests: a per-process ROS domain. Waiting on conditions is
``face_alignment_ros.ros.waiting``; models are ``common.stand_in_models.trained_or_stand_in_files``."""
from __future__ import annotations

import os


def domain_id(offset: int) -> int:
    """A ROS domain for one test module (offset 0..3) that differs between concurrent test
    processes on the machine with high probability; within [10, 101] (valid on Linux)."""
    return 10 + (os.getpid() % 23) * 4 + offset % 4
