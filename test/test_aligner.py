"""FaceAligner: input checks and result shapes (stand-in models), accuracy with shipped models."""
import numpy as np
import pytest

from face_alignment_ros.common.stand_in_models import stand_in_aligner, stand_in_descent
from face_alignment_ros.core import resources
from face_alignment_ros.core.aligner import FaceAligner, ModelNotTrainedError
from face_alignment_ros.core.morphable_model import ModelFileError


@pytest.fixture(scope="module")
def astronaut():
    from face_alignment_ros.common.samples import demo_image

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


@pytest.mark.parametrize("box, why", [((600, 30, 700, 150), "entirely outside the 512 x 512 image"),
                                      ((-200, -150, -100, -1), "entirely outside"),
                                      ((30, 600, 150, 700), "entirely outside"),
                                      ((200, 100, 202, 102), "2 x 2 px"),
                                      ((200, 100, 300, 102.5), "100 x 2.5 px")])
def test_boxes_outside_the_image_or_too_small_are_refused(plumbing, astronaut, box, why):
    with pytest.raises(ValueError, match=why):
        plumbing.align(astronaut, box)


def test_detections_no_face_can_be_aligned_from_are_dropped(astronaut):
    from face_alignment_ros.core.face_detector import Detection, FaceDetector

    class FixedDetector(FaceDetector):
        def _detect(self, image_bgr):
            return [Detection((150, 30, 250, 150), 0.9), Detection((10, 10, 15, 16), 0.8),
                    Detection((600, 600, 700, 700), 0.7)]

    aligner = stand_in_aligner("sift", detector=FixedDetector())
    assert [d.score for d in aligner.detect(astronaut)] == [0.9]
    assert len(aligner.detect_and_align(astronaut)) == 1


def test_a_box_reaching_past_the_border_is_aligned(plumbing, astronaut):
    face = plumbing.align(astronaut, (-20, 30, 100, 150))
    assert np.all(np.isfinite(face.landmarks))


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


def _face_at(model, camera, params, landmarks):
    from face_alignment_ros.core.aligner import FaceResult

    n_id = model.n_id
    return FaceResult(landmarks=np.asarray(landmarks, np.float32), visible=np.ones(68, bool),
                      camera=np.asarray(camera, np.float32), shape_params=params[:n_id],
                      expression_params=params[n_id:],
                      box=np.zeros(4, np.float32), score=1.0, confidence=1.0, crop_box=np.zeros(4, np.float32),
                      model=model)


def test_landmarks_3d_are_the_fixed_model_vertices_not_the_silhouette(morphable_model):
    from face_alignment_ros.core import camera as cam

    m = morphable_model
    params = np.random.default_rng(0).standard_normal(m.n_id + m.n_exp).astype(np.float32) * m.shape_sigma * 0.5
    camera = np.array([2.0, 0.1, np.radians(60.0), -0.05, 300.0, 250.0], np.float32)
    contour = m.contour_landmarks(cam.rotation_matrix(*camera[1:4]), params)
    face = _face_at(m, camera, params, cam.project(camera, m.vertices(params, contour)))
    fixed = m.vertices(params, m.landmarks)
    assert face.landmarks_3d.shape == (68, 3) and face.landmarks_3d.dtype == np.float32
    np.testing.assert_allclose(face.landmarks_3d[:, :2], cam.project(camera, fixed), atol=1e-3)
    np.testing.assert_allclose(face.landmarks_3d, cam.transform(camera, fixed), atol=1e-3)
    # The inner points are the same vertices in both conventions; at 60 degrees yaw the jaw of
    # the far cheek sits on the outline in ``landmarks`` but on its fixed vertex in ``landmarks_3d``.
    np.testing.assert_allclose(face.landmarks_3d[17:, :2], face.landmarks[17:], atol=1e-3)
    jaw_gap = np.linalg.norm(face.landmarks_3d[:17, :2] - face.landmarks[:17], axis=1)
    assert jaw_gap.max() > 0.05 * (face.landmarks[:, 0].max() - face.landmarks[:, 0].min())
    # Depth as in ``vertices`` (away from the camera): the face turns to the image left, so the
    # jaw's image-left end (0) is the farthest point and its right end (16) comes nearer than the nose.
    assert face.landmarks_3d[0, 2] == face.landmarks_3d[:, 2].max()
    assert face.landmarks_3d[16, 2] < face.landmarks_3d[30, 2]
    # Frontal: the jaw differs little between the conventions.
    frontal = camera.copy()
    frontal[1:4] = 0
    contour = m.contour_landmarks(np.eye(3, dtype=np.float32), params)
    face0 = _face_at(m, frontal, params, cam.project(frontal, m.vertices(params, contour)))
    assert np.linalg.norm(face0.landmarks_3d[:17, :2] - face0.landmarks[:17], axis=1).max() < jaw_gap.max() / 3


