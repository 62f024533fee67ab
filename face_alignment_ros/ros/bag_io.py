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

PACKAGE = "face_alignment_ros"
MSG_NAMES = ("Landmarks", "LandmarksArray", "FaceMesh", "FaceMeshArray", "MeshTopology", "DescentModel")
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


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

    def write(self, topic: str, msgtype: str, log_time_ns: int, message) -> None:
        from rclpy.serialization import serialize_message

        conn = self._connections.get(topic)
        if conn is None:
            conn = self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        data = message if isinstance(message, (bytes, bytearray, memoryview)) else serialize_message(message)
        self._writer.write(conn, int(log_time_ns), bytes(data))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_sample_bag(path, n_frames: int = 30, width: int = 640, height: int = 480, fps: float = 15.0,
                     face_px: float = 150.0, topic: str = "/camera/image_raw", frame_id: str = "camera_optical_frame",
                     encoding: str = "rgb8", storage: str = "mcap", start_ns: int = 1_700_000_000_000_000_000,
                     camera_info: bool = True, focal_length_px: float = 0.0) -> list:
    """A bag of the sample stream (``sample_stream.sample_frames``) with CameraInfo beside the
    images; returns the header stamps written, in nanoseconds."""
    from sensor_msgs.msg import CameraInfo, Image

    from face_alignment_ros.core.head_frame import Intrinsics
    from face_alignment_ros.ros.image_conversion import bgr_to_image_fields
    from face_alignment_ros.ros.sample_stream import sample_frames

    info_topic = topic.rsplit("/", 1)[0] + "/camera_info"
    intr = Intrinsics.assumed(width, height, focal_length_px)
    stamps = []
    with BagWriter(path, storage) as bag:
        for i, frame in enumerate(sample_frames(n_frames, width, height, face_px, fps)):
            t = start_ns + int(round(i * 1e9 / fps))
            img = Image(**bgr_to_image_fields(frame, encoding))
            img.header.frame_id = frame_id
            img.header.stamp.sec, img.header.stamp.nanosec = divmod(t, 1_000_000_000)
            if camera_info:
                info = CameraInfo(header=img.header, width=width, height=height, distortion_model="plumb_bob",
                                  d=[0.0] * 5, k=[intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0],
                                  r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                                  p=[intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0])
                bag.write(info_topic, CAMERA_INFO_TYPE, t, info)
            bag.write(topic, IMAGE_TYPE, t, img)
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


def pick_image_topic(path, image_topic: str | None) -> tuple[str, str | None]:
    """(image topic, camera_info topic or None); the image topic may be left out when the bag
    has exactly one."""
    topics = topics_of(path)
    images = sorted(t for t, m in topics.items() if m == IMAGE_TYPE)
    if image_topic is None:
        if len(images) != 1:
            raise ValueError(f"{path} has image topics {images}: choose one with --image-topic")
        image_topic = images[0]
    elif topics.get(image_topic) != IMAGE_TYPE:
        raise ValueError(f"{path} has no {IMAGE_TYPE} topic {image_topic!r} (images: {images})")
    info = image_topic.rsplit("/", 1)[0] + "/camera_info"
    return image_topic, info if topics.get(info) == CAMERA_INFO_TYPE else None


def convert_bag(in_path, out_path, pipeline, image_topic: str | None = None, storage: str = "mcap",
                copy_input: bool = False, output_ns: str = "", on_frame=None) -> dict:
    """Run ``pipeline`` (a ready ``FramePipeline``) over a bag's images; write LandmarksArray,
    FaceMeshArray, MeshTopology, TF (and the debug image when enabled) with each input's stamp
    as header stamp and log time. Bad frames are counted and skipped, as in the node."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from face_alignment_ros.ros.image_conversion import ImageConversionError

    image_topic, info_topic = pick_image_topic(in_path, image_topic)
    ns = output_ns.rstrip("/")
    counts = {"frames": 0, "faces": 0, "bad": 0, "image_topic": image_topic, "camera_info_topic": info_topic}
    camera_info = None
    wanted = {image_topic} | ({info_topic} if info_topic else set())
    with BagWriter(out_path, storage) as bag:
        for topic, msgtype, t, raw in read_messages(in_path, wanted):
            if copy_input:
                bag.write(topic, msgtype, t, raw)
            if topic == info_topic:
                camera_info = deserialize_message(raw, CameraInfo)
                continue
            image = deserialize_message(raw, Image)
            try:
                out = pipeline.process(image, camera_info)
            except ImageConversionError as exc:
                counts["bad"] += 1
                print(f"frame at {t} skipped: {exc}")
                continue
            if out.topology is not None:
                bag.write(f"{ns}/mesh_topology", f"{PACKAGE}/msg/MeshTopology", t, out.topology)
            bag.write(f"{ns}/landmarks", f"{PACKAGE}/msg/LandmarksArray", t, out.landmarks)
            bag.write(f"{ns}/face_mesh", f"{PACKAGE}/msg/FaceMeshArray", t, out.meshes)
            if out.transforms:
                bag.write("/tf", "tf2_msgs/msg/TFMessage", t, TFMessage(transforms=out.transforms))
            if out.debug_image is not None:
                bag.write(f"{ns}/debug/image", IMAGE_TYPE, t, out.debug_image)
            counts["frames"] += 1
            counts["faces"] += len(out.faces)
            if on_frame is not None:
                on_frame(t, out)
    return counts


class BagReplayer:
    """Publishes a bag's images (and CameraInfo) into a live graph from ``node``; the raw CDR
    bytes go straight to the publishers. QoS: sensor data (best effort) or reliable."""

    def __init__(self, node, path, topics=None, reliable: bool = False, remap: dict | None = None):
        from sensor_msgs.msg import CameraInfo, Image

        from face_alignment_ros.ros.qos import image_qos

        self.path = Path(path)
        all_topics = topics_of(self.path)
        kinds = {IMAGE_TYPE: Image, CAMERA_INFO_TYPE: CameraInfo}
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
