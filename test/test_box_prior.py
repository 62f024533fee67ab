"""Box priors: the constant offsets, the keypoint term (features, fallbacks, mirror symmetry) and
its ridge fit; keypoints reach the prior from a detection through the aligner."""
import numpy as np
import pytest

from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_crop import BoxPrior, keypoint_features
from face_alignment_ros.core.face_detector import BLAZEFACE_KEYPOINT_MIRROR
from face_alignment_ros.training.keypoint_box_prior import fit_ridge

BOX = np.array([100.0, 50.0, 200.0, 170.0])
KEYPOINTS = np.array([[130, 90], [170, 92], [160, 120], [152, 145], [105, 100], [195, 101]], float)


def test_constant_prior_moves_and_scales_by_the_box_side():
    prior = BoxPrior(dx=0.1, dy=-0.05, log_scale=np.log(2.0))
    side = np.sqrt(100 * 120)
    cx, cy = 150 + 0.1 * side, 110 - 0.05 * side
    np.testing.assert_allclose(prior.crop_box(BOX), [cx - side, cy - side, cx + side, cy + side], rtol=1e-6)
    np.testing.assert_array_equal(prior.crop_box(BOX, KEYPOINTS), prior.crop_box(BOX))  # no keypoint term


def test_features_are_box_relative_and_mirror_symmetric():
    f = keypoint_features(BOX, KEYPOINTS)
    side = np.sqrt(100 * 120)
    assert f.shape == (18,)
    assert f[2] == pytest.approx((160 - 150) / side) and f[8] == pytest.approx((120 - 110) / side)
    np.testing.assert_allclose(f[12:], np.abs(f[:6]))
    # the mirror image: x offsets negate and left/right swap; y and magnitudes swap only
    width = 400
    mirrored = KEYPOINTS[list(BLAZEFACE_KEYPOINT_MIRROR)].copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    g = keypoint_features([width - 1 - BOX[2], BOX[1], width - 1 - BOX[0], BOX[3]], mirrored)
    order = list(BLAZEFACE_KEYPOINT_MIRROR)
    np.testing.assert_allclose(g[:6], -f[:6][order], atol=1e-12)
    np.testing.assert_allclose(g[6:12], f[6:12][order], atol=1e-12)


def test_keypoint_term_predicts_the_offsets_and_falls_back_without_keypoints():
    coef = np.zeros((3, 18))
    coef[0, 2] = 1.0    # dx follows the nose's x offset
    coef[2, 14] = -2.0  # the crop shrinks with the nose's distance from the centre
    prior = BoxPrior(dx=0.0, dy=-0.04, log_scale=0.3, keypoint_intercept=(0.0, -0.04, 0.3),
                     keypoint_coef=tuple(map(tuple, coef)))
    f = keypoint_features(BOX, KEYPOINTS)
    np.testing.assert_allclose(prior.offsets(BOX, KEYPOINTS), [f[2], -0.04, 0.3 - 2 * f[14]])
    for missing in (None, KEYPOINTS[:5], np.full((6, 2), np.nan)):  # none, another detector's, NaN
        np.testing.assert_allclose(prior.offsets(BOX, missing), [0.0, -0.04, 0.3])
    moved = prior.crop_box(BOX, KEYPOINTS)
    assert 0.5 * (moved[0] + moved[2]) > 0.5 * (prior.crop_box(BOX)[0] + prior.crop_box(BOX)[2])


def test_ridge_fit_recovers_a_linear_map_and_its_intercept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 18))
    coef = rng.normal(size=(3, 18)) * 0.1
    y = x @ coef.T + [0.01, -0.05, 0.3]
    intercept, got = fit_ridge(x, y, np.ones(500), 1e-9)
    np.testing.assert_allclose(got, coef, atol=1e-6)
    np.testing.assert_allclose(intercept, [0.01, -0.05, 0.3], atol=1e-6)
    # a heavy lambda leaves the weighted mean
    weights = np.where(np.arange(500) < 100, 4.0, 1.0)
    intercept, got = fit_ridge(x, y, weights, 1e9)
    np.testing.assert_allclose(intercept, weights @ y / weights.sum() - got @ (weights @ x / weights.sum()), atol=1e-9)
    assert np.abs(got).max() < 1e-6


