"""Image conversion (no cv_bridge) and the metric head pose of core.head_frame: no ROS graph."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from sensor_msgs.msg import Image  # noqa: E402

from face_alignment_ros.core.head_frame import HEAD_FROM_GAZE, Intrinsics, metric_pose, quaternion_xyzw  # noqa: E402
from face_alignment_ros.ros.image_conversion import (  # noqa: E402
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    bgr_to_image_fields,
    image_to_bgr,
)

RNG = np.random.default_rng(0)
BGR = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_round_trip_every_encoding(encoding):
    msg = Image(**bgr_to_image_fields(BGR if encoding != "mono8" else BGR[:, :, 0], encoding))
    back = image_to_bgr(msg)
    assert np.array_equal(back, BGR if encoding != "mono8" else BGR[:, :, 0])


@pytest.mark.parametrize("encoding, order", [("rgb8", [2, 1, 0]), ("rgba8", [2, 1, 0, 3]), ("bgra8", [0, 1, 2, 3])])
def test_channel_order_and_padded_step(encoding, order):
    """Rows with padding after the pixels (step > width * channels), reordered to BGR."""
    pixels = np.concatenate([BGR, RNG.integers(0, 256, (5, 7, 1), dtype=np.uint8)], axis=2)[:, :, order]
    row = 7 * len(order)
    padded = np.zeros((5, row + 5), np.uint8)
    padded[:, :row] = pixels.reshape(5, row)
    msg = Image(height=5, width=7, encoding=encoding, step=row + 5, data=padded.tobytes())
    out = image_to_bgr(msg)
    assert out.shape == BGR.shape and out.flags.c_contiguous and np.array_equal(out, BGR)


@pytest.mark.parametrize("fields, words", [
    (dict(encoding="16UC1", step=14), "unsupported image encoding"),
    (dict(height=0, data=b""), "empty image"),
    (dict(step=20), "step 20 is smaller"),
    (dict(data=bytes(5 * 21 - 1)), "truncated"),
    (dict(data=bytes(5 * 21 + 1)), "too long"),
])
def test_bad_images_raise_clear_errors(fields, words):
    base = dict(height=5, width=7, encoding="bgr8", step=21, data=bytes(5 * 21))
    base.update(fields)
    with pytest.raises(ImageConversionError, match=words):
        image_to_bgr(Image(**base))


class _Face:
    """Just what metric_pose reads (a FaceResult from a frontal fit)."""
    def __init__(self, model, s, tx, ty):
        self.camera = np.array([s, 0, 0, 0, tx, ty], np.float32)
        self.rotation = np.eye(3, dtype=np.float32)
        self.model = model
        self.params = np.zeros(model.n_id + model.n_exp, np.float32)


def test_metric_pose_depth_and_back_projection(morphable_model):
    intr = Intrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5)
    face = _Face(morphable_model, s=0.5, tx=419.5, ty=239.5)  # 0.5 px/mm -> 1 m deep
    pose = metric_pose(face, intr)
    assert pose.translation_mm == pytest.approx([200.0, 0.0, 1000.0])
    # the model origin projects back to its image point through the pinhole
    x, y, z = pose.translation_mm
    assert (intr.fx * x / z + intr.cx, intr.fy * y / z + intr.cy) == pytest.approx((419.5, 239.5))
    # frontal face: head x (forward) points at the camera, z up (-y optical)
    assert pose.head_rotation[:, 0] == pytest.approx([0, 0, -1])
    assert pose.head_rotation[:, 2] == pytest.approx([0, -1, 0])
    assert 0.8 < pose.head_position_m[2] < 1.2
    q = quaternion_xyzw(pose.head_rotation)
    assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
    assert np.linalg.det(HEAD_FROM_GAZE) == pytest.approx(1.0)


def test_assumed_intrinsics():
    intr = Intrinsics.assumed(640, 480, 0.0, 90.0)
    assert intr.fx == pytest.approx(320.0) and (intr.cx, intr.cy) == (319.5, 239.5)
    assert Intrinsics.assumed(640, 480, 700.0).fx == 700.0
    assert not Intrinsics.from_k([0.0] * 9).is_valid()


@pytest.mark.parametrize("fx, fy, cx, cy", [
    (1e300, 1e300, 319.5, 239.5), (1e-300, 1e-300, 319.5, 239.5), (-500.0, 500.0, 319.5, 239.5),
    (0.0, 0.0, 319.5, 239.5), (float("nan"), 500.0, 319.5, 239.5), (500.0, 500.0, float("inf"), 239.5),
    (1e5, 1e5, 319.5, 239.5),      # 0.37 degree field of view
    (500.0, 500.0, 1e6, 239.5),    # principal point far outside the image
])
def test_absurd_camera_info_falls_back_to_assumed_intrinsics(fx, fy, cx, cy):
    from sensor_msgs.msg import CameraInfo

    from face_alignment_ros.ros.pipeline import FramePipeline, PipelineConfig

    info = CameraInfo(width=640, height=480, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    pipeline = FramePipeline(PipelineConfig(horizontal_fov_deg=60.0))
    assert pipeline.intrinsics(640, 480, info) == Intrinsics.assumed(640, 480, 0.0, 60.0)
    assert pipeline.camera_intrinsics(640, 480, info) is None
    assert not Intrinsics(fx, fy, cx, cy).is_valid(640, 480)


def test_plausible_camera_info_is_used():
    assert Intrinsics(500.0, 500.0, 319.5, 239.5).is_valid(640, 480)
    assert Intrinsics(20000.0, 20000.0, 900.0, 239.5).is_valid(640, 480)  # long lens, cropped image
    assert Intrinsics(170.0, 170.0, 319.5, 239.5).is_valid(640, 480)      # fisheye-wide


def test_camera_info_is_checked_once_per_k_and_image_size(monkeypatch):
    """A camera sends the same CameraInfo with every frame: its K is checked when it first
    comes (or when K or the image size change), not in every frame."""
    from sensor_msgs.msg import CameraInfo

    from face_alignment_ros.ros.pipeline import FramePipeline, PipelineConfig

    checks = []
    is_valid = Intrinsics.is_valid
    monkeypatch.setattr(Intrinsics, "is_valid", lambda self, *a: checks.append(a) or is_valid(self, *a))
    pipeline = FramePipeline(PipelineConfig())
    k = [500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0]
    for _ in range(5):  # a new message each frame, as it comes off the wire
        assert pipeline.intrinsics(640, 480, CameraInfo(k=k)) == Intrinsics(500.0, 500.0, 319.5, 239.5)
    assert checks == [(640, 480)]
    assert pipeline.camera_intrinsics(64, 48, CameraInfo(k=k)) is None  # principal point far outside
    k[0] = k[4] = 1e-300
    assert pipeline.camera_intrinsics(640, 480, CameraInfo(k=k)) is None
    assert pipeline.intrinsics(640, 480, CameraInfo(k=k)) == Intrinsics.assumed(640, 480, 0.0, 60.0)
    assert checks == [(640, 480), (64, 48), (640, 480)]
