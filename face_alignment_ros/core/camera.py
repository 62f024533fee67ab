"""Weak-perspective camera w = (s, pitch, yaw, roll, tx, ty) and rotations.

Axis convention (docs/CONVENTIONS.md): the model frame is the camera optical frame of a
frontal face (x right, y down, z away from the camera). R = euler2mat(pitch, yaw, roll, 'sxyz')
rotates about the camera's fixed x axis by pitch, then y by yaw, then z by roll:
pitch > 0 turns the face down: the nose drops and the chin moves away from the camera
(right-handed about +x, which points right),
yaw > 0 turns the face towards the image's left (about +y, which points down),
roll > 0 turns the face clockwise in the image (about +z, away from the camera).
"""
from __future__ import annotations

import math

import numpy as np
from transforms3d.euler import mat2euler

CAMERA_SIZE = 6
S, PITCH, YAW, ROLL, TX, TY = range(CAMERA_SIZE)
# Selects the image-plane rows of a rotated point (eq. 2).
P_ORTHO = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R (3, 3) for the angles in radians ('sxyz' static axes): transforms3d's ``euler2mat``
    written out for these axes, the same float64 operations (equal to the last bit), without its
    generic axis handling, which cost more than the arithmetic in the cascade's inner loops."""
    si, sj, sk = math.sin(pitch), math.sin(yaw), math.sin(roll)
    ci, cj, ck = math.cos(pitch), math.cos(yaw), math.cos(roll)
    cc, cs, sc, ss = ci * ck, ci * sk, si * ck, si * sk
    return np.array([[cj * ck, sj * sc - cs, sj * cc + ss],
                     [cj * sk, sj * ss + cc, sj * cs - sc],
                     [-sj, cj * si, cj * ci]], np.float32)


def rotation_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in radians of a rotation matrix, inverse of ``rotation_matrix``."""
    return tuple(float(a) for a in mat2euler(np.asarray(rotation, np.float64), "sxyz"))


def project(camera: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Weak-perspective projection, paper eq. 2: x = s P R X + t. (n, 3) -> (n, 2)."""
    camera = np.asarray(camera, np.float32)
    rot = rotation_matrix(*camera[PITCH:ROLL + 1])
    return camera[S] * points @ (P_ORTHO @ rot).T + camera[TX:TY + 1]


def transform(camera: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Image x, y (eq. 2) plus depth s (R X)_z, in pixels: smaller depth is nearer."""
    camera = np.asarray(camera, np.float32)
    rot = rotation_matrix(*camera[PITCH:ROLL + 1])
    out = camera[S] * points @ rot.T
    out[:, :2] += camera[TX:TY + 1]
    return out


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """Closest proper rotation (Frobenius norm) to a 3x3 matrix."""
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return (u @ np.diag([1.0, 1.0, d]) @ vt).astype(np.float32)


def fit_camera(points_2d: np.ndarray, points_3d: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares weak-perspective camera mapping (n, 3) model points to (n, 2) pixels.

    Solves the affine camera x = A X + t in closed form, then takes s as the mean norm of A's
    rows and R as the nearest rotation to [A / s; (a1 x a2) / s^2].
    """
    w = np.ones(len(points_2d)) if weights is None else np.asarray(weights, np.float64)
    x3 = np.asarray(points_3d, np.float64)
    x2 = np.asarray(points_2d, np.float64)
    c3 = (w[:, None] * x3).sum(0) / w.sum()
    c2 = (w[:, None] * x2).sum(0) / w.sum()
    sw = np.sqrt(w)[:, None]
    a, *_ = np.linalg.lstsq(sw * (x3 - c3), sw * (x2 - c2), rcond=None)
    a = a.T  # (2, 3)
    s = 0.5 * (np.linalg.norm(a[0]) + np.linalg.norm(a[1]))
    r1, r2 = a[0] / s, a[1] / s
    r3 = [r1[1] * r2[2] - r1[2] * r2[1], r1[2] * r2[0] - r1[0] * r2[2], r1[0] * r2[1] - r1[1] * r2[0]]  # np.cross
    rot = nearest_rotation(np.array([r1, r2, r3]))
    t = c2 - s * (rot[:2] @ c3)
    return np.array([s, *rotation_angles(rot), *t], np.float32)


def mirror_camera(camera: np.ndarray, width: float) -> np.ndarray:
    """The camera of the left-right mirrored image (x -> width - 1 - x) of a mirror-symmetric
    face: reflecting x in the model frame negates yaw and roll and keeps pitch."""
    out = np.asarray(camera, np.float32).copy()
    out[YAW], out[ROLL] = -out[YAW], -out[ROLL]
    out[TX] = width - 1.0 - out[TX]
    return out
