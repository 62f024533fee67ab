"""sensor_msgs/CompressedImage input (jpeg and png): decoding, the node's pipeline, and
face-align-bag on a bag of compressed images. No ROS graph (the live node: test_ros_bag_parity)."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")
pytest.importorskip("rosbags", reason="rosbags missing: run make setup")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from face_alignment_ros.cli import bag as bag_cli  # noqa: E402
from face_alignment_ros.common.samples import sample_frames  # noqa: E402
from face_alignment_ros.common.stand_in_models import trained_or_stand_in_files  # noqa: E402
from face_alignment_ros.core.descent_model import DescentModel  # noqa: E402
from face_alignment_ros.ros import bag_io  # noqa: E402
from face_alignment_ros.ros.image_conversion import (  # noqa: E402
    ImageConversionError,
    bgr_to_compressed_fields,
    bgr_to_image_fields,
    compressed_to_bgr,
    message_to_bgr,
)
from face_alignment_ros.ros.pipeline import FramePipeline  # noqa: E402

W, H, FACE_PX = 320, 240, 90.0
FRAMES = list(sample_frames(2, W, H, FACE_PX))


def test_png_is_exact_and_jpeg_close():
    frame = FRAMES[0]
    png = CompressedImage(**bgr_to_compressed_fields(frame, "png"))
    assert png.format == "bgr8; png compressed bgr8"
    assert np.array_equal(compressed_to_bgr(png), frame)
    jpeg = CompressedImage(**bgr_to_compressed_fields(frame, "jpeg"))
    decoded = message_to_bgr(jpeg)
    assert decoded.shape == frame.shape and np.abs(decoded.astype(int) - frame).mean() < 4.0
    gray = CompressedImage(**bgr_to_compressed_fields(frame[:, :, 1], "png"))
    assert compressed_to_bgr(gray).shape == frame.shape  # always BGR for the pipeline
    # a bare "jpeg" format (many drivers) and an empty one are decoded by content
    assert message_to_bgr(CompressedImage(format="jpeg", data=jpeg.data)).shape == frame.shape
    assert message_to_bgr(CompressedImage(format="", data=png.data)).shape == frame.shape


@pytest.mark.parametrize("fields, words", [
    (dict(format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg"), "cannot decode"),
    (dict(format="png", data=bytes(100)), "cannot decode"),
    (dict(format="jpeg", data=b""), "empty compressed image"),
    (dict(format="16UC1; compressedDepth png", data=b"\x00" * 16), "unsupported compressed image format"),
    (dict(format="h264", data=b"\x00" * 16), "unsupported compressed image format"),
])
def test_bad_payloads_raise_clear_errors(fields, words):
    with pytest.raises(ImageConversionError, match=words):
        compressed_to_bgr(CompressedImage(**fields))


@pytest.fixture(scope="module")
def pipeline_factory(tmp_path_factory):
    descent, weights, _ = trained_or_stand_in_files(tmp_path_factory.mktemp("models"))
    model = DescentModel.load(descent)

    def make():
        p = FramePipeline(dff_weights=weights)
        p.set_descent_model(model)
        return p
    return make, descent, weights


def test_pipeline_takes_compressed_images_with_their_header(pipeline_factory):
    make, _, _ = pipeline_factory
    raw, png, jpeg = make(), make(), make()
    for i, frame in enumerate(FRAMES):
        msgs = [Image(**bgr_to_image_fields(frame, "rgb8")), CompressedImage(**bgr_to_compressed_fields(frame, "png")),
                CompressedImage(**bgr_to_compressed_fields(frame, "jpeg"))]
        for m in msgs:
            m.header.frame_id, m.header.stamp.sec = "cam_optical", 100 + i
        outs = [p.process(m) for p, m in zip((raw, png, jpeg), msgs)]
        for out in outs:
            assert out.landmarks.header.frame_id == "cam_optical" and out.landmarks.header.stamp.sec == 100 + i
            assert len(out.landmarks.faces) == 1
        pts = [np.asarray(o.landmarks.faces[0].points_2d) for o in outs]
        assert np.array_equal(pts[1], pts[0])          # png is lossless: the same result
        assert np.abs(pts[2] - pts[0]).max() < 0.1 * FACE_PX  # jpeg: close


def test_pipeline_rejects_a_corrupt_payload_and_goes_on(pipeline_factory):
    make, _, _ = pipeline_factory
    p = make()
    with pytest.raises(ImageConversionError, match="cannot decode"):
        p.process(CompressedImage(format="jpeg", data=b"\xff\xd8" + bytes(50)))
    out = p.process(CompressedImage(**bgr_to_compressed_fields(FRAMES[0], "jpeg")))
    assert len(out.landmarks.faces) == 1


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_bag_of_compressed_images(tmp_path, pipeline_factory, fmt):
    _, descent, weights = pipeline_factory
    stamps = bag_io.write_sample_bag(tmp_path / "in", n_frames=2, width=W, height=H, face_px=FACE_PX,
                                     frame_id="cam_optical", compressed=fmt, focal_length_px=300.0)
    assert bag_io.topics_of(tmp_path / "in")["/camera/image_raw/compressed"] == bag_io.COMPRESSED_IMAGE_TYPE
    assert bag_io.pick_image_topic(tmp_path / "in", None) == (
        "/camera/image_raw/compressed", bag_io.COMPRESSED_IMAGE_TYPE, "/camera/camera_info")
    # the base name of a compressed stream is accepted too
    assert bag_io.pick_image_topic(tmp_path / "in", "/camera/image_raw")[0] == "/camera/image_raw/compressed"
    assert bag_cli.main([str(tmp_path / "in"), str(tmp_path / "out"), "--descent-model", str(descent),
                         "--dff-weights", str(weights), "--quiet"]) == 0
    from rosbags.highlevel import AnyReader

    with AnyReader([tmp_path / "out"], default_typestore=bag_io.typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == "/landmarks"]
        msgs = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]
    assert [t for t, _ in msgs] == stamps
    for t, msg in msgs:
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
        assert msg.header.frame_id == "cam_optical" and len(msg.faces) == 1
        # CameraInfo beside the base image topic was used: depth from its focal length
        assert 0.1 < msg.faces[0].points_3d[83] < 3.0
