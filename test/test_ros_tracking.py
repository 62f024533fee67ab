"""What the node publishes from the tracker (FramePipeline, no ROS graph): no ghost face or TF,
and the smoothing parameters reach the tracker."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy missing: run make setup")

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from face_alignment_ros.core import resources  # noqa: E402
from face_alignment_ros.core.descent_model import DescentModel  # noqa: E402
from face_alignment_ros.core.smoothing import OneEuroSettings  # noqa: E402
from face_alignment_ros.ros.image_conversion import bgr_to_image_fields  # noqa: E402
from face_alignment_ros.ros.pipeline import FramePipeline, PipelineConfig  # noqa: E402


@pytest.fixture(scope="module")
def descent():
    return DescentModel.load(resources.ASSETS_DIR / resources.DESCENT_MODEL_FILES["dff"])


def frame(image, sec=0):
    return Image(header=Header(stamp=Time(sec=sec), frame_id="camera"), **bgr_to_image_fields(image))


def test_no_ghost_face_or_tf_after_the_face_leaves(descent):
    from face_alignment_ros.common.samples import demo_image

    pipeline = FramePipeline()
    pipeline.set_descent_model(descent)
    out = pipeline.process(frame(demo_image()))
    assert len(out.landmarks.faces) == 1 and len(out.transforms) == 1
    for after in (np.full((512, 512, 3), 128, np.uint8), np.full((480, 640, 3), 128, np.uint8)):
        pipeline.process(frame(demo_image()))
        out = pipeline.process(frame(after))
        assert out.landmarks.faces == [] and out.meshes.faces == [] and out.transforms == []


def test_smoothing_parameters_reach_the_tracker(descent):
    pipeline = FramePipeline(PipelineConfig(smoothing=True, smoothing_min_cutoff=0.5, smoothing_beta=2.0))
    pipeline.set_descent_model(descent)
    assert pipeline.tracker.smoothing == OneEuroSettings(min_cutoff=0.5, beta=2.0)
    pipeline.update_config({"smoothing": False})
    assert pipeline.tracker.smoothing is None
    assert FramePipeline().config.smoothing is False, "smoothing is off unless asked for"


def test_flip_average_reaches_the_aligner_and_changes_the_landmarks(descent):
    from face_alignment_ros.common.samples import demo_image

    plain, flipped = FramePipeline(), FramePipeline(PipelineConfig(flip_average=True))
    for p in (plain, flipped):
        p.set_descent_model(descent)
    assert flipped.aligner.flip_average and not plain.aligner.flip_average, "off unless asked for"
    a = plain.process(frame(demo_image())).landmarks.faces[0]
    b = flipped.process(frame(demo_image())).landmarks.faces[0]
    moved = np.abs(np.asarray(a.points_2d) - np.asarray(b.points_2d))
    assert 0.0 < moved.mean() < 5.0  # the mirrored pass moves the points a little, not wildly
    flipped.update_config({"flip_average": False})
    assert not flipped.aligner.flip_average


def test_second_pass_reaches_the_aligner_and_is_settable(descent):
    pipeline = FramePipeline(PipelineConfig(second_pass=True))
    pipeline.set_descent_model(descent)
    assert pipeline.aligner.second_pass and not FramePipeline().config.second_pass, "off unless asked for"
    pipeline.update_config({"second_pass": False})
    assert not pipeline.aligner.second_pass
