"""The ROS adapter's plumbing: the pipeline reads the node's parameters under their own names,
face-align-bag loads the descent model as the descent model node does, and the node's
statistics are written under their lock."""
import threading

import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from face_alignment_ros.cli import bag as bag_cli  # noqa: E402
from face_alignment_ros.ros.diagnostics import PipelineStats  # noqa: E402
from face_alignment_ros.ros.face_alignment_node import PARAMS  # noqa: E402
from face_alignment_ros.ros.pipeline import PipelineConfig  # noqa: E402


def test_pipeline_config_fields_are_node_parameters():
    fields = set(PipelineConfig.__dataclass_fields__)
    assert fields <= {p.name for p in PARAMS}, f"not parameters of the node: {fields - {p.name for p in PARAMS}}"


def test_bag_tool_checks_the_model_as_the_descent_model_node_does(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("descent_model_node:\n  ros__parameters:\n    sha256: '" + "0" * 64 + "'\n")
    with pytest.raises(SystemExit, match="the parameter sha256 expects 0000"):
        bag_cli.main([str(tmp_path / "in"), str(tmp_path / "out"), "--params", str(params)])


@pytest.mark.parametrize("write", [
    lambda s: s.model_rejected("bad file"), lambda s: s.model_in_use("abc"),
    lambda s: s.camera_info_status("K from /camera_info", True), lambda s: s.clear_times(),
    lambda s: s.add(received=1), lambda s: s.error("failed"), lambda s: s.lost(stamps=1),
    lambda s: s.callback_error("raised"), lambda s: s.frame_done(1, 2.0, {"convert": 1.0}),
])
def test_statistics_are_written_under_their_lock(write):
    stats = PipelineStats()
    with stats._lock:
        writer = threading.Thread(target=write, args=(stats,), daemon=True)
        writer.start()
        writer.join(0.05)
        assert writer.is_alive(), "wrote without taking the lock"
    writer.join(5.0)
    assert not writer.is_alive()
