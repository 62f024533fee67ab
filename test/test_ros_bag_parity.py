"""face-align-bag gives the live node's results: the same YAML, the same frames (compressed
images, live through the node's image_transport=compressed input and from the bag), the same
landmarks. Plus: the bag tool keeps the latched QoS of mesh_topology, finalises a readable
partial bag on SIGTERM, and refuses to overwrite without --overwrite."""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run make setup")
pytest.importorskip("rosbags", reason="rosbags missing: run make setup")

from rclpy.qos import DurabilityPolicy  # noqa: E402
from ros_support import domain_id  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from face_alignment_ros.cli import bag as bag_cli  # noqa: E402
from face_alignment_ros.common.stand_in_models import trained_or_stand_in_files  # noqa: E402
from face_alignment_ros.msg import FaceMeshArray, LandmarksArray  # noqa: E402
from face_alignment_ros.ros import bag_io  # noqa: E402
from face_alignment_ros.ros.graph import Graph  # noqa: E402
from face_alignment_ros.ros.qos import OUTPUT_QOS, image_qos  # noqa: E402
from face_alignment_ros.ros.waiting import wait_until  # noqa: E402

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
W, H, FACE_PX = 320, 240, 90.0
TIMEOUT = 60.0  # generous: the machine is shared
LIVE_TOPIC = "/cam/image_raw"


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def write_params(path, descent, weights) -> str:
    path.write_text(f"""face_alignment_node:
  ros__parameters:
    image_transport: compressed
    num_threads: 1
    redetect_every: 3
    min_confidence: 0.3
    dff_weights: '{weights}'
descent_model_node:
  ros__parameters:
    model_file: '{descent}'
""")
    return str(path)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bag_parity")
    descent, weights, _ = trained_or_stand_in_files(tmp / "models")
    params = write_params(tmp / "params.yaml", descent, weights)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(5))
    graph = Graph(LIVE_TOPIC, params, context=context)
    probe = rclpy.create_node("bag_parity_probe", context=context)
    results, lock = {}, threading.Lock()

    def store(kind):
        def cb(msg):
            with lock:
                results.setdefault(stamp_ns(msg.header), {})[kind] = msg
        return cb

    probe.create_subscription(LandmarksArray, "/landmarks", store("landmarks"), OUTPUT_QOS)
    probe.create_subscription(FaceMeshArray, "/face_mesh", store("meshes"), OUTPUT_QOS)
    graph.executor.add_node(probe)
    graph.start()
    assert graph.bring_up(TIMEOUT)
    wait_until(lambda: graph.aligner.pipeline.ready, TIMEOUT, what="descent model in the node")
    yield {"graph": graph, "probe": probe, "results": results, "lock": lock, "tmp": tmp, "params": params,
           "descent": descent, "weights": weights}
    graph.shutdown()
    probe.destroy_node()
    rclpy.shutdown(context=context)


