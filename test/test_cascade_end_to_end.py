"""Learn a tiny descent model inside the test and check that the cascade converges.

The descriptor is an oracle with the DFF's defining property: every pixel carries a code of the
face-surface point it shows (random Fourier features of the mean-face position), rendered with
the project's rasteriser. The cascade must learn to read misalignment from it.
"""
import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.cascade import Cascade
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.dff_extractor import DescriptorMap
from face_alignment_ros.core.face_crop import BoxPrior, initial_camera
from face_alignment_ros.core.rasterizer import rasterize_ids
from face_alignment_ros.training.descent_regression import TrainingSample, learn_descent, ridge_regression

CROP = 64
DIM = 16


def _surface_code_map(model, camera, params, freqs, phases):
    verts_img = cam.transform(camera, model.vertices(params, model.decimated))
    _, tri, bary = rasterize_ids(verts_img, model.decimated_triangles, CROP, CROP)
    canon = model.mean[model.decimated][model.decimated_triangles[np.maximum(tri, 0)]]  # (H, W, 3, 3)
    pos = np.einsum("hwk,hwkc->hwc", bary, canon)
    code = np.cos(pos @ freqs + phases)
    code /= np.linalg.norm(code, axis=2, keepdims=True)
    code[tri < 0] = 0.0
    return DescriptorMap(code.transpose(2, 0, 1).astype(np.float32))


def _samples(model, cascade, count, rng, freqs, phases):
    samples = []
    for _ in range(count):
        params = (rng.standard_normal(50) * model.shape_sigma * 0.5).astype(np.float32)
        w = initial_camera(CROP)
        w[cam.S] *= np.exp(rng.normal(0, 0.06))
        w[cam.PITCH:cam.ROLL + 1] = np.radians([rng.normal(0, 6), rng.uniform(-35, 35), rng.normal(0, 6)])
        w[cam.TX:] += rng.normal(0, 2.0, 2)
        target = cascade.model_landmarks(w, params)
        dmap = _surface_code_map(model, w, params, freqs, phases)
        eye_dist = np.linalg.norm(target[36:42].mean(0) - target[42:48].mean(0))
        samples.append(TrainingSample(make_sampler=lambda d=dmap: (lambda pts, camera: d.sample(pts)),
                                      state=cascade.initial_state(CROP), target_landmarks=target,
                                      target_camera=w, normaliser=eye_dist))
    return samples


def test_ridge_regression_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(200, 10))
    r_true, b_true = rng.normal(size=(3, 10)), rng.normal(size=3)
    r, b = ridge_regression(phi, phi @ r_true.T + b_true, lam=1e-8)
    np.testing.assert_allclose(r, r_true, atol=1e-4)
    np.testing.assert_allclose(b, b_true, atol=1e-4)


def test_ridge_regression_dual_form_equals_the_primal():
    # 8 samples < 10 dimensions takes the dual branch; it must solve the same ridge problem
    rng = np.random.default_rng(1)
    phi, y = rng.normal(size=(8, 10)), rng.normal(size=(8, 3))
    lam = 1e-1
    r, b = ridge_regression(phi, y, lam=lam)
    phi_c, y_c = phi - phi.mean(axis=0), y - y.mean(axis=0)
    reg = lam * float((phi_c**2).sum()) / phi.shape[1]
    r_primal = np.linalg.solve(phi_c.T @ phi_c + reg * np.eye(10), phi_c.T @ y_c).T
    np.testing.assert_allclose(r, r_primal, atol=1e-5)
    np.testing.assert_allclose(b, y.mean(axis=0) - r_primal @ phi.mean(axis=0), atol=1e-5)


def test_learned_cascade_reduces_landmark_error(morphable_model, tmp_path):
    rng = np.random.default_rng(0)
    freqs = rng.normal(scale=1 / 25.0, size=(3, DIM))
    phases = rng.uniform(0, 2 * np.pi, DIM)
    cascade = Cascade(morphable_model)
    train = _samples(morphable_model, cascade, 160, rng, freqs, phases)
    val = _samples(morphable_model, cascade, 40, rng, freqs, phases)
    log = []
    descent = learn_descent(cascade, train, val, iterations=3, regularisation=1.0, report=log.append,
                            descriptor="dff", descriptor_dim=DIM, crop_size=CROP,
                            box_priors={"detector": BoxPrior()}, provenance={"test": True})
    val_nme = [r["val_nme"] for r in log]
    assert val_nme[1] < 0.7 * val_nme[0], f"first iteration must help: {val_nme}"
    assert val_nme[-1] < 0.5 * val_nme[0], f"the cascade must converge: {val_nme}"

    # The saved file runs the same cascade and gives the same result.
    path = tmp_path / "descent.npz"
    descent.save(path, dtype=np.float32)
    loaded = DescentModel.load(path, expect_descriptor="dff")
    errs = []
    for s in val[:10]:
        state = cascade.run(loaded, s.make_sampler(), s.state)
        errs.append(np.linalg.norm(state.landmarks - s.target_landmarks, axis=1).mean() / s.normaliser)
        assert 0.0 <= cascade.confidence(state) <= 1.0
    assert np.mean(errs) == pytest.approx(np.mean(val_nme[-1]), rel=0.5)
