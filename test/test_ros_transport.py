"""Camera frames cross processes: the shipped Fast DDS profile (config/fastdds.xml) on the
publisher's side, and every bring-up of ours using it unless the user chose a profile."""
import os
import threading

import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from ros_support import domain_id  # noqa: E402

from face_alignment_ros.cli import ros_bringup  # noqa: E402
from face_alignment_ros.ros import bench_transport  # noqa: E402
from face_alignment_ros.ros.transport_profile import (  # noqa: E402
    PROFILE_ENV_VARS,
    profile_environment,
    profile_path,
    use_shipped_profile,
)


def test_profile_is_set_only_when_the_user_set_none():
    shipped = str(profile_path())
    assert profile_path().name == "fastdds.xml"
    environ = {"ROS_DISTRO": "jazzy"}
    assert use_shipped_profile(environ) == {"FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    assert environ == {"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    # Fast DDS 3 reads the other variable (and warns about the old one)
    assert profile_environment({"ROS_DISTRO": "kilted"}) == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    for name in PROFILE_ENV_VARS:
        mine = {name: "/robot/my_profile.xml"}
        assert use_shipped_profile(mine) == {} and mine == {name: "/robot/my_profile.xml"}


def test_bringup_sets_the_profile_before_ros_starts(monkeypatch):
    seen = []
    monkeypatch.setattr(ros_bringup, "run", lambda args: seen.append(dict(os.environ)) or 0)
    for name in PROFILE_ENV_VARS:
        monkeypatch.setenv(name, "")  # unset for the profile logic; restored afterwards
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    assert ros_bringup.main([]) == 0
    assert seen[0]["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(profile_path())
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/robot/my_profile.xml")
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "")
    assert ros_bringup.main([]) == 0
    assert seen[1]["FASTRTPS_DEFAULT_PROFILES_FILE"] == "/robot/my_profile.xml"
    assert not seen[1]["FASTDDS_DEFAULT_PROFILES_FILE"]


def test_launch_file_sets_the_profile_unless_set():
    text = (profile_path().parent.parent / "launch" / "face_alignment.launch.py").read_text()
    assert "SetEnvironmentVariable" in text and "profile_environment()" in text
    assert profile_environment({"FASTDDS_DEFAULT_PROFILES_FILE": "/x.xml"}) == {}


def test_vga_frames_from_another_process_arrive_with_the_profile():
    """Fast DDS defaults deliver about 1 in 10 of these (a 512 KB SHM segment cannot hold a
    921 KB frame); the shipped profile on the publisher's side delivers them all."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    domain = domain_id(6)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("transport_test_counter", context=context)
    counter = bench_transport.FrameCounter(node)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        frames = 20
        delivered = bench_transport.measure(counter, "640x480", "best_effort", True, frames, 30.0, domain)
        assert delivered >= 0.9 * frames, f"{delivered} of {frames} frames arrived"
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
