"""What the nodes survive and how they report it (docs/ros.md, "Robustness"), with real rclpy:
a malformed descent model message or file, invalid lifecycle requests, an executor that dies
anyway (the process must end, not linger), frames lost before the node, the CameraInfo topic
beside the image, integers given for double parameters. No descent model is loaded here, so
the tests stay fast; the graph tests cover frames with a model."""
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_support import domain_id  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from face_alignment_ros.common.stand_in_models import stand_in_descent  # noqa: E402
from face_alignment_ros.core import resources  # noqa: E402
from face_alignment_ros.msg import DescentModel as DescentModelMsg  # noqa: E402
from face_alignment_ros.ros.descent_model_node import DescentModelNode  # noqa: E402
from face_alignment_ros.ros.diagnostics import FRAMES_LOST, NO_CAMERA_INFO, values_of  # noqa: E402
from face_alignment_ros.ros.face_alignment_node import FaceAlignmentNode  # noqa: E402
from face_alignment_ros.ros.graph import Graph, node_args  # noqa: E402
from face_alignment_ros.ros.lifecycle_client import LifecycleClient  # noqa: E402
from face_alignment_ros.ros.node_main import spin_node  # noqa: E402
from face_alignment_ros.ros.qos import LATCHED_QOS  # noqa: E402
from face_alignment_ros.ros.waiting import wait_until  # noqa: E402

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
TIMEOUT = 20.0


