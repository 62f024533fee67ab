"""PoseRefiner (core/pose_refinement.py): joint camera and shape refit after the cascade."""
from __future__ import annotations

import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.pose_refinement import PoseRefiner


def _face(model, yaw_deg, seed=0):
    rng = np.random.default_rng(seed)
    params = (rng.standard_normal(model.n_id + model.n_exp) * model.shape_sigma * 0.5).astype(np.float32)
    camera = np.array([0.6, np.radians(8.0), np.radians(yaw_deg), np.radians(-5.0), 64.0, 66.0], np.float32)
    ids = model.contour_landmarks(cam.rotation_matrix(*camera[1:4]), params)
    return camera, params, cam.project(camera, model.vertices(params, ids))


@pytest.mark.parametrize("yaw", [-70.0, -20.0, 45.0])
def test_landmark_rows_are_the_contour_landmarks(morphable_model, yaw):
    m = morphable_model
    camera, params, _ = _face(m, yaw)
    rot = cam.rotation_matrix(*camera[1:4])
    mean, basis = PoseRefiner(m).landmark_rows(rot, params)
    np.testing.assert_allclose(mean + basis @ params, m.vertices(params, m.contour_landmarks(rot, params)), atol=1e-3)


@pytest.mark.parametrize("yaw", [-75.0, -40.0, 10.0, 60.0])
def test_refinement_recovers_a_shrunk_yaw(morphable_model, yaw):
    """The cascade's failure mode: targets right, camera turned towards frontal by a third."""
    m = morphable_model
    camera, params, targets = _face(m, yaw, seed=1)
    shrunk = camera.copy()
    shrunk[cam.YAW] *= 0.67
    refined, refined_params = PoseRefiner(m, iterations=3).refine(targets, shrunk, np.zeros_like(params), None, 10.0)
    truth = cam.rotation_matrix(*camera[1:4]).astype(np.float64)
    before = np.degrees(abs(shrunk[cam.YAW] - camera[cam.YAW]))
    after = np.degrees(np.arccos(np.clip((np.trace(truth.T @ cam.rotation_matrix(*refined[1:4])) - 1) / 2, -1, 1)))
    assert after < 2.0 and (before < 4.0 or after < before / 4)
    assert refined[cam.S] == pytest.approx(camera[cam.S], rel=0.03)
    residual = np.linalg.norm(cam.project(refined, m.vertices(refined_params, m.contour_landmarks(
        cam.rotation_matrix(*refined[1:4]), refined_params))) - targets, axis=1).mean()
    assert residual < 0.5  # pixels, on a face about 60 px wide


def test_hidden_points_weigh_less(morphable_model):
    m = morphable_model
    camera, params, targets = _face(m, 50.0, seed=2)
    visible = np.ones(68, bool)
    visible[[36, 37, 38, 39, 40, 41]] = False  # the far eye
    bad = targets.copy()
    bad[36:42, 0] -= 8.0                         # its guessed targets are off
    truth = camera[cam.YAW]
    full = PoseRefiner(m, 3, hidden_weight=1.0).refine(bad, camera, params, visible, 10.0)[0]
    light = PoseRefiner(m, 3, hidden_weight=0.1).refine(bad, camera, params, visible, 10.0)[0]
    assert abs(light[cam.YAW] - truth) < abs(full[cam.YAW] - truth)
    # jaw points are on the silhouette: a hidden flag there must not lower their weight
    only_jaw_hidden = np.ones(68, bool)
    only_jaw_hidden[:17] = False
    a = PoseRefiner(m, 2, hidden_weight=0.1).refine(bad, camera, params, only_jaw_hidden, 10.0)[0]
    b = PoseRefiner(m, 2, hidden_weight=0.1).refine(bad, camera, params, None, 10.0)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_degenerate_targets_keep_the_cascade_answer(morphable_model):
    m = morphable_model
    camera, params, _ = _face(m, 0.0)
    refined, refined_params = PoseRefiner(m).refine(np.full((68, 2), 30.0, np.float32), camera, params, None, 10.0)
    assert np.all(np.isfinite(refined)) and np.all(np.isfinite(refined_params))
    with pytest.raises(ValueError):
        PoseRefiner(m, iterations=0)


def test_aligner_switch(morphable_model):
    from face_alignment_ros.cli.align import demo_image
    from face_alignment_ros.evaluation.stand_in_models import stand_in_aligner

    image = demo_image()
    aligner = stand_in_aligner("sift", detector=None)
    assert aligner.pose_refiner is None  # off by default for the SIFT ablation
    aligner.pose_refiner = PoseRefiner(aligner.model)
    box = (170, 60, 280, 190)
    a = aligner.align(image, box)
    aligner.pose_refiner = None
    b = aligner.align(image, box)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)  # the regressed targets are the output
    assert a.confidence == b.confidence
    assert not np.allclose(a.camera, b.camera)
    # refined: the model's 68 points fit the targets at least as well as the cascade's
    def residual(f):
        return np.linalg.norm(f.landmarks[17:] - f.landmarks_3d[17:, :2], axis=1).mean()
    assert residual(a) <= residual(b) + 1e-3


def test_refinement_is_on_by_default_for_the_dff():
    from face_alignment_ros.evaluation.stand_in_models import stand_in_aligner

    assert stand_in_aligner("dff", detector=None).pose_refiner is not None
