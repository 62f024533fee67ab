"""Cascade geometry: the cached start state and the precomputed landmark rows."""
import contextlib

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


def _random_descent(dim: int, crop: int, iterations: int = 3):
    from face_alignment_ros.core.descent_model import DescentModel
    from face_alignment_ros.core.face_crop import BoxPrior
    from face_alignment_ros.core.morphable_model import N_DENSE, N_LANDMARKS

    rng = np.random.default_rng(7)
    d = N_DENSE * dim
    return DescentModel(R_X=(rng.standard_normal((iterations, 2 * N_LANDMARKS, d)) * 0.05).astype(np.float32),
                        b_X=rng.standard_normal((iterations, 2 * N_LANDMARKS)).astype(np.float32),
                        R_w=(rng.standard_normal((iterations, 6, d)) * 1e-4).astype(np.float32),
                        b_w=np.zeros((iterations, 6), np.float32), descriptor="sift", descriptor_dim=dim,
                        crop_size=crop, regularisation=10.0, box_priors={"detector": BoxPrior()})


def test_run_with_and_without_hook_gives_the_loop_s_states(morphable_model):
    # Cascade.run replaced the loops of learn_descent and bench_pipeline: the same states as
    # features -> step -> update written out, with or without a hook, and the hook sees each part.
    cascade, n, dim = Cascade(morphable_model), 64, 4
    descent = _random_descent(dim, n)
    table = np.random.default_rng(3).standard_normal((n, n, dim)).astype(np.float32)

    def sampler(points, camera):
        ij = np.clip(np.rint(points).astype(int), 0, n - 1)
        return table[ij[:, 1], ij[:, 0]]

    start = cascade.initial_state(n)
    state = start
    written_out = []
    for k in range(descent.iterations):
        dx, dw = descent.step(k, cascade.features(sampler, state))
        state = cascade.update(state, dx, dw, descent.regularisation)
        written_out.append(state.landmarks)
    seen = []

    @contextlib.contextmanager
    def hook(k, part):
        seen.append((k, part))
        yield

    for final in (cascade.run(descent, sampler, start), cascade.run(descent, sampler, start, hook=hook)):
        np.testing.assert_array_equal(final.landmarks, state.landmarks)
        np.testing.assert_array_equal(final.camera, state.camera)
        np.testing.assert_array_equal(final.shape_params, state.shape_params)
        np.testing.assert_array_equal(final.dense_visible, state.dense_visible)
        assert len(final.history) == 3 and all(np.array_equal(a, b) for a, b in zip(final.history, written_out))
    assert seen == [(k, part) for k in range(3) for part in ("iteration", "features", "regression", "update")]
    assert not np.allclose(state.landmarks, start.landmarks)  # the steps did move the face
    assert len(cascade.run(descent, sampler, start, iterations=2).history) == 2