class Ros:
    """One context and a spinning executor; nodes are added per test."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id(3))
        self.executor = MultiThreadedExecutor(context=self.context)
        self.probe = rclpy.create_node("robustness_probe", context=self.context)
        self.diagnostics = []
        self._lock = threading.Lock()
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor.add_node(self.probe)
        self._nodes = [self.probe]
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, msg):
        with self._lock:
            self.diagnostics.extend(msg.status)

    def add(self, node):
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def wait_diag(self, name: str, predicate, what: str):
        """The first status named ``name`` (after those seen so far) for which predicate(message, values)."""
        with self._lock:
            seen = len(self.diagnostics)

        def find():
            with self._lock:
                for status in self.diagnostics[seen:]:
                    if status.name == name and predicate(status.message, values_of(status)):
                        return status
            return None
        return wait_until(find, TIMEOUT, 0.01, what)

    def close(self):
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(5.0)
        for node in self._nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def ros():
    r = Ros()
    yield r
    r.close()


def aligner(ros, name, tmp_path=None, yaml_text=None, remaps=None, **overrides):
    params_file = None
    if yaml_text is not None:
        params_file = tmp_path / f"{name}.yaml"
        params_file.write_text(f"{name}:\n  ros__parameters:\n{yaml_text}")
    return ros.add(FaceAlignmentNode(name, context=ros.context, cli_args=node_args(
        params_file, remaps, {"diagnostics_period": 0.05, **overrides})))


def null_metadata_model(path):
    """The shipped DFF descent model with metadata_json set to JSON null (a file found by an attack)."""
    source = resources.shipped_models("dff").descent
    if source.is_file():
        with np.load(source, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        stand_in_descent().save(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    arrays["metadata_json"] = np.array("null")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


# --- A1: a malformed descent model -------------------------------------------------------------

def test_malformed_descent_model_message_is_reported_and_the_node_keeps_running(ros, tmp_path):
    import hashlib

    node = aligner(ros, "aligner_bad_model", remaps={"descent_model": "/bad_model/descent_model"})
    data = null_metadata_model(tmp_path / "null.npz").read_bytes()
    pub = ros.probe.create_publisher(DescentModelMsg, "/bad_model/descent_model", LATCHED_QOS)
    pub.publish(DescentModelMsg(metadata_json="null", npz_bytes=data, sha256=hashlib.sha256(data).hexdigest()))
    name = "aligner_bad_model: face alignment"
    ros.wait_diag(name, lambda m, v: "last model rejected" in m, "the rejection in diagnostics")
    assert node.stats.model_error
    # still alive: its timer keeps publishing, and frames are still counted
    images = ros.probe.create_publisher(Image, "/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    wait_until(lambda: images.get_subscription_count() >= 1, TIMEOUT, what="image subscription")
    images.publish(Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4)))
    ros.wait_diag(name, lambda m, v: int(v["frames received"]) >= 1, "a frame counted after the bad model")


def test_malformed_model_file_fails_configure_with_its_reason(ros, tmp_path):
    path = null_metadata_model(tmp_path / "null_metadata.npz")
    node = ros.add(DescentModelNode("model_node_bad_file", context=ros.context,
                                    cli_args=node_args(overrides={"model_file": str(path)})))
    client = LifecycleClient(ros.probe, node.get_fully_qualified_name())
    assert client.wait_for_services(TIMEOUT)
    assert client.change_state("configure") is False
    assert client.get_state() == "unconfigured"
    assert "null_metadata.npz" in node.last_error  # names the file, not "configure failed ()"
    ros.wait_diag("model_node_bad_file: descent model", lambda m, v: "null_metadata.npz" in v["last error"],
                  "the configure failure in diagnostics")


# --- A2: invalid lifecycle requests ------------------------------------------------------------

def model_node_with_client(ros, tmp_path, name: str, node_class=DescentModelNode):
    """A descent model node on a good (stand-in) model file, and a lifecycle client for it."""
    path = tmp_path / "good.npz"
    stand_in_descent().save(path)
    node = ros.add(node_class(name, context=ros.context, cli_args=node_args(overrides={"model_file": str(path)})))
    client = LifecycleClient(ros.probe, node.get_fully_qualified_name())
    assert client.wait_for_services(TIMEOUT)
    return node, client


def test_invalid_lifecycle_requests_are_refused_and_the_executor_survives(ros, tmp_path):
    node, client = model_node_with_client(ros, tmp_path, "model_node_requests")
    assert client.change_state("configure") and client.change_state("activate")
    name = "model_node_requests: descent model"

    assert client.change_state("configure", TIMEOUT) is False   # configure while active
    assert client.get_state() == "active"
    status = ros.wait_diag(name, lambda m, v: "not valid from state 'active'" in v["last error"],
                           "the refused transition in diagnostics")
    assert "'configure'" in status.message or "id 1" in status.message
    assert int(values_of(status)["refused transitions"]) == 1

    assert client.change_state("active_shutdown") and client.get_state() == "finalized"
    assert client.change_state("configure", TIMEOUT) is False   # configure after shutdown
    assert client.get_state() == "finalized"
    assert "not valid from state 'finalized'" in node.last_error


class _ActivateRaises(DescentModelNode):
    def on_activate(self, state):
        raise RuntimeError("publisher exploded")


def test_an_exception_in_a_transition_callback_is_reported_with_its_reason(ros, tmp_path):
    node, client = model_node_with_client(ros, tmp_path, "model_node_raises", _ActivateRaises)
    assert client.change_state("configure")
    assert client.change_state("activate") is False
    assert client.get_state() == "unconfigured"  # on_error released the model
    assert "on_activate from 'inactive' raised RuntimeError: publisher exploded" in node.last_error
    ros.wait_diag("model_node_raises: descent model", lambda m, v: "publisher exploded" in v["last error"],
                  "the exception's reason in diagnostics")
    assert client.change_state("configure")  # a good transition clears it
    assert node.last_error == ""


# --- A3: an executor that dies anyway ends the process -----------------------------------------

class _Crashing(Node):
    """A node with an unguarded callback that raises: what a bug in a plain rclpy node does."""

    def __init__(self, context=None):
        super().__init__("crashing_node", context=context)
        self.create_timer(0.01, self._boom)

    def _boom(self):
        raise RuntimeError("bug in a callback")


def test_standalone_node_exits_with_status_1_when_its_executor_dies(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id(4)))
    assert spin_node(_Crashing, args=[]) == 1


def test_graph_reports_a_dead_executor_and_face_align_ros_exits_1():
    from face_alignment_ros.cli.ros_bringup import serve

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(4))
    graph = Graph("/crash/image", None, namespace="crash", context=context)
    crashing = _Crashing(context=context)
    graph.executor.add_node(crashing)
    try:
        graph.start()
        assert serve(graph) == 1
        assert isinstance(graph.failure, RuntimeError)
    finally:
        graph.shutdown()
        crashing.destroy_node()
        rclpy.shutdown(context=context)


# --- B2: frames lost before the node -----------------------------------------------------------

def _image(sec, nanosec):
    msg = Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4))
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


def test_gaps_in_a_steady_camera_rate_are_counted_and_warned(ros):
    node = aligner(ros, "aligner_gaps", remaps={"image": "/gaps/image"})
    pub = ros.probe.create_publisher(Image, "/gaps/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    wait_until(lambda: pub.get_subscription_count() >= 1, TIMEOUT, what="image subscription")
    frames = [i for i in range(20) if i not in (12, 13, 17)]   # 10 Hz, three frames never sent
    for n, i in enumerate(frames, 1):
        pub.publish(_image(100 + i // 10, (i % 10) * 100_000_000))
        wait_until(lambda n=n: node.stats.received >= n, TIMEOUT, 0.005, f"frame {i} received")
    status = ros.wait_diag("aligner_gaps: face alignment", lambda m, v: int(v["frames missing by stamp gaps"]) == 3,
                           "three missing frames counted")
    assert FRAMES_LOST in status.message and "config/fastdds.xml" in status.message


PUBLISHER = """
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init(domain_id=int(sys.argv[1]))
node = rclpy.create_node("vga_camera")
pub = node.create_publisher(Image, "/vga/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
deadline = time.monotonic() + 20
while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
    time.sleep(0.02)
msg = Image(height=480, width=640, encoding="rgb8", step=1920, data=bytes(640 * 480 * 3))
for i in range(int(sys.argv[2])):
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + i // 20, (i % 20) * 50_000_000
    pub.publish(msg)
    time.sleep(0.05)
time.sleep(0.5)
"""


def test_frames_lost_in_transport_are_counted(ros):
    """VGA frames from another process over Fast DDS defaults (no shared-memory profile): most
    are lost in UDP fragments. What the middleware reports lost must reach diagnostics."""
    if os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        pytest.skip("a Fast DDS profile is set: frames may all arrive")
    node = aligner(ros, "aligner_vga", remaps={"image": "/vga/image"})
    sent = 30
    env = {k: v for k, v in os.environ.items() if k != "FASTRTPS_DEFAULT_PROFILES_FILE"}
    subprocess.run([sys.executable, "-c", PUBLISHER, str(domain_id(3)), str(sent)], env=env, check=True,
                   timeout=60)
    s = wait_until(lambda: node.stats.snapshot(), TIMEOUT)
    if s["received"] == sent:
        pytest.skip("no frame was lost in transport on this machine")
    assert s["lost_transport"] > 0
    assert s["received"] + s["lost_transport"] <= sent


# --- B3: CameraInfo beside the image -----------------------------------------------------------

def test_camera_info_is_taken_beside_the_image_topic(ros):
    node = aligner(ros, "aligner_beside", remaps={"image": "/cam_a/image_raw"})
    info = ros.probe.create_publisher(CameraInfo, "/cam_a/camera_info", 5)
    wait_until(lambda: info.get_subscription_count() >= 1, TIMEOUT, what="CameraInfo subscription beside the image")
    assert node.camera_info_topic == "/cam_a/camera_info"
    status = ros.wait_diag("aligner_beside: face alignment", lambda m, v: True, "diagnostics")
    assert values_of(status)["camera info"].startswith(f"{NO_CAMERA_INFO} on /cam_a/camera_info")


def test_camera_info_topic_parameter_and_remap_win(ros):
    by_param = aligner(ros, "aligner_param", remaps={"image": "/cam_b/image_raw"}, camera_info_topic="/calib/info")
    assert by_param.camera_info_topic == "/calib/info"
    by_remap = aligner(ros, "aligner_remap", remaps={"image": "/cam_c/image_raw", "camera_info": "/other/info"})
    assert by_remap.camera_info_topic == "/other/info"


# --- D: integers for double parameters ---------------------------------------------------------

def test_flip_average_is_a_parameter_from_the_yaml_and_settable(ros, tmp_path):
    from rclpy.parameter import Parameter

    node = aligner(ros, "aligner_flip", tmp_path, "    flip_average: true\n    second_pass: true\n")
    assert node.params["flip_average"] is True and node.pipeline.config.flip_average is True
    assert node.params["second_pass"] is True and node.pipeline.config.second_pass is True
    assert node.set_parameters([Parameter("flip_average", value=False)])[0].successful
    assert node.params["flip_average"] is False
    assert not node.set_parameters([Parameter("flip_average", value="yes")])[0].successful


def test_integer_in_the_yaml_for_a_double_parameter_is_accepted(ros, tmp_path):
    from rclpy.parameter import Parameter

    node = aligner(ros, "aligner_int", tmp_path, "    focal_length_px: 600\n    horizontal_fov_deg: 70\n")
    assert node.params["focal_length_px"] == 600.0 and isinstance(node.params["focal_length_px"], float)
    assert node.get_parameter("horizontal_fov_deg").type_ == Parameter.Type.DOUBLE
    assert node.set_parameters([Parameter("horizontal_fov_deg", value=80)])[0].successful
    assert node.get_parameter("horizontal_fov_deg").value == 80.0 and node.params["horizontal_fov_deg"] == 80.0
    assert not node.set_parameters([Parameter("horizontal_fov_deg", value="wide")])[0].successful
    assert not node.set_parameters([Parameter("horizontal_fov_deg", value=500)])[0].successful
