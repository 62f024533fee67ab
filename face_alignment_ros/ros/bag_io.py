"""rosbag2 files (mcap or sqlite3) without `ros2 bag`, through the pure-Python ``rosbags``:
the project's message types registered from msg/, the bag-to-bag conversion that runs the
node's ``FramePipeline``, sample bags, and replay into a live graph.

Messages are (de)serialised by rclpy (CDR, as on the wire), so the conversion sees exactly
the message objects the node sees; rosbags only stores the bytes and the type descriptions.
"""
from __future__ import annotations

import time
from pathlib import Path

from face_alignment_ros.core import resources
from face_alignment_ros.ros.topics import camera_info_beside

PACKAGE = "face_alignment_ros"
MSG_NAMES = ("Landmarks", "LandmarksArray", "FaceMesh", "FaceMeshArray", "MeshTopology", "DescentModel")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
# custom_data of an output bag: "complete", or "partial" when the run was interrupted.
STATUS_KEY = "face_alignment_ros.status"


def msg_dir() -> Path:
    """msg/ of an installed package (share/face_alignment_ros/msg), else of the repository."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory(PACKAGE)) / "msg"
        if (path / "Landmarks.msg").is_file():
            return path
    except Exception:  # not on the ament index (venv without AMENT_PREFIX_PATH)
        pass
    return resources.REPO_ROOT / "msg"


def typestore():
    """rosbags' Jazzy type store plus this package's messages (tf2_msgs is already in it)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    folder = msg_dir()
    for name in MSG_NAMES:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise ValueError(f"storage must be mcap or sqlite3, not {name!r}") from None


class BagWriter:
    """rosbags Writer taking rclpy messages (or raw CDR bytes)."""

    def __init__(self, path, storage: str = "mcap"):
        from rosbags.rosbag2 import Writer

        self.store = typestore()
        self._writer = Writer(Path(path), version=9, storage_plugin=storage_plugin(storage))
        self._writer.open()
        self._connections = {}

    def write(self, topic: str, msgtype: str, log_time_ns: int, message, qos=()) -> None:
        """``qos``: the offered QoS of the topic (rclpy QoSProfile or rosbags Qos, or a list of
        them), kept in the bag's metadata for players; taken from a topic's first write."""
        from rclpy.serialization import serialize_message

        conn = self._connections.get(topic)
        if conn is None:
            profiles = [bag_qos(q) for q in (qos if isinstance(qos, (list, tuple)) else [qos])]
            conn = self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.store, offered_qos_profiles=profiles)
        data = message if isinstance(message, (bytes, bytearray, memoryview)) else serialize_message(message)
        self._writer.write(conn, int(log_time_ns), bytes(data))

    def set_custom_data(self, key: str, value: str) -> None:
        """A key of the metadata's custom_data (written on close)."""
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bag_qos(profile):
    """rosbags' Qos of an rclpy QoSProfile (a rosbags Qos is returned as it is)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    if isinstance(profile, Qos):
        return profile

    def span(duration) -> QosTime:
        return QosTime(*divmod(duration.nanoseconds, 1_000_000_000))

    return Qos(history=QosHistory[profile.history.name], depth=profile.depth,
               reliability=QosReliability[profile.reliability.name], durability=QosDurability[profile.durability.name],
               deadline=span(profile.deadline), lifespan=span(profile.lifespan),
               liveliness=QosLiveliness[profile.liveliness.name],
               liveliness_lease_duration=span(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=profile.avoid_ros_namespace_conventions)


def base_image_topic(topic: str, msgtype: str) -> str:
    """The image topic that a compressed one belongs to (``/cam/image_raw/compressed`` ->
    ``/cam/image_raw``), as image_transport names them."""
    if msgtype == COMPRESSED_IMAGE_TYPE and topic.endswith("/compressed"):
        return topic[: -len("/compressed")]
    return topic


def camera_info_topic(image_topic: str, msgtype: str = IMAGE_TYPE) -> str:
    """``camera_info`` beside the (base) image topic, as image_transport resolves it."""
    return camera_info_beside(base_image_topic(image_topic, msgtype))


def write_sample_bag(path, n_frames: int = 30, width: int = 640, height: int = 480, fps: float = 15.0,
                     face_px: float = 150.0, topic: str = "/camera/image_raw", frame_id: str = "camera_optical_frame",
                     encoding: str = "rgb8", storage: str = "mcap", start_ns: int = 1_700_000_000_000_000_000,
                     camera_info: bool = True, focal_length_px: float = 0.0, compressed: str | None = None) -> list:
    """A bag of the sample stream (``common.samples.sample_frames``) with CameraInfo beside the
    images; returns the header stamps written, in nanoseconds. ``compressed`` ("jpeg" or "png"):
    CompressedImage on ``topic``/compressed instead of raw Images on ``topic``."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from face_alignment_ros.common.samples import sample_frames
    from face_alignment_ros.core.head_frame import Intrinsics
    from face_alignment_ros.ros.image_conversion import bgr_to_compressed_fields, bgr_to_image_fields
    from face_alignment_ros.ros.qos import image_qos

    info_topic = camera_info_topic(topic)
    intr = Intrinsics.assumed(width, height, focal_length_px)
    stamps = []
    with BagWriter(path, storage) as bag:
        for i, frame in enumerate(sample_frames(n_frames, width, height, face_px, fps)):
            t = start_ns + int(round(i * 1e9 / fps))
            if compressed:
                img = CompressedImage(**bgr_to_compressed_fields(frame, compressed))
            else:
                img = Image(**bgr_to_image_fields(frame, encoding))
            img.header.frame_id = frame_id
            img.header.stamp.sec, img.header.stamp.nanosec = divmod(t, 1_000_000_000)
            if camera_info:
                info = CameraInfo(header=img.header, width=width, height=height, distortion_model="plumb_bob",
                                  d=[0.0] * 5, k=[intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0],
                                  r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                                  p=[intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0])
                bag.write(info_topic, CAMERA_INFO_TYPE, t, info, image_qos())
            if compressed:
                bag.write(f"{topic}/compressed", COMPRESSED_IMAGE_TYPE, t, img, image_qos())
            else:
                bag.write(topic, IMAGE_TYPE, t, img, image_qos())
            stamps.append(t)
    return stamps


