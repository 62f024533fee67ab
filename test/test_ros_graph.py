"""The one-process graph (face-align-ros's Graph: both nodes, real executor and lifecycle
services) fed through real publishers: a small bag replayed, bad frames, both QoS kinds,
parameter validation over the parameter services, and a model swap in a running pipeline.

Uses the shipped trained models when present, else an untrained stand-in (mean face at the
detected box); the checks are geometric plausibility that holds for both.
"""
import os

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_support import StampedCollector, key, running_graph  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from face_alignment_ros.common.samples import sample_frames  # noqa: E402
from face_alignment_ros.core.descent_model import DescentModel  # noqa: E402
from face_alignment_ros.core.face_detector import create_detector  # noqa: E402
from face_alignment_ros.msg import FaceMeshArray, LandmarksArray, MeshTopology  # noqa: E402
from face_alignment_ros.ros.bag_io import BagReplayer, write_sample_bag  # noqa: E402
from face_alignment_ros.ros.diagnostics import NO_CAMERA_INFO, WAITING_FOR_MODEL, values_of  # noqa: E402
from face_alignment_ros.ros.face_ids import hri_id  # noqa: E402
from face_alignment_ros.ros.image_conversion import bgr_to_image_fields, image_to_bgr  # noqa: E402
from face_alignment_ros.ros.qos import LATCHED_QOS, OUTPUT_QOS, TF_QOS  # noqa: E402
from face_alignment_ros.ros.waiting import wait_until  # noqa: E402

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
W, H, FACE_PX, FOCAL = 320, 240, 90.0, 400.0
FRAME_ID = "test_camera_optical"
TIMEOUT = 60.0  # generous: the machine is shared with training jobs


