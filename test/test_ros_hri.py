"""The ROS4HRI (REP-155) face interface, checked the way a ROS4HRI client (libhri / pyhri) uses
it: /humans/faces/tracked says which faces exist, the client subscribes to a face's topics when
its id appears and drops them when it goes. Real rclpy, the one-process graph of
face-align-ros, the sample face stream; an empty frame makes a face leave.
"""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run make setup")
hri_msgs = pytest.importorskip("hri_msgs.msg", reason="hri_msgs missing: run make setup")

from builtin_interfaces.msg import Time  # noqa: E402
from hri_msgs.msg import FacialLandmarks, IdsList, NormalizedRegionOfInterest2D  # noqa: E402
from rclpy.event_handler import SubscriptionEventCallbacks  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from ros_support import StampedCollector, key, running_graph  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from face_alignment_ros.common.samples import sample_frames  # noqa: E402
from face_alignment_ros.core import face_views  # noqa: E402
from face_alignment_ros.msg import LandmarksArray  # noqa: E402
from face_alignment_ros.ros.face_alignment_node import FaceAlignmentNode  # noqa: E402
from face_alignment_ros.ros.face_ids import FaceIds, hri_id  # noqa: E402
from face_alignment_ros.ros.graph import node_args  # noqa: E402
from face_alignment_ros.ros.hri import HriFacePublisher  # noqa: E402
from face_alignment_ros.ros.image_conversion import bgr_to_image_fields, image_to_bgr  # noqa: E402
from face_alignment_ros.ros.qos import OUTPUT_QOS, TF_QOS  # noqa: E402
from face_alignment_ros.ros.waiting import wait_until  # noqa: E402

# An exception that stops the executor's thread (e.g. a destroyed entity in its wait set) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
W, H, FACE_PX = 320, 240, 90.0
FRAME_ID = "hri_test_camera_optical"
TIMEOUT = 60.0  # generous: the machine is shared with training jobs
CLIENT_QOS = QoSProfile(depth=10)  # reliable, volatile: what a ROS4HRI client asks for

# RIHS01 type hashes of the official hri_msgs 2.x (2.0.0 to 2.3.2, Humble and Jazzy: these four
# definitions have not changed since 0.8.0). Not published as such; computed by Jazzy's
# rosidl_generator_type_description 4.6.6 from the official .msg texts as docs.ros.org shows
# them (docs.ros.org/en/jazzy/p/hri_msgs, "Message Definitions"), byte for byte, in a scratch
# package. RIHS01 covers the field names and types of the type and of the types it uses, so a
# stand-in with other comments but the same fields has the same hash.
OFFICIAL_HASHES = {
    "IdsList": "RIHS01_7e0812d1ac945c98fd3e393568d581ad0ab567f37b24eff633eab778c1bfe62d",
    "NormalizedRegionOfInterest2D": "RIHS01_2e50c93f1ca166ee77af9a5424dc951ae4e452b740162a7f83c082d917dcaff5",
    "NormalizedPointOfInterest2D": "RIHS01_cc1d2f720c82afeb850ff1dbf66f41ecb7caf19f842987f1247e66160cf03953",
    "FacialLandmarks": "RIHS01_f1d6b0ba159f4d6be1632e5dfc9cb79ce5e35da73888da2a4789bd9b35112a63",
}