def test_box_offsets_invert_the_prior():
    rng = np.random.default_rng(1)
    boxes = np.array([[10, 20, 110, 140], [300, 40, 380, 120]], float)
    cameras = np.zeros((2, 6))
    cameras[:, 0] = rng.uniform(0.3, 1.0, 2)
    cameras[:, 4:] = rng.uniform(50, 300, (2, 2))
    for box, camera, (dx, dy, ls) in zip(boxes, cameras, face_crop.box_offsets(boxes, cameras)):
        np.testing.assert_allclose(BoxPrior(dx, dy, ls).crop_box(box), face_crop.canonical_crop_box(camera), atol=1e-3)


@pytest.fixture(scope="module")
def keypoint_aligner():
    """A stand-in aligner whose detector gives keypoints and whose detector prior reads them."""
    from face_alignment_ros.common.stand_in_models import stand_in_aligner
    from face_alignment_ros.core.face_detector import Detection, FaceDetector

    class FixedDetector(FaceDetector):
        def _detect(self, image_bgr):
            return [Detection((150.0, 30.0, 250.0, 150.0), 0.9, tuple(map(tuple, KEYPOINTS + [50, -20])))]

    aligner = stand_in_aligner("sift", detector=FixedDetector())
    coef = np.zeros((3, 18))
    coef[0, 2] = 1.0
    aligner.descent.box_priors["detector"] = BoxPrior(keypoint_intercept=(0.05, 0.0, 0.4),
                                                      keypoint_coef=tuple(map(tuple, coef)))
    return aligner


def test_detections_hand_their_keypoints_to_the_prior(keypoint_aligner):
    from face_alignment_ros.common.samples import demo_image

    prior = keypoint_aligner.descent.box_priors["detector"]
    face = keypoint_aligner.detect_and_align(demo_image())[0]
    detection = keypoint_aligner.detect(demo_image())[0]
    np.testing.assert_allclose(face.crop_box, prior.crop_box(detection.box, detection.keypoints), atol=1e-4)
    assert not np.allclose(face.crop_box, prior.crop_box(detection.box), atol=1e-2)
    again = keypoint_aligner.align(demo_image(), detection.box, keypoints=detection.keypoints)
    np.testing.assert_array_equal(again.crop_box, face.crop_box)


def test_the_tracker_starts_new_faces_from_their_keypoints(keypoint_aligner):
    from face_alignment_ros.common.samples import demo_image
    from face_alignment_ros.core.tracker import FaceTracker

    detection = keypoint_aligner.detect(demo_image())[0]
    prior = keypoint_aligner.descent.box_priors["detector"]
    first = FaceTracker(keypoint_aligner).process(demo_image())[0]
    assert first.box_kind == "detector" and first.keypoints == detection.keypoints
    np.testing.assert_allclose(first.face.crop_box, prior.crop_box(detection.box, detection.keypoints), atol=1e-4)


def test_stage_box_prior_terms_reach_the_descent_stage_prior(tmp_path):
    import json

    from face_alignment_ros.training.photo_records import keypoint_terms, with_keypoint_terms

    assert keypoint_terms(tmp_path) is None  # stage box-prior has not run: the constant prior
    (tmp_path / "box-prior").mkdir()
    coef = np.arange(54, dtype=float).reshape(3, 18) / 100
    (tmp_path / "box-prior" / "detector_prior.json").write_text(
        json.dumps({"keypoint_intercept": [0.0, -0.1, 0.5], "keypoint_coef": coef.tolist(), "lambda": 1e-6}))
    prior = with_keypoint_terms(BoxPrior(0.01, 0.02, 0.3, 0.05, 0.03, 0.05), keypoint_terms(tmp_path))
    assert (prior.dx, prior.std_dx) == (0.01, 0.05)  # the constant part stays, for detections without keypoints
    expected = [0.0, -0.1, 0.5] + coef @ keypoint_features(BOX, KEYPOINTS)
    np.testing.assert_allclose(prior.offsets(BOX, KEYPOINTS), expected)


