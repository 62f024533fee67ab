"""face-align-bag: a small bag in, Landmarks/FaceMesh/TF out with the input stamps (the node's
pipeline code, run offline; no ROS graph needed)."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")
pytest.importorskip("rosbags", reason="rosbags missing: run make setup")

from face_alignment_ros.cli import bag as bag_cli  # noqa: E402
from face_alignment_ros.common.stand_in_models import trained_or_stand_in_files  # noqa: E402
from face_alignment_ros.ros import bag_io  # noqa: E402


@pytest.mark.parametrize("storage", ["mcap"])
def test_bag_in_bag_out_keeps_stamps(tmp_path, storage):
    descent, weights, _ = trained_or_stand_in_files(tmp_path / "models")
    stamps = bag_io.write_sample_bag(tmp_path / "in", n_frames=2, width=320, height=240, face_px=90.0,
                                     frame_id="cam_optical", storage="sqlite3")
    assert bag_cli.main([str(tmp_path / "in"), str(tmp_path / "out"), "--descent-model", str(descent),
                         "--dff-weights", str(weights), "--storage", storage, "--quiet"]) == 0
    from rosbags.highlevel import AnyReader

    seen = {}
    with AnyReader([tmp_path / "out"], default_typestore=bag_io.typestore()) as reader:
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            seen.setdefault(conn.topic, []).append((t, msg))
    assert set(seen) == {"/landmarks", "/face_mesh", "/mesh_topology", "/tf"}
    for topic in ("/landmarks", "/face_mesh"):
        assert [t for t, _ in seen[topic]] == stamps
        for t, msg in seen[topic]:
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
            assert msg.header.frame_id == "cam_optical" and len(msg.faces) == 1
    topo = seen["/mesh_topology"][0][1]
    verts = np.asarray(seen["/face_mesh"][0][1].faces[0].vertices).reshape(-1, 3)
    assert len(verts) == topo.vertex_count and verts[:, 2].min() > 0.1
    tf = seen["/tf"][0][1].transforms[0]
    assert tf.header.frame_id == "cam_optical" and tf.child_frame_id.startswith("face_")
