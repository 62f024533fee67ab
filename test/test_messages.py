"""The generated messages import from the venv and survive an rclpy serialization round trip.

Builds nothing: scripts/setup_env.sh builds msg/ into .venv.
"""
import importlib.util
import json
import os
import sys

import pytest

serialization = pytest.importorskip(
    "rclpy.serialization",
    reason="rclpy is not importable: the ROS 2 Jazzy wheels are missing (run make setup)",
)

import face_alignment_ros  # noqa: E402
from face_alignment_ros.msg import (  # noqa: E402
    DescentModel,
    FaceMesh,
    FaceMeshArray,
    Landmarks,
    LandmarksArray,
    MeshTopology,
)
from geometry_msgs.msg import Point, Pose, Quaternion  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

N = Landmarks.NUM_LANDMARKS


def _header():
    h = Header(frame_id="camera_optical")
    h.stamp.sec, h.stamp.nanosec = 1700000000, 123456789
    return h


def _landmarks(face_id):
    return Landmarks(
        header=_header(),
        face_id=face_id,
        points_2d=[0.5 * i for i in range(2 * N)],  # exact in float32
        visible=[i % 3 != 0 for i in range(N)],
        score=0.75,
        confidence=0.5,
        points_3d=[0.001 * 2**-i for i in range(3 * N)],
    )


def _mesh(face_id):
    return FaceMesh(
        header=_header(),
        face_id=face_id,
        vertices=[0.25, -0.5, 0.625] * 10,
        topology_id=7,
        shape_params=[0.5] * 40,
        expression_params=[-0.25] * 10,
        head_pose=Pose(position=Point(x=0.1, y=-0.2, z=0.8),
                       orientation=Quaternion(x=0.0, y=0.0, z=0.6, w=0.8)),
    )


MESSAGES = [
    _landmarks(3),
    LandmarksArray(header=_header(), faces=[_landmarks(1), _landmarks(2)]),
    _mesh(3),
    FaceMeshArray(header=_header(), faces=[_mesh(1), _mesh(2)]),
    MeshTopology(topology_id=7, vertex_count=10, triangles=[0, 1, 2, 2, 1, 3]),
    DescentModel(metadata_json='{"schema": 1}', npz_bytes=bytes(range(256)) * 4,
                 sha256="0" * 64),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = serialization.serialize_message(msg)
    assert isinstance(data, bytes) and len(data) > 0
    back = serialization.deserialize_message(data, type(msg))
    assert back == msg


def test_landmark_count_matches_the_core():
    # the message's array sizes follow the core's landmark set; a change on one side breaks this
    from face_alignment_ros.core.morphable_model import N_LANDMARKS

    assert N == N_LANDMARKS


def test_messages_and_sources_are_one_package():
    # Generated modules and sources may sit in different folders (venv: site-packages and the
    # editable repo); our __init__.py must be the one that ran, not rosidl's empty one.
    import face_alignment_ros.msg

    assert face_alignment_ros.__file__ is not None
    assert "FaceAligner" in getattr(face_alignment_ros, "__all__", ())
    assert importlib.util.find_spec("face_alignment_ros.core") is not None
    assert face_alignment_ros.msg.Landmarks is Landmarks


def test_tf_message_round_trip():
    tf2_msgs = pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not importable")
    from geometry_msgs.msg import TransformStamped

    t = TransformStamped(header=_header(), child_frame_id="face_3")
    t.transform.translation.z = 0.8
    t.transform.rotation.w = 1.0
    msg = tf2_msgs.TFMessage(transforms=[t])
    data = serialization.serialize_message(msg)
    assert serialization.deserialize_message(data, tf2_msgs.TFMessage) == msg


def test_tf_message_type_hash_is_official():
    # Wire compatibility with a real /tf: same type hash as Jazzy's tf2_msgs/msg/TFMessage.
    pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is not importable")
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]
    paths = [os.path.join(p, "share/tf2_msgs/msg/TFMessage.json") for p in prefixes if p]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        pytest.skip("no tf2_msgs type description found")
    with open(path) as f:
        hashes = json.load(f)["type_hashes"]
    assert hashes[0]["type_name"] == "tf2_msgs/msg/TFMessage"
    assert hashes[0]["hash_string"] == (
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087")
