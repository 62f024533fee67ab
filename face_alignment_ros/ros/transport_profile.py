"""The package's Fast DDS profile (config/fastdds.xml: a 16 MB shared-memory segment, so camera
frames of any size cross processes; docs/ros.md, "Transport") and the one function that makes a
process use it.

Fast DDS reads the profile file named in its environment once, when the middleware starts, so
``use_shipped_profile`` must run before ``rclpy.init``. Imports no rclpy.
"""
from __future__ import annotations

import os
from pathlib import Path

from face_alignment_ros.core import resources

PROFILE_FILE = "fastdds.xml"
# Fast DDS 2 (Humble, Jazzy) reads the first, Fast DDS 3 (Kilted on) the second; Kilted's RMW
# still reads the first but warns that it is deprecated. A user who set either has chosen a
# profile: then we set neither.
PROFILE_ENV_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def profile_path() -> Path | None:
    """config/fastdds.xml of the source tree, else of the installed package's share folder."""
    path = resources.REPO_ROOT / "config" / PROFILE_FILE
    if path.is_file():
        return path
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("face_alignment_ros")) / "config" / PROFILE_FILE
    except Exception:  # not on the ament index (venv without AMENT_PREFIX_PATH)
        return None
    return path if path.is_file() else None


def fast_dds_major(environ=None) -> int | None:
    """2 or 3, the Fast DDS generation of this ROS install (``ROS_DISTRO``, else the PyPI
    wheels' metadata); None when unknown."""
    environ = os.environ if environ is None else environ
    distro = environ.get("ROS_DISTRO", "").lower()
    if distro:
        return 2 if distro in FAST_DDS_2_DISTROS else 3
    from importlib import metadata

    for dist, major in (("ros-fastdds", 3), ("ros-fastrtps", 2)):
        try:
            metadata.version(dist)
            return major
        except metadata.PackageNotFoundError:
            pass
    return None


def profile_environment(environ=None) -> dict[str, str]:
    """The variables to set so that Fast DDS loads the shipped profile (the one this Fast DDS
    reads, both when unknown): empty when the user has set a profile file already, or when the
    profile cannot be found."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in PROFILE_ENV_VARS):
        return {}
    path = profile_path()
    if path is None:
        return {}
    names = {2: PROFILE_ENV_VARS[:1], 3: PROFILE_ENV_VARS[1:]}.get(fast_dds_major(environ), PROFILE_ENV_VARS)
    return {name: str(path) for name in names}


def use_shipped_profile(environ=None) -> dict[str, str]:
    """Set the shipped profile in ``environ`` (default: this process's environment) unless the
    user set one; returns what was set. Call before ``rclpy.init``."""
    environ = os.environ if environ is None else environ
    values = profile_environment(environ)
    environ.update(values)
    return values
