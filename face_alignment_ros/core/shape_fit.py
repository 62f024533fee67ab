"""Fit the 3DMM shape to 2-D landmarks under a known camera: paper eq. 6-8, closed form."""
from __future__ import annotations

import numpy as np

from face_alignment_ros.core import camera as cam

DEFAULT_REGULARISATION = 1.0


def shape_design(camera: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearise eq. 2 in the shape parameters: projection = A p + c.

    mean (k, 3), basis (k, 3, d) -> A (2k, d), c (2k,), rows ordered x0, y0, x1, y1, ...
    """
    camera = np.asarray(camera, np.float32)
    proj = camera[cam.S] * (cam.P_ORTHO @ cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]))
    a = np.einsum("ij,kjd->kid", proj, basis).reshape(-1, basis.shape[2])
    c = (mean @ proj.T + camera[cam.TX:cam.TY + 1]).reshape(-1)
    return a, c


def fit_shape(targets: np.ndarray, camera: np.ndarray, mean: np.ndarray, basis: np.ndarray,
              sigma: np.ndarray, regularisation: float = DEFAULT_REGULARISATION,
              weights: np.ndarray | None = None) -> np.ndarray:
    """Shape parameters p minimising (paper eq. 6-8)

        sum_i w_i || x_i - (s P R (m_i + B_i p) + t) ||^2  +  lambda s^2 || D^-1 p ||^2

    where D = diag(sigma) is the prior std (eq. 8). The prior is scaled by s^2 so that lambda
    means the same at every image scale: one unit of lambda weighs a parameter at 1 sigma like
    a squared residual of 1 mm on the face. Closed form: (A^T W A + lambda s^2 D^-2) p = A^T W r.

    targets (k, 2) pixels; mean (k, 3) and basis (k, 3, d) of the matching vertices.
    """
    a, c = shape_design(camera, mean, basis)
    r = np.asarray(targets, np.float64).reshape(-1) - c
    w = np.ones(len(targets)) if weights is None else np.asarray(weights, np.float64)
    w = np.repeat(w, 2)
    a64 = a.astype(np.float64)
    scale2 = float(camera[cam.S]) ** 2
    lhs = a64.T @ (w[:, None] * a64) + regularisation * scale2 * np.diag(1.0 / np.asarray(sigma, np.float64) ** 2)
    return np.linalg.solve(lhs, a64.T @ (w * r)).astype(np.float32)
