"""Cascade geometry: the cached start state and the precomputed landmark rows."""
import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.cascade import Cascade
from face_alignment_ros.core.face_crop import initial_camera


def test_mean_face_start_is_computed_once_and_handed_out_as_copies(morphable_model):
    cascade = Cascade(morphable_model)
    first = cascade.initial_state(128)
    first.landmarks += 5.0
    first.camera[cam.S] = -1.0
    first.dense_visible[:] = False
    again = cascade.initial_state(128)
    fresh = Cascade(morphable_model).initial_state(128, camera=initial_camera(128))
    np.testing.assert_array_equal(again.landmarks, fresh.landmarks)
    np.testing.assert_array_equal(again.camera, fresh.camera)
    np.testing.assert_array_equal(again.dense_visible, fresh.dense_visible)
    assert again.history == [] and again.dense_visible.any()


def test_model_landmarks_follow_the_full_bases(morphable_model):
    m = morphable_model
    cascade = Cascade(m)
    p = (np.random.default_rng(2).standard_normal(50) * m.shape_sigma * 0.5).astype(np.float32)
    w = np.array([0.6, 0.1, 0.5, 0.05, 64, 70], np.float32)
    ids = m.contour_landmarks(cam.rotation_matrix(*w[cam.PITCH:cam.ROLL + 1]), p)
    np.testing.assert_allclose(cascade.model_landmarks(w, p), cam.project(w, m.vertices(p)[ids]), atol=1e-3)