class Probe(StampedCollector):
    """Collects the graph's outputs by image stamp."""

    def __init__(self, node):
        super().__init__()
        self.node = node
        self.landmarks, self.meshes, self.debug, self.markers = {}, {}, {}, {}
        self.topology = []
        self.diagnostics = []
        self._seq = 0
        node.create_subscription(LandmarksArray, "/landmarks", self._store(self.landmarks), OUTPUT_QOS)
        node.create_subscription(FaceMeshArray, "/face_mesh", self._store(self.meshes), OUTPUT_QOS)
        node.create_subscription(Image, "/debug/image", self._store(self.debug), OUTPUT_QOS)
        node.create_subscription(MarkerArray, "/debug/markers", self._store_markers, OUTPUT_QOS)
        node.create_subscription(MeshTopology, "/mesh_topology", self.topology.append, LATCHED_QOS)
        node.create_subscription(TFMessage, "/tf", self._store_tf, TF_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._store_diag, 10)
        self.reliable = node.create_publisher(
            Image, "/cam/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.best_effort = node.create_publisher(
            Image, "/cam/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _store_markers(self, msg):
        with self.lock:
            self.markers[key(msg.markers[-1].header.stamp)] = msg

    def _store_diag(self, msg):
        for status in msg.status:
            if status.name.startswith("face_alignment_node"):
                with self.lock:
                    self.diagnostics.append((status.message, values_of(status)))

    def latest_diag(self):
        with self.lock:
            return self.diagnostics[-1] if self.diagnostics else (None, {})

    def wait_diag(self, predicate, what):
        def check():
            msg, values = self.latest_diag()
            return msg is not None and predicate(msg, values)
        wait_until(check, TIMEOUT, 0.02, what)
        return self.latest_diag()

    def image(self, bgr, as_encoding="rgb8", **fields):
        """An Image of ``bgr`` in ``as_encoding``; ``fields`` overwrite (to break it)."""
        self._seq += 1
        msg = Image(**{**bgr_to_image_fields(bgr, as_encoding), **fields})
        msg.header.frame_id = FRAME_ID
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + self._seq, 0
        return msg

    def send_and_wait(self, msg, publisher=None):
        (publisher or self.reliable).publish(msg)
        return wait_until(lambda: self.landmarks.get(key(msg.header.stamp)), TIMEOUT, 0.01,
                          f"landmarks for stamp {key(msg.header.stamp)}")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ros_graph")
    overrides = {"diagnostics_period": 0.1, "publish_gaze": True, "publish_debug_image": True,
                 "publish_markers": True}
    with running_graph(tmp, 1, "/cam/image", "graph_test_probe", overrides,
                       camera_info_topic="/cam/camera_info") as (g, probe_node, _, (descent, _, trained)):
        probe = Probe(probe_node)
        frames = list(sample_frames(3, W, H, FACE_PX))
        yield {"graph": g, "probe": probe, "tmp": tmp, "descent": descent, "frames": frames, "trained": trained}


def test_waiting_for_descent_model_then_bring_up(graph):
    g, probe = graph["graph"], graph["probe"]
    wait_until(lambda: probe.reliable.get_subscription_count() >= 1, TIMEOUT, what="image subscriber")
    probe.reliable.publish(probe.image(graph["frames"][0]))
    msg, values = probe.wait_diag(lambda m, v: int(v["frames before model"]) >= 1, "frame counted before model")
    assert WAITING_FOR_MODEL in msg
    assert not probe.landmarks  # publishes nothing until a model arrives
    assert g.bring_up(TIMEOUT)
    probe.wait_diag(lambda m, v: v["descent model sha256"] != "", "model in use")
    wait_until(lambda: probe.topology, TIMEOUT, what="latched mesh topology")


def test_bag_replay_outputs_carry_input_header_and_plausible_geometry(graph):
    probe = graph["probe"]
    bag = graph["tmp"] / "sample_bag"
    stamps = write_sample_bag(bag, n_frames=3, width=W, height=H, face_px=FACE_PX, topic="/camera/image_raw",
                              frame_id=FRAME_ID, focal_length_px=FOCAL)
    player = BagReplayer(probe.node, bag, remap={"/camera/image_raw": "/cam/image",
                                                 "/camera/camera_info": "/cam/camera_info"}, reliable=True)
    assert player.wait_for_subscribers(1, TIMEOUT)
    detector = create_detector("default")
    topo = probe.topology[-1]
    for topic, t, raw in player.messages():
        player.publish(topic, raw)
        if not topic.endswith("image_raw"):
            continue
        k = divmod(t, 1_000_000_000)
        lms = wait_until(lambda k=k: probe.landmarks.get(k), TIMEOUT, what=f"landmarks of bag frame {k}")
        mesh = wait_until(lambda k=k: probe.meshes.get(k), TIMEOUT, what="mesh")
        tf = wait_until(lambda k=k: probe.tf.get(k), TIMEOUT, what="tf")
        debug = wait_until(lambda k=k: probe.debug.get(k), TIMEOUT, what="debug image")
        markers = wait_until(lambda k=k: probe.markers.get(k), TIMEOUT, what="markers")
        for m in (lms, mesh, debug):
            assert key(m.header.stamp) == k and m.header.frame_id == FRAME_ID
        assert len(lms.faces) == 1 and len(mesh.faces) == 1
        face, fmesh = lms.faces[0], mesh.faces[0]
        assert fmesh.face_id == face.face_id
        # landmarks inside the detected face box (grown by a quarter)
        frame = graph["frames"][stamps.index(t)]
        box = np.array(detector.detect(frame)[0].box)
        grow = 0.25 * (box[2:] - box[:2])
        pts = np.asarray(face.points_2d).reshape(-1, 2)
        assert np.all(pts >= box[:2] - grow) and np.all(pts <= box[2:] + grow)
        assert len(face.visible) == 68 and 0 <= face.confidence <= 1 and 0 <= face.score <= 1
        # metric geometry: in front of the camera, face-sized, K of the CameraInfo used
        p3 = np.asarray(face.points_3d).reshape(-1, 3)
        assert np.all((p3[:, 2] > 0.1) & (p3[:, 2] < 3.0))
        width_m = p3[:, 0].max() - p3[:, 0].min()
        assert 0.08 < width_m < 0.25
        cx, cy = (W - 1) / 2, (H - 1) / 2
        reproj = np.c_[FOCAL * p3[:, 0] / p3[:, 2] + cx, FOCAL * p3[:, 1] / p3[:, 2] + cy]
        assert np.linalg.norm(reproj[27] - pts[27]) < 0.15 * FACE_PX
        verts = np.asarray(fmesh.vertices).reshape(-1, 3)
        assert fmesh.topology_id == topo.topology_id and len(verts) == topo.vertex_count
        assert np.all(verts[:, 2] > 0.1)
        # head frame = sellion, TF parented to the image frame, stamped with the image time
        hp = fmesh.head_pose.position
        assert np.allclose([hp.x, hp.y, hp.z], p3[27], atol=1e-4)
        head = tf[f"face_{hri_id(face.face_id)}"]
        assert head.header.frame_id == FRAME_ID and key(head.header.stamp) == k
        assert head.transform.translation.z == pytest.approx(hp.z)
        gaze = tf[f"gaze_{hri_id(face.face_id)}"]
        assert gaze.header.frame_id == f"face_{hri_id(face.face_id)}"
        tri = [m for m in markers.markers if m.type == Marker.TRIANGLE_LIST]
        assert len(tri) == 1 and len(tri[0].points) == len(topo.triangles)
        assert image_to_bgr(debug).shape == (H, W, 3)


@pytest.mark.parametrize("publisher", ["best_effort", "reliable"])
def test_both_qos_kinds_are_served(graph, publisher):
    probe = graph["probe"]
    pub = getattr(probe, publisher)
    wait_until(lambda: pub.get_subscription_count() >= 1, TIMEOUT, what="matched subscription")
    lms = probe.send_and_wait(probe.image(graph["frames"][1], "bgr8"), pub)
    assert len(lms.faces) == 1


def test_bad_frames_are_counted_and_the_next_good_frame_is_processed(graph):
    probe = graph["probe"]
    good = graph["frames"][2]
    bad = [
        probe.image(good, "bgr8", encoding="32FC1"),                        # unsupported encoding
        probe.image(good, "bgr8", height=0, width=0, step=0, data=b""),     # zero size
        probe.image(good, "bgr8", step=W * 3 - 1),                          # step mismatch
        probe.image(good, "bgr8", data=bgr_to_image_fields(good)["data"][:-100]),  # truncated
    ]
    start = int(probe.latest_diag()[1].get("bad frames", 0))
    for i, msg in enumerate(bad, 1):
        probe.reliable.publish(msg)
        probe.wait_diag(lambda m, v, n=start + i: int(v["bad frames"]) >= n, f"bad frame {i} counted")
    message, values = probe.latest_diag()
    assert "truncated" in values["last error"]
    lms = probe.send_and_wait(probe.image(good, "rgba8"))
    assert len(lms.faces) == 1
    assert int(probe.latest_diag()[1]["bad frames"]) == start + 4


def test_parameters_validated_over_services(graph):
    probe = graph["probe"]
    client = AsyncParameterClient(probe.node, graph["graph"].aligner.get_fully_qualified_name())
    assert client.wait_for_services(TIMEOUT)

    def set_(name, value):
        future = client.set_parameters([Parameter(name, value=value)])
        return wait_until(lambda: future.done() and future.result(), TIMEOUT, what="set_parameters").results[0]

    r = set_("redetect_every", 0)
    assert not r.successful and "redetect_every" in r.reason
    r = set_("min_confidence", 1.5)
    assert not r.successful
    r = set_("image_reliability", "reliable")
    assert not r.successful and "read-only" in r.reason.lower()
    r = set_("face_frame_prefix", "bad/prefix")
    assert not r.successful and "'/'" in r.reason
    assert set_("redetect_every", 3).successful
    assert graph["graph"].aligner.params["redetect_every"] == 3
    assert set_("horizontal_fov_deg", 70).successful  # an integer for a double parameter
    assert graph["graph"].aligner.params["horizontal_fov_deg"] == 70.0
    assert set_("horizontal_fov_deg", 60.0).successful


def test_new_model_reaches_the_running_pipeline(graph):
    g, probe = graph["graph"], graph["probe"]
    current = DescentModel.load(graph["descent"])
    current.b_X = current.b_X + 0.5  # a different model of the same kind
    new_path = graph["tmp"] / "swapped.npz"
    new_sha = current.save(new_path)
    updates = int(probe.latest_diag()[1]["descent model updates"])
    g.model_node.set_parameters([Parameter("model_file", value=str(new_path)), Parameter("sha256", value=new_sha)])
    for transition in ("deactivate", "cleanup", "configure", "activate"):
        assert g.lifecycle.change_state(transition, TIMEOUT), transition
    probe.wait_diag(lambda m, v: v["descent model sha256"] == new_sha, "swapped model in use")
    assert int(probe.latest_diag()[1]["descent model updates"]) == updates + 1
    lms = probe.send_and_wait(probe.image(graph["frames"][0]))
    assert len(lms.faces) == 1


@pytest.mark.parametrize("fx", [1e300, 1e-300])
def test_absurd_camera_info_is_rejected_and_reported(graph, fx):
    """Its K would put the face at infinity or behind the camera: the assumed intrinsics are
    used instead, and diagnostics say why."""
    probe = graph["probe"]
    info_pub = probe.node.create_publisher(CameraInfo, "/cam/camera_info", QoSProfile(depth=5))
    wait_until(lambda: info_pub.get_subscription_count() >= 1, TIMEOUT, what="CameraInfo subscription")
    info = CameraInfo(width=W, height=H, k=[fx, 0.0, (W - 1) / 2, 0.0, fx, (H - 1) / 2, 0.0, 0.0, 1.0])
    info.header.frame_id = FRAME_ID
    info_pub.publish(info)
    aligner = graph["graph"].aligner
    wait_until(lambda: aligner._camera_info is not None and aligner._camera_info.k[0] == fx, TIMEOUT,
               what="CameraInfo received")
    lms = probe.send_and_wait(probe.image(graph["frames"][0]))
    p3 = np.asarray(lms.faces[0].points_3d).reshape(-1, 3)
    assert np.isfinite(p3).all() and np.all((p3[:, 2] > 0.1) & (p3[:, 2] < 3.0))
    probe.wait_diag(lambda m, v: v["camera info"].startswith(NO_CAMERA_INFO) and "rejected" in v["camera info"]
                    and NO_CAMERA_INFO in m, "the rejected CameraInfo in diagnostics")
    probe.node.destroy_publisher(info_pub)
