"""One Euro smoothing of a face's landmarks and pose (core.smoothing)."""
import math

import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.aligner import FaceResult
from face_alignment_ros.core.smoothing import FaceSmoother, OneEuroSettings, smoothing_factor

RATE_HZ = 30.0


def face(model, roll_deg=0.0, shift=(0.0, 0.0), landmark_noise=None, yaw_deg=10.0):
    """A face (mean shape) under a camera: 2 px/mm, at (300, 200) + shift."""
    camera = np.array([2.0, math.radians(5.0), math.radians(yaw_deg), math.radians(roll_deg),
                       300.0 + shift[0], 200.0 + shift[1]], np.float32)
    params = np.zeros(model.n_id + model.n_exp, np.float32)
    landmarks = cam.project(camera, model.vertices(params, model.landmarks)).astype(np.float32)
    if landmark_noise is not None:
        landmarks = landmarks + landmark_noise.astype(np.float32)
    return FaceResult(landmarks=landmarks, visible=np.ones(68, bool), camera=camera,
                      shape_params=params[:model.n_id], expression_params=params[model.n_id:],
                      box=np.array([0, 0, 1, 1], np.float32), score=1.0, confidence=1.0,
                      crop_box=np.array([0, 0, 1, 1], np.float32), model=model)


def angle_deg(a, b):
    return math.degrees(math.acos(np.clip((np.trace(np.asarray(a, np.float64).T @ b) - 1) / 2, -1, 1)))


def test_smoothing_factor_is_the_exponential_low_pass_of_the_paper():
    dt, fc = 1 / 30, 1.0
    assert smoothing_factor(dt, fc) == pytest.approx(1 / (1 + (1 / (2 * math.pi * fc)) / dt))
    assert smoothing_factor(dt, 1e6) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kwargs", [{"min_cutoff": 0.0}, {"min_cutoff": math.nan}, {"beta": -1.0},
                                    {"d_cutoff": -2.0}, {"beta": math.inf}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OneEuroSettings(**kwargs)


def test_a_still_face_is_unchanged(morphable_model):
    smoother = FaceSmoother(OneEuroSettings())
    f = face(morphable_model)
    for k in range(10):
        out = smoother(k / RATE_HZ, f)
        np.testing.assert_allclose(out.landmarks, f.landmarks, atol=1e-3)
        np.testing.assert_allclose(out.camera, f.camera, atol=1e-5)


def test_jitter_is_damped_in_landmarks_and_pose(morphable_model):
    rng = np.random.default_rng(0)
    smoother = FaceSmoother(OneEuroSettings(min_cutoff=1.0, beta=1.0))
    raw, smooth = [], []
    for k in range(90):
        f = face(morphable_model, roll_deg=rng.normal(0, 2.0), shift=rng.normal(0, 1.5, 2),
                 landmark_noise=rng.normal(0, 1.0, (68, 2)))
        out = smoother(k / RATE_HZ, f)
        if k >= 10:
            raw.append((f.landmarks, math.degrees(f.camera[cam.ROLL]), f.camera[cam.TX]))
            smooth.append((out.landmarks, math.degrees(out.camera[cam.ROLL]), out.camera[cam.TX]))
    for i in range(3):
        assert np.std([r[i] for r in smooth], axis=0).mean() < 0.4 * np.std([r[i] for r in raw], axis=0).mean()


def test_fast_motion_lags_less_with_beta(morphable_model):
    lags = {}
    for beta in (0.0, 2.0):
        smoother = FaceSmoother(OneEuroSettings(min_cutoff=0.5, beta=beta))
        for k in range(30):  # 400 px/s: one face span (400 px) per second
            f = face(morphable_model, shift=(400.0 * k / RATE_HZ, 0.0))
            out = smoother(k / RATE_HZ, f)
        lags[beta] = float(f.camera[cam.TX] - out.camera[cam.TX])
    assert 0 < lags[2.0] < 0.5 * lags[0.0], lags


def test_rotation_stays_a_rotation_and_takes_the_short_way_round(morphable_model):
    """Roll flickering between +179 and -179 degrees is a head near 180 degrees, not at 0, which
    averaging the Euler angles would give."""
    smoother = FaceSmoother(OneEuroSettings(min_cutoff=1.0, beta=0.0))
    upside_down = face(morphable_model, roll_deg=180.0).rotation
    for k in range(20):
        out = smoother(k / RATE_HZ, face(morphable_model, roll_deg=179.0 if k % 2 else -179.0))
        r = np.asarray(out.rotation, np.float64)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-5)
        assert angle_deg(r, upside_down) < 1.5


def test_time_that_does_not_advance_restarts_the_filter(morphable_model):
    smoother = FaceSmoother(OneEuroSettings(min_cutoff=0.1, beta=0.0))
    smoother(0.0, face(morphable_model))
    moved = face(morphable_model, shift=(50.0, 0.0))
    assert smoother(1 / RATE_HZ, moved).camera[cam.TX] < 310  # smoothed: far behind
    assert smoother(1 / RATE_HZ, moved).camera[cam.TX] == pytest.approx(350.0)  # same stamp: restarted
