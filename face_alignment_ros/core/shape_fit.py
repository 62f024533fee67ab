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
    a = np.matmul(proj, basis).reshape(-1, basis.shape[2])
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
    a64 = a.astype(np.float64)
    r = np.asarray(targets, np.float64).reshape(-1) - c
    if weights is None:
        lhs, rhs = a64.T @ a64, a64.T @ r
    else:
        w = np.repeat(np.asarray(weights, np.float64), 2)
        lhs, rhs = a64.T @ (w[:, None] * a64), a64.T @ (w * r)
    # + lambda s^2 D^-2 on the diagonal
    lhs.flat[::lhs.shape[0] + 1] += regularisation * float(camera[cam.S]) ** 2 / np.asarray(sigma, np.float64) ** 2
    return np.linalg.solve(lhs, rhs).astype(np.float32)