def read_messages(path, topics=None):
    """(topic, msgtype, log_time_ns, raw CDR bytes) in log-time order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t, raw


def topics_of(path) -> dict:
    """topic -> msgtype of a bag."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def offered_qos_of(path) -> dict:
    """topic -> the offered QoS profiles (rosbags Qos) recorded in a bag's metadata."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        return {c.topic: list(getattr(c.ext, "offered_qos_profiles", []) or []) for c in reader.connections}


def custom_data_of(path) -> dict:
    """The custom_data of a bag's metadata.yaml (e.g. ``STATUS_KEY``)."""
    import yaml

    meta = yaml.safe_load((Path(path) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return meta.get("custom_data") or {}


def pick_image_topic(path, image_topic: str | None) -> tuple[str, str, str | None]:
    """(image topic, its type: Image or CompressedImage, camera_info topic or None); the image
    topic may be left out when the bag has exactly one."""
    topics = topics_of(path)
    images = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
    if image_topic is None:
        if len(images) != 1:
            raise ValueError(f"{path} has image topics {images}: choose one with --image-topic")
        image_topic = images[0]
    elif image_topic not in topics and topics.get(f"{image_topic}/compressed") == COMPRESSED_IMAGE_TYPE:
        image_topic = f"{image_topic}/compressed"  # the base name of a compressed stream
    elif topics.get(image_topic) not in IMAGE_TYPES:
        raise ValueError(f"{path} has no Image or CompressedImage topic {image_topic!r} (images: {images})")
    msgtype = topics[image_topic]
    info = camera_info_topic(image_topic, msgtype)
    return image_topic, msgtype, info if topics.get(info) == CAMERA_INFO_TYPE else None


def convert_bag(in_path, out_path, pipeline, image_topic: str | None = None, storage: str = "mcap",
                copy_input: bool = False, output_ns: str = "", on_frame=None, should_stop=None) -> dict:
    """Run ``pipeline`` (a ready ``FramePipeline``) over every image of a bag (Image or
    CompressedImage), in order; write LandmarksArray, FaceMeshArray, MeshTopology (latched QoS),
    TF (and the debug image when enabled) with each input's stamp as header stamp and log time.
    Bad frames are counted and skipped, as in the node.

    ``should_stop()`` is asked between frames: when it says yes, the bag is closed readable with
    custom_data ``STATUS_KEY: partial`` and ``counts["partial"]`` is True."""
    import sys

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from tf2_msgs.msg import TFMessage

    from face_alignment_ros.ros.image_conversion import ImageConversionError
    from face_alignment_ros.ros.qos import LATCHED_QOS, OUTPUT_QOS, TF_QOS

    image_topic, image_type, info_topic = pick_image_topic(in_path, image_topic)
    image_class = CompressedImage if image_type == COMPRESSED_IMAGE_TYPE else Image
    ns = output_ns.rstrip("/")
    counts = {"frames": 0, "faces": 0, "bad": 0, "errors": 0, "partial": False, "image_topic": image_topic,
              "camera_info_topic": info_topic}
    camera_info = None
    wanted = {image_topic} | ({info_topic} if info_topic else set())
    input_qos = offered_qos_of(in_path) if copy_input else {}
    with BagWriter(out_path, storage) as bag:
        try:
            for topic, msgtype, t, raw in read_messages(in_path, wanted):
                if should_stop is not None and should_stop():
                    counts["partial"] = True
                    break
                if copy_input:
                    bag.write(topic, msgtype, t, raw, input_qos.get(topic, ()))
                if topic == info_topic:
                    camera_info = deserialize_message(raw, CameraInfo)
                    continue
                image = deserialize_message(raw, image_class)
                try:
                    out = pipeline.process(image, camera_info)
                except ImageConversionError as exc:
                    counts["bad"] += 1
                    print(f"frame at {t} skipped: {exc}", file=sys.stderr)
                    continue
                except Exception as exc:  # as the node: report, skip the frame, go on
                    counts["errors"] += 1
                    print(f"frame at {t} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                if out.topology is not None:
                    bag.write(f"{ns}/mesh_topology", f"{PACKAGE}/msg/MeshTopology", t, out.topology, LATCHED_QOS)
                bag.write(f"{ns}/landmarks", f"{PACKAGE}/msg/LandmarksArray", t, out.landmarks, OUTPUT_QOS)
                bag.write(f"{ns}/face_mesh", f"{PACKAGE}/msg/FaceMeshArray", t, out.meshes, OUTPUT_QOS)
                if out.transforms:
                    bag.write("/tf", "tf2_msgs/msg/TFMessage", t, TFMessage(transforms=out.transforms), TF_QOS)
                if out.debug_image is not None:
                    bag.write(f"{ns}/debug/image", IMAGE_TYPE, t, out.debug_image, OUTPUT_QOS)
                counts["frames"] += 1
                counts["faces"] += len(out.faces)
                if on_frame is not None:
                    on_frame(t, out)
        except BaseException:  # e.g. KeyboardInterrupt without a handler: still readable, marked
            counts["partial"] = True
            raise
        finally:
            bag.set_custom_data(STATUS_KEY, "partial" if counts["partial"] else "complete")
    return counts


class BagReplayer:
    """Publishes a bag's images (and CameraInfo) into a live graph from ``node``; the raw CDR
    bytes go straight to the publishers. QoS: sensor data (best effort) or reliable."""

    def __init__(self, node, path, topics=None, reliable: bool = False, remap: dict | None = None):
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from face_alignment_ros.ros.qos import image_qos

        self.path = Path(path)
        all_topics = topics_of(self.path)
        kinds = {IMAGE_TYPE: Image, COMPRESSED_IMAGE_TYPE: CompressedImage, CAMERA_INFO_TYPE: CameraInfo}
        chosen = [t for t, m in all_topics.items() if m in kinds and (topics is None or t in topics)]
        if not chosen:
            raise ValueError(f"{path}: no image or camera_info topics to replay (topics: {sorted(all_topics)})")
        qos = image_qos("reliable" if reliable else "best_effort")
        remap = remap or {}
        self.publishers = {t: node.create_publisher(kinds[all_topics[t]], remap.get(t, t), qos) for t in chosen}

    def messages(self):
        """(topic, log_time_ns, raw) of the replayed topics, in order."""
        for topic, _type, t, raw in read_messages(self.path, set(self.publishers)):
            yield topic, t, raw

    def publish(self, topic: str, raw: bytes) -> None:
        self.publishers[topic].publish(raw)

    def wait_for_subscribers(self, count: int = 1, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self.publishers.values()):
                return True
            time.sleep(0.02)
        return False

    def play(self, rate: float = 1.0, on_message=None) -> int:
        """Publish everything at the recorded timing divided by ``rate``; returns the count."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        start_wall, start_bag, n = None, None, 0
        for topic, t, raw in self.messages():
            if start_wall is None:
                start_wall, start_bag = time.monotonic(), t
            delay = start_wall + (t - start_bag) / 1e9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing to the recorded rate
            self.publish(topic, raw)
            n += 1
            if on_message is not None:
                on_message(topic, t)
        return n
