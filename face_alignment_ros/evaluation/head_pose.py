"""Head-pose conventions and errors: this project's rotation against AFLW2000-3D / 300W-LP labels.

This project (docs/CONVENTIONS.md): ``R`` maps the model frame (x right, y down, z away from the
camera for a frontal face) to the camera optical frame, ``R = euler2mat(pitch, yaw, roll, 'sxyz')``.

AFLW2000-3D and 300W-LP (Zhu et al.'s fitting code, read by 3DDFA and face3d): ``Pose_Para`` is
(pitch, yaw, roll, tx, ty, tz, scale), angles in radians. Their model frame is the BFM's (y up,
z towards the viewer) and a vertex X projects as ``v = scale * R_d X + t``, then the image row is
``height - 1 - v_y`` (x unchanged); ``R_d = Rx(pitch) Ry(yaw) Rz(roll)`` with their matrices
``Rx(a) = [[1, 0, 0], [0, c, s], [0, -s, c]]``, ``Ry(a) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``,
``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` (each the transpose of the right-handed one), so
``R_d^T = euler2mat(pitch, yaw, roll, 'sxyz')``.

Both frames differ by ``F = diag(1, -1, -1)`` (a half turn about x: the BFM frame and the image
flip of y), so ``R = F R_d F``. Signs in that data's angles: yaw > 0 turns the nose towards the
image's left (as ours), roll > 0 turns the face clockwise in the image (as ours), pitch > 0 lifts
the nose, the face looks up (ours has the opposite sign). Beyond small angles the two Euler
orders differ too, so angles are always converted through the rotation matrix.
"""
from __future__ import annotations

import numpy as np
from transforms3d.euler import euler2mat, mat2euler

# BFM / AFLW2000-3D frame <-> this project's model and camera frames.
FLIP_YZ = np.diag([1.0, -1.0, -1.0])
ANGLE_NAMES = ("pitch", "yaw", "roll")


def rotation_from_aflw(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """This project's (3, 3) model->camera rotation of AFLW2000-3D ``Pose_Para`` angles (radians)."""
    r_d = euler2mat(float(pitch), float(yaw), float(roll), "sxyz").T
    return FLIP_YZ @ r_d @ FLIP_YZ


def aflw_angles(rotation: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in radians, AFLW2000-3D convention, of this project's rotation."""
    r_d = FLIP_YZ @ np.asarray(rotation, np.float64) @ FLIP_YZ
    return np.array(mat2euler(r_d.T, "sxyz"))


def aflw_pose_para(camera: np.ndarray, image_height: int) -> np.ndarray:
    """(1, 7) ``Pose_Para`` of a weak-perspective camera (s, pitch, yaw, roll, tx, ty) in image
    pixels: the angles, the translation that reproduces the same image points in that data's
    projection (tz = 0), and the scale in pixels per model millimetre."""
    from face_alignment_ros.core import camera as cam

    camera = np.asarray(camera, np.float64)
    angles = aflw_angles(cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]))
    t = [camera[cam.TX], image_height - 1.0 - camera[cam.TY], 0.0]
    return np.array([[*angles, *t, camera[cam.S]]])


def geodesic_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    """Angle in degrees of the rotation between two orientations: of R_a^T R_b. From the chord
    ||R_a - R_b||_F = 2 sqrt(2) sin(angle / 2), exact at small angles, where the trace's arccos
    turns float32 rounding of the matrices into ~0.02 degrees."""
    chord = np.linalg.norm(np.asarray(rotation_a, np.float64) - np.asarray(rotation_b, np.float64))
    return float(np.degrees(2.0 * np.arcsin(min(chord / (2.0 * np.sqrt(2.0)), 1.0))))


def _wrap_deg(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


def pose_errors(predicted: np.ndarray | None, truth: np.ndarray) -> dict:
    """Per-face head-pose errors, degrees: ``{angle}_err`` = predicted - true in the AFLW2000-3D
    Euler convention (signed), ``geodesic_deg``, and the true angles ``gt_{angle}``. NaN errors
    when there is no prediction."""
    gt = np.degrees(aflw_angles(truth))
    out = {f"gt_{n}": float(v) for n, v in zip(ANGLE_NAMES, gt)}
    if predicted is None:
        return {**out, **{f"{n}_err": float("nan") for n in ANGLE_NAMES}, "geodesic_deg": float("nan")}
    err = _wrap_deg(np.degrees(aflw_angles(predicted)) - gt)
    return {**out, **{f"{n}_err": float(e) for n, e in zip(ANGLE_NAMES, err)},
            "geodesic_deg": geodesic_deg(predicted, truth)}


def summarise_pose(rows: list[dict]) -> dict:
    """MAE of each angle, mean and median geodesic error (degrees) over rows holding
    ``pose_errors`` fields, plus the mean signed yaw error towards the frontal pose
    (``yaw_shrink``: sign(true yaw) x yaw error; negative when yaw is underestimated)."""
    ok = [r for r in rows if np.isfinite(r.get("geodesic_deg", np.nan))]
    out = {"count": len(rows), "missing": len(rows) - len(ok)}
    if not ok:
        return {**out, **{f"{n}_mae": float("nan") for n in ANGLE_NAMES}, "geodesic_mean": float("nan"),
                "geodesic_median": float("nan"), "yaw_shrink": float("nan")}
    for n in ANGLE_NAMES:
        out[f"{n}_mae"] = float(np.mean([abs(r[f"{n}_err"]) for r in ok]))
    geo = np.array([r["geodesic_deg"] for r in ok])
    out["geodesic_mean"] = float(geo.mean())
    out["geodesic_median"] = float(np.median(geo))
    out["yaw_shrink"] = float(np.mean([np.sign(r["gt_yaw"]) * r["yaw_err"] for r in ok]))
    return out