def test_landmarks_3d_follow_the_aligners_fit_and_reach_the_json(morphable_model, astronaut):
    import json

    aligner = stand_in_aligner("sift", detector="default")
    aligner.output = "model"
    face = aligner.detect_and_align(astronaut)[0]
    # output="model": landmarks are the fitted model's points, so the fixed inner ones coincide.
    np.testing.assert_allclose(face.landmarks_3d[17:, :2], face.landmarks[17:], atol=0.05)
    record = json.loads(json.dumps(face.to_dict()))
    np.testing.assert_allclose(record["landmarks_3d"], face.landmarks_3d, atol=0.01)


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


def test_crop_mismatch_measures_scale_and_centre_shift():
    from face_alignment_ros.core.aligner import crop_mismatch

    crop = np.array([100, 100, 200, 200], np.float32)
    assert crop_mismatch(crop, crop) == (0.0, 0.0)
    scale, shift = crop_mismatch([50, 50, 250, 250], crop)  # twice the side, same centre
    assert scale == pytest.approx(np.log(2.0)) and shift == pytest.approx(0.0)
    scale, shift = crop_mismatch([130, 140, 230, 240], crop)  # moved by (30, 40): half a side
    assert scale == pytest.approx(0.0, abs=1e-9) and shift == pytest.approx(0.5)


def _count_passes(aligner, monkeypatch) -> list:
    """The box kind of every alignment pass the aligner makes from now on, in order."""
    batch = aligner._align_batch
    kinds = []

    def counted(image, requests, descent):
        kinds.extend(r.box_kind for r in requests)
        return batch(image, requests, descent)

    monkeypatch.setattr(aligner, "_align_batch", counted)
    return kinds


def test_a_padded_given_box_is_aligned_again_from_the_faces_own_landmarks(astronaut, monkeypatch):
    """Another detector's convention (here a box 1.5x the landmarks', passed as a detector box
    without keypoints) frames the face wrongly; the second pass from the fit's landmark box gives
    the landmarks of a well-framed start. The detector's own box (with keypoints) and landmark
    boxes are left to their priors."""
    import face_alignment_ros.core.aligner as aligner_module
    from face_alignment_ros.core.aligner import AlignRequest
    from face_alignment_ros.core.face_crop import landmark_box

    aligner = _shipped("dff")
    reference = aligner.detect_and_align(astronaut)[0]
    x0, y0, x1, y1 = landmark_box(reference.landmarks)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    padded = (cx - 0.75 * w, cy - 0.75 * h, cx + 0.75 * w, cy + 0.75 * h)
    kinds = _count_passes(aligner, monkeypatch)
    fixed = aligner.align(astronaut, padded)
    assert kinds == ["detector", "landmarks"]
    np.testing.assert_array_equal(fixed.box, np.asarray(padded, np.float32))  # the given box stays the face's box
    monkeypatch.setattr(aligner_module, "REFRAME_CROP_MISMATCH", (np.inf, np.inf))
    kinds.clear()
    once = aligner.align(astronaut, padded)
    assert kinds == ["detector"]
    error = lambda face: float(np.linalg.norm(face.landmarks - reference.landmarks, axis=1).mean())  # noqa: E731
    inter_ocular = float(np.linalg.norm(reference.landmarks[36] - reference.landmarks[45]))
    assert error(fixed) < 0.02 * inter_ocular < error(once)  # 0.9% against 3.5% here

    monkeypatch.setattr(aligner_module, "REFRAME_CROP_MISMATCH", (0.0, 0.0))  # any mismatch at all
    for request in (AlignRequest(padded, "landmarks_3d"), AlignRequest(padded, "landmarks"),
                    AlignRequest(reference.box, "detector", keypoints=aligner.detect(astronaut)[0].keypoints)):
        kinds.clear()
        aligner.align_many(astronaut, [request])
        assert kinds == [request.box_kind]


@pytest.mark.parametrize("descriptor", ["dff", "sift"])
def test_second_pass_aligns_every_detected_face_again_from_its_own_landmark_box(descriptor, astronaut, monkeypatch):
    """Off by default; on, a frontal face the detector found is aligned a second time from its
    landmark box (also where the turned-face rule, ``reframe``, is off), and keeps the detector's
    box; a given landmark box is not aligned again."""
    from face_alignment_ros.core.face_crop import landmark_box

    aligner = _shipped(descriptor)
    assert not aligner.second_pass
    kinds = _count_passes(aligner, monkeypatch)
    once = aligner.detect_and_align(astronaut)[0]
    assert kinds == ["detector"]
    aligner.second_pass = True
    kinds.clear()
    twice = aligner.detect_and_align(astronaut)[0]
    assert kinds == ["detector", "landmarks"]
    np.testing.assert_array_equal(twice.box, once.box)
    assert not np.array_equal(twice.landmarks, once.landmarks)
    kinds.clear()
    aligner.align(astronaut, landmark_box(once.landmarks), box_kind="landmarks")
    assert kinds == ["landmarks"]