def test_live_node_and_bag_tool_give_the_same_results(live):
    import torch

    tmp, graph = live["tmp"], live["graph"]
    # png: lossless, so the node and the bag decode the same pixels; no CameraInfo, so the
    # intrinsics cannot depend on which of two topics arrived first in the live graph
    stamps = bag_io.write_sample_bag(tmp / "in", n_frames=6, width=W, height=H, face_px=FACE_PX,
                                     frame_id="cam_optical", compressed="png", camera_info=False)
    player = bag_io.BagReplayer(live["probe"], tmp / "in", reliable=True,
                                remap={"/camera/image_raw/compressed": f"{LIVE_TOPIC}/compressed"})
    assert player.wait_for_subscribers(1, TIMEOUT)
    for topic, t, raw in player.messages():  # one frame at a time: the node processes each one
        player.publish(topic, raw)
        wait_until(lambda t=t: len(live["results"].get(t, {})) == 2, TIMEOUT, what=f"node results of frame {t}")
    assert graph.aligner.stats.dropped == 0

    torch.set_num_threads(2)  # the bag tool must apply the YAML's num_threads (1) itself
    assert bag_cli.main([str(tmp / "in"), str(tmp / "out"), "--params", live["params"], "--quiet"]) == 0
    assert torch.get_num_threads() == 1

    from rosbags.highlevel import AnyReader

    offline = {}
    with AnyReader([tmp / "out"], default_typestore=bag_io.typestore()) as reader:
        for conn, t, raw in reader.messages():
            if conn.topic in ("/landmarks", "/face_mesh"):
                offline.setdefault(t, {})[conn.topic] = reader.deserialize(raw, conn.msgtype)
    assert sorted(offline) == stamps

    def first_seen(ids: list[int]) -> list[int]:  # face ids are process-wide: compare the tracks
        order = {}
        return [order.setdefault(i, len(order)) for i in ids]

    for key in ("landmarks", "/landmarks"):
        source = [live["results"][t]["landmarks"] for t in stamps] if key == "landmarks" else \
                 [offline[t]["/landmarks"] for t in stamps]
        assert first_seen([f.face_id for m in source for f in m.faces]) == [0] * len(stamps)
    for t in stamps:
        node_lms, node_mesh = live["results"][t]["landmarks"], live["results"][t]["meshes"]
        bag_lms, bag_mesh = offline[t]["/landmarks"], offline[t]["/face_mesh"]
        assert len(node_lms.faces) == 1
        for a, b in zip(node_lms.faces, bag_lms.faces):
            np.testing.assert_allclose(np.asarray(a.points_2d), np.asarray(b.points_2d), atol=1e-4)
            np.testing.assert_allclose(np.asarray(a.points_3d), np.asarray(b.points_3d), atol=1e-6)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-6)
        for a, b in zip(node_mesh.faces, bag_mesh.faces):
            pa, pb = a.head_pose.position, b.head_pose.position
            np.testing.assert_allclose([pa.x, pa.y, pa.z], [pb.x, pb.y, pb.z], atol=1e-6)

    # the output keeps the node's offered QoS: mesh_topology latched (transient local)
    qos = bag_io.offered_qos_of(tmp / "out")
    assert qos["/mesh_topology"][0].durability.name == DurabilityPolicy.TRANSIENT_LOCAL.name
    assert qos["/landmarks"][0].durability.name == DurabilityPolicy.VOLATILE.name
    assert bag_io.custom_data_of(tmp / "out") == {bag_io.STATUS_KEY: "complete"}


def test_live_node_survives_a_corrupt_compressed_frame(live):
    graph, probe = live["graph"], live["probe"]
    pub = probe.create_publisher(CompressedImage, f"{LIVE_TOPIC}/compressed", image_qos("reliable"))
    wait_until(lambda: pub.get_subscription_count() >= 1, TIMEOUT, what="compressed image subscriber")
    bad_before = graph.aligner.stats.bad
    broken = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + bytes(200))
    broken.header.stamp.sec = 7
    pub.publish(broken)
    wait_until(lambda: graph.aligner.stats.bad > bad_before, TIMEOUT, what="the bad frame counted")
    assert "cannot decode" in graph.aligner.stats.last_error
    good = next(iter(bag_io.read_messages(live["tmp"] / "in")))[3]  # a png frame of the first test's bag
    pub.publish(good)
    from rclpy.serialization import deserialize_message

    t = stamp_ns(deserialize_message(good, CompressedImage).header)
    with live["lock"]:
        live["results"].pop(t, None)
    wait_until(lambda: "landmarks" in live["results"].get(t, {}), TIMEOUT, what="a result after the bad frame")


def test_overwrite_is_a_clear_choice(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "out_0.mcap").write_bytes(b"half a bag")
    with pytest.raises(SystemExit, match="--overwrite"):
        bag_cli._prepare_output(out, overwrite=False)
    bag_cli._prepare_output(out, overwrite=True)
    assert not out.exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="not a bag folder"):
        bag_cli._prepare_output(other, overwrite=True)
    assert (other / "holiday.jpg").exists()


def test_sigterm_leaves_a_readable_partial_bag(tmp_path):
    descent, weights, _ = trained_or_stand_in_files(tmp_path / "models")
    params = write_params(tmp_path / "params.yaml", descent, weights)
    n = 60
    bag_io.write_sample_bag(tmp_path / "in", n_frames=n, width=W, height=H, face_px=FACE_PX)
    cmd = [sys.executable, "-m", "face_alignment_ros.cli.bag", str(tmp_path / "in"), str(tmp_path / "out"),
           "--params", params]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # one line per frame: signal once the conversion is under way
            if ": face_" in line or ": no face" in line:
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "PARTIAL" in err and "--overwrite" in err
    assert bag_io.custom_data_of(tmp_path / "out") == {bag_io.STATUS_KEY: "partial"}
    done = [t for topic, _, t, _ in bag_io.read_messages(tmp_path / "out") if topic == "/landmarks"]
    assert 1 <= len(done) < n
    # the re-run says how to replace it instead of failing on the existing folder
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode != 0 and "--overwrite" in rerun.stderr
