"""descent_model_node driven through its real lifecycle services, every transition, with the
failures: missing file, corrupt file, wrong checksum, wrong descriptor, wrong iteration count."""
import os

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_support import domain_id  # noqa: E402

from face_alignment_ros.common.stand_in_models import stand_in_descent  # noqa: E402
from face_alignment_ros.core.descent_model import DescentModel  # noqa: E402
from face_alignment_ros.msg import DescentModel as DescentModelMsg  # noqa: E402
from face_alignment_ros.ros.descent_model_node import DescentModelNode  # noqa: E402
from face_alignment_ros.ros.lifecycle_client import LifecycleClient  # noqa: E402
from face_alignment_ros.ros.qos import LATCHED_QOS  # noqa: E402
from face_alignment_ros.ros.waiting import wait_until  # noqa: E402

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="module")
def ros():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(0))
    node = DescentModelNode(context=context)
    client_node = rclpy.create_node("lifecycle_test_client", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client_node)
    import threading

    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    client = LifecycleClient(client_node, node.get_fully_qualified_name())
    assert client.wait_for_services(10.0)
    yield node, client_node, client
    executor.shutdown(timeout_sec=5.0)
    thread.join(5.0)
    node.destroy_node()
    client_node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    good = d / "good.npz"
    sha = stand_in_descent().save(good)
    other = d / "other.npz"
    other_sha = stand_in_descent(bias_px=1.0).save(other)
    corrupt = d / "corrupt.npz"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    return {"good": (good, sha), "other": (other, other_sha), "corrupt": corrupt, "missing": d / "missing.npz"}


def _set(node, **values):
    results = node.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    assert all(r.successful for r in results), [r.reason for r in results]


def test_invalid_parameters_rejected_with_reason(ros):
    node, _, _ = ros
    r = node.set_parameters([Parameter("sha256", value="xyz")])[0]
    assert not r.successful and "64 hexadecimal" in r.reason
    r = node.set_parameters([Parameter("descriptor", value="hog")])[0]
    assert not r.successful and "one of" in r.reason
    r = node.set_parameters([Parameter("iterations", value=-1)])[0]
    assert not r.successful


@pytest.mark.parametrize("case", ["missing", "corrupt", "checksum", "descriptor", "iterations"])
def test_configure_failures_leave_node_unconfigured(ros, files, case):
    node, _, client = ros
    good, sha = files["good"]
    settings = {
        "missing": dict(model_file=str(files["missing"])),
        "corrupt": dict(model_file=str(files["corrupt"])),
        "checksum": dict(model_file=str(good), sha256="0" * 64),
        "descriptor": dict(model_file=str(good), descriptor="sift"),
        "iterations": dict(model_file=str(good), iterations=5),
    }[case]
    _set(node, **{"sha256": "", "descriptor": "dff", "iterations": 0, **settings})
    assert client.get_state() == "unconfigured"
    assert client.change_state("configure") is False
    assert client.get_state() == "unconfigured"
    expected = {"missing": "not found", "corrupt": "unreadable or truncated", "checksum": "sha256",
                "descriptor": "'descriptor'", "iterations": "'iterations'"}[case]
    assert expected in node.last_error


def test_every_transition_and_model_delivery(ros, files):
    node, client_node, client = ros
    good, sha = files["good"]
    other, other_sha = files["other"]
    _set(node, model_file=str(good), sha256=sha, descriptor="dff", iterations=3)
    assert client.change_state("configure") and client.get_state() == "inactive"

    received = []
    client_node.create_subscription(DescentModelMsg, "/descent_model", received.append, LATCHED_QOS)
    assert client.change_state("activate") and client.get_state() == "active"
    msg = wait_until(lambda: received and received[-1], 10.0, what="descent model message")
    assert msg.sha256 == sha
    assert DescentModel.from_bytes(bytes(msg.npz_bytes)).iterations == 3

    # a late joiner still gets it: transient-local durability
    late = []
    client_node.create_subscription(DescentModelMsg, "/descent_model", late.append, LATCHED_QOS)
    wait_until(lambda: late, 10.0, what="latched descent model for a late subscriber")

    assert client.change_state("deactivate") and client.get_state() == "inactive"
    assert client.change_state("cleanup") and client.get_state() == "unconfigured"
    assert node.model is None

    # reconfigure with another file: the new model is delivered on activate
    _set(node, model_file=str(other), sha256=other_sha)
    assert client.change_state("configure") and client.change_state("activate")
    wait_until(lambda: received[-1].sha256 == other_sha, 10.0, what="second model")
    assert client.change_state("active_shutdown") and client.get_state() == "finalized"
    assert node.model is None
