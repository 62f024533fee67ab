"""FaceAligner: input checks and result shapes (stand-in models), accuracy with shipped models."""
import numpy as np
import pytest

from face_alignment_ros.core import resources
from face_alignment_ros.core.aligner import FaceAligner, ModelNotTrainedError
from face_alignment_ros.core.morphable_model import ModelFileError
from face_alignment_ros.evaluation.stand_in_models import stand_in_aligner, stand_in_descent


@pytest.fixture(scope="module")
def astronaut():
    from face_alignment_ros.cli.align import demo_image

    return demo_image()


@pytest.fixture(scope="module")
def plumbing():
    return stand_in_aligner("sift", detector="default")


def test_bad_images_get_clear_errors(plumbing):
    for bad, why in ((np.zeros((0, 10, 3), np.uint8), "empty"), (np.zeros((10, 10, 3), np.float32), "uint8"),
                     (np.zeros((10, 10, 5), np.uint8), "shape")):
        with pytest.raises(ValueError, match=why):
            plumbing.align(bad, (1, 1, 8, 8))


def test_bad_boxes_get_clear_errors(plumbing, astronaut):
    for box in ((10, 10, 5, 50), (0, 0, np.nan, 5), (1, 2, 3)):
        with pytest.raises(ValueError, match="box"):
            plumbing.align(astronaut, box)
    with pytest.raises(ValueError, match="box_kind"):
        plumbing.align(astronaut, (150, 30, 250, 150), box_kind="eyes")


def test_result_shapes_and_mesh(plumbing, astronaut):
    faces = plumbing.detect_and_align(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
    assert f.visible.shape == (68,) and f.visible.dtype == bool
    assert f.camera.shape == (6,) and f.rotation.shape == (3, 3)
    assert f.vertices.shape == (len(plumbing.model.decimated), 3) and f.triangles.max() < len(f.vertices)
    assert f.shape_params.shape == (40,) and f.expression_params.shape == (10,)
    x0, y0, x1, y1 = f.box
    inside = (f.landmarks[:, 0] > x0 - 30) & (f.landmarks[:, 0] < x1 + 30) & (f.landmarks[:, 1] > y0 - 30) & \
             (f.landmarks[:, 1] < y1 + 30)
    assert inside.all(), "even the mean face at the box must land on the face"
    assert set(f.to_dict()) >= {"landmarks", "visible", "camera", "rotation", "confidence"}


def test_descent_model_of_another_descriptor_is_refused(plumbing):
    with pytest.raises(ModelFileError, match="sift"):
        plumbing.set_descent_model(stand_in_descent("dff"))


def test_from_default_names_the_training_command_when_models_are_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "ASSETS_DIR", tmp_path)
    with pytest.raises(ModelNotTrainedError, match="face-align-train"):
        FaceAligner.from_default()


def _shipped(descriptor):
    try:
        return FaceAligner.from_default(descriptor=descriptor)
    except ModelNotTrainedError:
        pytest.fail("the trained models must ship in face_alignment_ros/assets (face-align-train export)")


@pytest.mark.parametrize("descriptor", ["dff", "sift"])
def test_shipped_model_aligns_the_demo_photo(descriptor, astronaut):
    aligner = _shipped(descriptor)
    faces = aligner.detect_and_align(astronaut)
    assert len(faces) == 1
    f = faces[0]
    # The astronaut's face (read off the photo): eye centres near (203, 101) and (247, 102), chin near (225, 178).
    left_eye, right_eye = f.landmarks[36:42].mean(0), f.landmarks[42:48].mean(0)
    assert np.linalg.norm(left_eye - (203, 101)) < 8 and np.linalg.norm(right_eye - (247, 102)) < 8
    assert np.linalg.norm(f.landmarks[8] - (225, 178)) < 15
    assert abs(np.degrees(f.camera[2])) < 30
    assert f.visible[17:].mean() > 0.9
    # Each iteration should move the landmarks less than the one before: the cascade converges.
    steps = [np.abs(b - a).mean() for a, b in zip(f.landmarks_per_iteration, f.landmarks_per_iteration[1:])]
    assert all(s2 <= s1 + 0.5 for s1, s2 in zip(steps, steps[1:]))


def test_visibility_is_that_of_the_fitted_landmarks(plumbing, astronaut):
    f = plumbing.detect_and_align(astronaut)[0]
    m = plumbing.model
    # The depth test does not depend on the camera's translation and scale (crop or image).
    want = plumbing.cascade.visibility.visible(f.camera, f.params, m.vertices(f.params, m.landmarks))
    np.testing.assert_array_equal(f.visible, want)


def test_mesh_is_the_decimated_shape_under_the_camera(plumbing, astronaut):
    from face_alignment_ros.core import camera as cam

    f = plumbing.detect_and_align(astronaut)[0]
    m = plumbing.model
    np.testing.assert_allclose(f.vertices_mm(), m.vertices(f.params, m.decimated), atol=1e-3)
    np.testing.assert_allclose(f.vertices, cam.transform(f.camera, m.vertices(f.params, m.decimated)), atol=1e-2)
