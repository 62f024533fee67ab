import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.shape_fit import fit_shape


def _problem(model, noise, seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.standard_normal(50) * model.shape_sigma * 0.7).astype(np.float32)
    w = np.array([0.8, 0.1, 0.4, -0.05, 100, 110], np.float32)
    ids = model.dense_landmarks
    targets = cam.project(w, model.vertices(truth, ids)) + rng.normal(scale=noise, size=(len(ids), 2))
    mean, basis = model.basis_rows(ids)
    return truth, w, targets, mean, basis


def test_recovers_parameters_from_noiseless_projections(morphable_model):
    truth, w, targets, mean, basis = _problem(morphable_model, noise=0.0)
    fitted = fit_shape(targets, w, mean, basis, morphable_model.shape_sigma, regularisation=1e-6)
    recon = cam.project(w, morphable_model.vertices(fitted, morphable_model.dense_landmarks))
    assert np.abs(recon - targets).max() < 0.05


def test_fit_reduces_error_against_noise_and_regulariser_shrinks(morphable_model):
    m = morphable_model
    truth, w, targets, mean, basis = _problem(m, noise=0.3)
    dense = m.vertices(truth)
    errors, norms = [], []
    for lam in (0.01, 1.0, 100.0):
        p = fit_shape(targets, w, mean, basis, m.shape_sigma, regularisation=lam)
        errors.append(np.linalg.norm(m.vertices(p) - dense, axis=1).mean())
        norms.append(np.linalg.norm(p / m.shape_sigma))
    assert norms[0] > norms[1] > norms[2], "a larger lambda must shrink the parameters"
    mean_shape_error = np.linalg.norm(m.mean - dense, axis=1).mean()
    assert errors[1] < 0.6 * mean_shape_error, "the fit must explain most of the shape"