class HriClient(StampedCollector):
    """A ROS4HRI client: follows /humans/faces/tracked and subscribes to each face's topics."""

    def __init__(self, node):
        super().__init__()
        self.node = node
        self.tracked, self.landmarks = {}, {}
        self.face_msgs = {}  # (id, topic) -> {stamp: msg}
        self.subs = {}       # (id, topic) -> subscription
        self._seq = 0
        node.create_subscription(IdsList, "/humans/faces/tracked", self._store(self.tracked), CLIENT_QOS)
        node.create_subscription(LandmarksArray, "/landmarks", self._store(self.landmarks), OUTPUT_QOS)
        node.create_subscription(TFMessage, "/tf", self._store_tf, TF_QOS)
        self.camera = node.create_publisher(Image, "/hri_cam/image", QoSProfile(depth=5))

    def follow(self, face_id, topics=("roi", "landmarks")):
        """Subscribe to a face's topics and wait until the node's publishers are matched."""
        types = {"roi": NormalizedRegionOfInterest2D, "landmarks": FacialLandmarks, "cropped": Image,
                 "aligned": Image}
        for topic in topics:
            table = self.face_msgs.setdefault((face_id, topic), {})
            self.subs[(face_id, topic)] = sub = self.node.create_subscription(
                types[topic], f"/humans/faces/{face_id}/{topic}", self._store(table), CLIENT_QOS,
                # no QoS-event waitables: destroyed while the executor spins (see ros/hri.py)
                event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
            wait_until(lambda sub=sub: sub.get_publisher_count() >= 1, TIMEOUT, what=f"publisher of {face_id}/{topic}")

    def unfollow(self, face_id):
        for (fid, topic) in [k for k in self.subs if k[0] == face_id]:
            self.node.destroy_subscription(self.subs.pop((fid, topic)))

    def send(self, bgr):
        """Publish a frame with a new stamp; return the stamp key once its ids list arrived."""
        self._seq += 1
        msg = Image(**bgr_to_image_fields(bgr, "rgb8"))
        msg.header.frame_id = FRAME_ID
        msg.header.stamp.sec, msg.header.stamp.nanosec = 2000 + self._seq, 500
        self.camera.publish(msg)
        k = key(msg.header.stamp)
        wait_until(lambda: k in self.tracked, TIMEOUT, 0.01, f"/humans/faces/tracked for stamp {k}")
        return k

    def face_msg(self, face_id, topic, k):
        table = self.face_msgs[(face_id, topic)]
        return wait_until(lambda: table.get(k), TIMEOUT, 0.01, f"{face_id}/{topic} for stamp {k}")


@pytest.fixture(scope="module")
def hri(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ros_hri")
    # redetect_every 1: the detector runs on every frame, so a face leaves with the first empty frame
    overrides = {"publish_gaze": True, "redetect_every": 1, "use_camera_info": False}
    with running_graph(tmp, 2, "/hri_cam/image", "hri_test_client", overrides) as (g, client_node, context, _):
        client = HriClient(client_node)
        assert g.bring_up(TIMEOUT)
        wait_until(lambda: g.aligner.pipeline.ready, TIMEOUT, what="descent model in use")  # earlier frames dropped
        wait_until(lambda: client.camera.get_subscription_count() >= 1, TIMEOUT, what="image subscriber")
        frames = list(sample_frames(4, W, H, FACE_PX))
        yield {"graph": g, "client": client, "frames": frames, "empty": np.full((H, W, 3), 90, np.uint8),
               "context": context}


def test_installed_hri_msgs_have_the_official_type_hashes():
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]
    for name, official in OFFICIAL_HASHES.items():
        paths = [os.path.join(p, f"share/hri_msgs/msg/{name}.json") for p in prefixes if p]
        path = next((p for p in paths if os.path.isfile(p)), None)
        assert path is not None, f"no type description of hri_msgs/msg/{name}"
        with open(path) as f:
            hashes = json.load(f)["type_hashes"]
        assert hashes[0]["type_name"] == f"hri_msgs/msg/{name}"
        assert hashes[0]["hash_string"] == official, name


def test_faces_enter_and_leave_with_stamped_per_face_topics(hri):
    client, frames, empty = hri["client"], hri["frames"], hri["empty"]
    k0 = client.send(empty)
    assert list(client.tracked[k0].ids) == []  # published on every frame, also without faces
    k1 = client.send(frames[0])
    ids = list(client.tracked[k1].ids)
    assert len(ids) == 1
    fid = ids[0]
    assert len(fid) == 5 and fid.isalpha() and fid.islower()
    assert client.tracked[k1].header.frame_id == FRAME_ID
    # our messages and TF name the same face
    lms = wait_until(lambda: client.landmarks.get(k1), TIMEOUT, what="landmarks")
    assert hri_id(lms.faces[0].face_id) == fid
    tf = wait_until(lambda: client.tf.get(k1), TIMEOUT, what="tf")
    assert f"face_{fid}" in tf and tf[f"gaze_{fid}"].header.frame_id == f"face_{fid}"

    # the wire types of the topics are the official ones
    node = client.node
    for topic, name in (("/humans/faces/tracked", "IdsList"), (f"/humans/faces/{fid}/roi",
                        "NormalizedRegionOfInterest2D"), (f"/humans/faces/{fid}/landmarks", "FacialLandmarks")):
        infos = node.get_publishers_info_by_topic(topic)
        assert infos and all(str(i.topic_type_hash) == OFFICIAL_HASHES[name] for i in infos), topic

    client.follow(fid)
    k2 = client.send(frames[1])
    assert list(client.tracked[k2].ids) == [fid]  # stable while tracked
    roi = client.face_msg(fid, "roi", k2)
    marks = client.face_msg(fid, "landmarks", k2)
    for msg in (roi, marks):
        assert key(msg.header.stamp) == k2 and msg.header.frame_id == FRAME_ID
    ours = wait_until(lambda: client.landmarks.get(k2), TIMEOUT, what="landmarks").faces[0]

    # FacialLandmarks: the 68 points of our Landmarks in the same order, then the pupils
    assert (marks.width, marks.height) == (W, H) and len(marks.landmarks) == 70
    pts = np.array([(p.x, p.y) for p in marks.landmarks]) * [W, H] - 0.5
    conf = np.array([p.c for p in marks.landmarks])
    points_2d = np.asarray(ours.points_2d).reshape(-1, 2)
    assert np.allclose(pts[:68], points_2d, atol=1e-3)
    for name, index in (("RIGHT_EAR", 0), ("MENTON", 8), ("LEFT_EAR", 16), ("SELLION", 27), ("NOSE", 30),
                        ("RIGHT_EYE_OUTSIDE", 36), ("LEFT_EYE_OUTSIDE", 45), ("MOUTH_OUTER_RIGHT", 48),
                        ("MOUTH_INNER_BOTTOM_1", 67)):
        assert getattr(FacialLandmarks, name) == index
    assert np.allclose(pts[FacialLandmarks.RIGHT_PUPIL], points_2d[36:42].mean(axis=0), atol=1e-3)
    assert np.allclose(pts[FacialLandmarks.LEFT_PUPIL], points_2d[42:48].mean(axis=0), atol=1e-3)
    visible = np.asarray(ours.visible, bool)
    expected = ours.confidence * np.where(visible, 1.0, face_views.OCCLUDED_WEIGHT)
    assert np.allclose(conf[:68], expected, atol=1e-6)
    # the ROI: the landmarks' box, with the fit's confidence
    assert roi.xmin < roi.xmax and roi.ymin < roi.ymax and roi.c == pytest.approx(ours.confidence)
    norm = np.array([(p.x, p.y) for p in marks.landmarks[:68]])
    assert np.allclose(norm.min(axis=0), [roi.xmin, roi.ymin], atol=1e-6)
    assert np.allclose(norm.max(axis=0), [roi.xmax, roi.ymax], atol=1e-6)

    # the face leaves: the ids list empties, the face's topics are removed
    k3 = client.send(empty)
    assert list(client.tracked[k3].ids) == []
    for topic in ("roi", "landmarks"):
        sub = client.subs[(fid, topic)]
        wait_until(lambda sub=sub: sub.get_publisher_count() == 0, TIMEOUT, what=f"{fid}/{topic} removed")
    client.unfollow(fid)
    # it comes back: a new face, with a new id
    k4 = client.send(frames[2])
    again = list(client.tracked[k4].ids)
    assert len(again) == 1 and again[0] != fid


def test_face_images_only_while_subscribed(hri, monkeypatch):
    client, frames = hri["client"], hri["frames"]
    built = {"cropped": 0, "aligned": 0}
    for name in built:
        original = getattr(face_views, f"{name}_face")

        def counting(*args, _name=name, _original=original):
            built[_name] += 1
            return _original(*args)
        monkeypatch.setattr(face_views, f"{name}_face", counting)

    k = client.send(frames[3])
    (fid,) = client.tracked[k].ids
    client.send(frames[3])
    assert built == {"cropped": 0, "aligned": 0}  # nobody subscribed: no image was made

    client.follow(fid, ("cropped",))
    k = client.send(frames[2])
    cropped = client.face_msg(fid, "cropped", k)
    assert built["cropped"] >= 1 and built["aligned"] == 0
    client.follow(fid, ("aligned",))
    k = client.send(frames[1])
    aligned = client.face_msg(fid, "aligned", k)
    for msg in (cropped, aligned):
        assert msg.header.frame_id == FRAME_ID and msg.encoding == "bgr8"
        image = image_to_bgr(msg)
        assert image.shape == (face_views.FACE_IMAGE_SIZE, face_views.FACE_IMAGE_SIZE, 3)
        assert image.std() > 10  # a face, not a blank fill
    assert key(aligned.header.stamp) == k
    client.send(hri["empty"])  # the face leaves; unsubscribe once its topics are gone
    for topic in ("cropped", "aligned"):
        sub = client.subs[(fid, topic)]
        wait_until(lambda sub=sub: sub.get_publisher_count() == 0, TIMEOUT, what=f"{fid}/{topic} removed")
    client.unfollow(fid)


def test_close_empties_the_list_and_removes_the_topics(hri):
    client = hri["client"]
    node = rclpy.create_node("hri_close_test", context=hri["context"])
    try:
        publisher = HriFacePublisher(node)
        header = Header(frame_id=FRAME_ID, stamp=Time(sec=3000))
        face = SimpleNamespace(landmarks=np.tile([[150.0, 100.0]], (68, 1)) + np.arange(68)[:, None],
                               visible=np.ones(68, bool), confidence=0.9, camera=np.array([1, 0, 0, 0, 150, 100.0]))
        face_id = 10 ** 7  # far from the graph's own faces
        out = SimpleNamespace(header=header, image=hri["frames"][0], faces=[SimpleNamespace(face=face)],
                              landmarks=SimpleNamespace(faces=[SimpleNamespace(face_id=face_id)]))
        wait_until(lambda: publisher.pub_tracked.get_subscription_count() >= 1, TIMEOUT, what="client")
        fid = hri_id(face_id)
        assert publisher.publish(out) == [fid]
        wait_until(lambda: client.tracked.get((3000, 0)), TIMEOUT, what="ids list")
        client.follow(fid, ("roi",))
        publisher.close(Header(frame_id=FRAME_ID, stamp=Time(sec=3001)))
        assert list(wait_until(lambda: client.tracked.get((3001, 0)), TIMEOUT, what="empty ids list").ids) == []
        sub = client.subs[(fid, "roi")]
        wait_until(lambda sub=sub: sub.get_publisher_count() == 0, TIMEOUT, what="face topics removed")
        client.unfollow(fid)
    finally:
        node.destroy_node()


def test_a_stopping_node_tells_clients_its_faces_are_gone(hri):
    client = hri["client"]
    node = FaceAlignmentNode(node_name="hri_stop_node", context=hri["context"], cli_args=node_args())
    destroyed = False
    try:
        face = SimpleNamespace(landmarks=np.tile([[150.0, 100.0]], (68, 1)) + np.arange(68)[:, None],
                               visible=np.ones(68, bool), confidence=0.9, camera=np.array([1, 0, 0, 0, 150, 100.0]))
        out = SimpleNamespace(header=Header(frame_id=FRAME_ID, stamp=Time(sec=4000)), image=hri["frames"][0],
                              faces=[SimpleNamespace(face=face)],
                              landmarks=SimpleNamespace(faces=[SimpleNamespace(face_id=10 ** 7 + 1)]))
        wait_until(lambda: node.hri.pub_tracked.get_subscription_count() >= 1, TIMEOUT, what="client")
        node.hri.publish(out)  # what the worker does with a processed frame
        wait_until(lambda: client.tracked.get((4000, 0)), TIMEOUT, what="ids list")
        before = set(client.tracked)
        node.destroy_node()
        destroyed = True

        def empty_list_after_stop():
            new = [client.tracked[k] for k in set(client.tracked) - before]
            return next((m for m in new if m.header.frame_id == FRAME_ID and not m.ids), None)
        assert wait_until(empty_list_after_stop, TIMEOUT, what="empty ids list on stop").header.stamp.sec > 4000
    finally:
        if not destroyed:
            node.destroy_node()


def test_hri_parameter_false_publishes_no_hri_topics(hri):
    node = FaceAlignmentNode(node_name="hri_off_node", context=hri["context"],
                             cli_args=node_args(overrides={"hri": False}))
    try:
        assert node.hri is None

        def topics():
            names = [name for name, _ in node.get_publisher_names_and_types_by_node("hri_off_node", "/")]
            return names if "/landmarks" in names else None
        assert not any(t.startswith("/humans/") for t in wait_until(topics, TIMEOUT, what="node's publishers"))
    finally:
        node.destroy_node()


def test_face_ids_unique_for_the_process_and_stable_while_tracked():
    tracker_a, tracker_b = object(), object()
    ids = FaceIds()
    first = ids.assign(tracker_a, [0, 1])
    assert ids.assign(tracker_a, [1, 0]) == first[::-1]          # stable while tracked
    assert ids.assign(tracker_a, [1])[0] == first[1]
    assert ids.assign(tracker_a, [0])[0] not in first            # lost, then a new face
    restarted = ids.assign(tracker_b, [0, 1])                    # a rebuilt tracker counts from 0 again
    assert not set(restarted) & set(first)
    assert not set(FaceIds().assign(tracker_a, [0])) & set(first + restarted)  # a new pipeline too
    names = {hri_id(n) for n in range(200_000)}
    assert len(names) == 200_000 and all(len(n) == 5 and n.isalpha() and n.islower() for n in names)