def test_each_source_weighs_as_a_whole():
    from face_alignment_ros.training.keypoint_box_prior import OffsetRows, source_weights

    source = np.array([0, 0, 1, 1, 1, 1, 2])
    rows = OffsetRows(np.zeros((7, 18)), np.zeros((7, 3)), source, np.zeros(7, int), np.full(7, "train"))
    w = source_weights(rows, 3.0)
    assert [w[source == s].sum() for s in range(3)] == pytest.approx([3.0, 1.0, 1.0])


def test_a_turned_face_is_aligned_again_from_its_own_landmark_box(keypoint_aligner, monkeypatch):
    from dataclasses import replace

    from face_alignment_ros.common.samples import demo_image
    from face_alignment_ros.core import camera as cam
    from face_alignment_ros.core.aligner import REFRAME_YAW_DEG, AlignRequest

    batch = keypoint_aligner._align_batch
    calls, faces = [], []

    def fitted_at(yaw_deg):
        """The real batch, its fits reported turned by ``yaw_deg``."""
        def run(image, requests, descent):
            calls.extend((r.box_kind, np.asarray(r.box, np.float32)) for r in requests)
            fits = batch(image, requests, descent)
            out = [replace(f, camera=np.where(np.arange(6) == cam.YAW, np.radians(yaw_deg), f.camera)) for f in fits]
            faces.extend(out)
            return out
        return run

    detection = keypoint_aligner.detect(demo_image())[0]
    limit = REFRAME_YAW_DEG["detector"]
    for yaw, reframe, expected in ((limit + 5, True, ["detector", "landmarks"]),
                                   (limit - 5, True, ["detector"]),
                                   (limit + 5, False, ["detector"])):
        calls.clear()
        faces.clear()
        monkeypatch.setattr(keypoint_aligner, "_align_batch", fitted_at(yaw))
        monkeypatch.setattr(keypoint_aligner, "reframe", reframe)
        face = keypoint_aligner.align_many(demo_image(), [AlignRequest.from_detection(detection)])[0]
        assert [kind for kind, _ in calls] == expected
        np.testing.assert_array_equal(face.box, np.asarray(detection.box, np.float32))  # the detection stays its box
        if len(expected) == 2:  # the second start is the first fit's landmark box, its result returned
            np.testing.assert_array_equal(calls[1][1], face_crop.landmark_box(faces[0].landmarks))
            np.testing.assert_array_equal(face.landmarks, faces[1].landmarks)


def test_a_3d_landmark_box_starts_through_the_landmark_prior_and_reframes_beyond_its_own_limit(keypoint_aligner,
                                                                                                monkeypatch):
    """AFLW2000-3D's given box: framed as a 300-W landmark box, and a fit turned beyond
    ``REFRAME_YAW_DEG["landmarks_3d"]`` starts again from its own landmark box."""
    from dataclasses import replace

    from face_alignment_ros.common.samples import demo_image
    from face_alignment_ros.core import camera as cam
    from face_alignment_ros.core.aligner import REFRAME_YAW_DEG

    box = np.array([180, 60, 260, 160], np.float32)
    np.testing.assert_array_equal(keypoint_aligner.crop_box(box, "landmarks_3d"),
                                  keypoint_aligner.crop_box(box, "landmarks"))
    batch = keypoint_aligner._align_batch
    kinds = []

    def turned(yaw_deg):
        def run(image, requests, descent):
            kinds.extend(r.box_kind for r in requests)
            return [replace(f, camera=np.where(np.arange(6) == cam.YAW, np.radians(yaw_deg), f.camera))
                    for f in batch(image, requests, descent)]
        return run

    limit = REFRAME_YAW_DEG["landmarks_3d"]
    monkeypatch.setattr(keypoint_aligner, "reframe", True)
    for yaw, expected in ((limit + 5, ["landmarks_3d", "landmarks"]), (limit - 5, ["landmarks_3d"])):
        kinds.clear()
        monkeypatch.setattr(keypoint_aligner, "_align_batch", turned(yaw))
        keypoint_aligner.align(demo_image(), box, "landmarks_3d")
        assert kinds == expected
