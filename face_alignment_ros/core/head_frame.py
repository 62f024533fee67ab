"""The REP-155 head frame of a fitted face: origin at the sellion, x forward out of the face,
y to the subject's left, z up.

The model frame (docs/CONVENTIONS.md) has x to the subject's left, y down and z backwards, so
the head axes in model coordinates are x_head = -z, y_head = +x, z_head = -y.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transforms3d.quaternions import mat2quat

# Columns: the head frame's x, y, z axes expressed in the model frame.
MODEL_FROM_HEAD = np.array([[0.0, 1.0, 0.0],
                            [0.0, 0.0, -1.0],
                            [-1.0, 0.0, 0.0]], np.float32)
SELLION_LANDMARK = 27  # iBUG: top of the nose bridge, between the eyes


def head_rotation(rotation_model_to_camera: np.ndarray) -> np.ndarray:
    """Rotation of the head frame in the camera optical frame."""
    return np.asarray(rotation_model_to_camera, np.float32) @ MODEL_FROM_HEAD


def sellion_mm(model, shape_params: np.ndarray) -> np.ndarray:
    """Head-frame origin in the model frame (mm)."""
    return model.vertices(shape_params, np.array([model.landmarks[SELLION_LANDMARK]]))[0]


# --- Metric pose from the weak-perspective fit ---------------------------------------------
#
# The cascade fits a weak-perspective camera x = s P R X + t (s in image px per model mm). A
# pinhole camera with focal length f (px) sees a face whose reference point (the model origin)
# lies at depth Z0 with that same magnification when s = f / Z0, so Z0 = f / s (mm). The model
# origin is then back-projected from its image point t at depth Z0, and the whole face is
# placed rigidly: X_cam = T + R X, T = ((tx - cx) Z0 / fx, (ty - cy) Z0 / fy, Z0). For the
# sellion (the head frame origin) this is its image point back-projected at the weak-perspective
# depth, plus its own model depth offset (R X)_z along the optical axis. The mesh, the 3D
# landmarks and the head frame are one rigid body, so they agree with each other exactly.
# Accuracy is that of the model's metric size (an average adult head) and of the weak-perspective
# approximation (good when the face depth is small against its distance).

# Columns: the gaze frame's axes in the head frame. Optical convention (ROS4HRI gaze_<id>):
# z forward along the head's x, x to the subject's right (-y_head), y down (-z_head). Without
# eye tracking, gaze is taken as the head's forward direction.
HEAD_FROM_GAZE = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]], np.float32)

DEFAULT_HORIZONTAL_FOV_DEG = 60.0
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 179.0  # calibrations outside are rejected as absurd


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (the K matrix of sensor_msgs/CameraInfo)."""
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_k(cls, k) -> Intrinsics:
        """From a row-major 3x3 K (9 values), as in CameraInfo.k."""
        k = np.asarray(k, np.float64).reshape(9)
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]))

    @classmethod
    def assumed(cls, width: int, height: int, focal_length_px: float = 0.0,
                horizontal_fov_deg: float = DEFAULT_HORIZONTAL_FOV_DEG) -> Intrinsics:
        """Without a calibration: the principal point at the image centre (pixel centres at
        integer coordinates) and ``focal_length_px``, or when that is 0 the focal length that
        gives ``horizontal_fov_deg`` across ``width``."""
        f = focal_length_px if focal_length_px > 0 else \
            0.5 * width / np.tan(0.5 * np.radians(horizontal_fov_deg))
        return cls(float(f), float(f), 0.5 * (width - 1), 0.5 * (height - 1))

    def is_valid(self, width: int | None = None, height: int | None = None) -> bool:
        """Finite with fx, fy > 0. Given the image size, also a field of view between
        ``MIN_FOV_DEG`` and ``MAX_FOV_DEG`` across the width and the height, and the principal
        point at most one image size outside the image: what any real camera gives."""
        values = np.array([self.fx, self.fy, self.cx, self.cy], np.float64)
        if not (np.isfinite(values).all() and self.fx > 0 and self.fy > 0):
            return False
        if width is None or height is None:
            return True
        if width <= 0 or height <= 0:
            return False
        fov = np.degrees(2.0 * np.arctan2(0.5 * np.array([width, height], np.float64), values[:2]))
        return bool((fov >= MIN_FOV_DEG).all() and (fov <= MAX_FOV_DEG).all()
                    and -width <= self.cx <= 2 * width and -height <= self.cy <= 2 * height)


@dataclass(frozen=True)
class MetricPose:
    """A fitted face placed in the camera optical frame (x right, y down, z forward)."""
    translation_mm: np.ndarray   # (3,) position of the model origin, mm
    rotation: np.ndarray         # (3, 3) model frame -> camera (FaceResult.rotation)
    head_position_m: np.ndarray  # (3,) head frame origin (sellion), metres
    head_rotation: np.ndarray    # (3, 3) head frame axes in the camera frame

    def points_m(self, points_mm: np.ndarray) -> np.ndarray:
        """Model-frame points (n, 3) in mm -> camera optical frame in metres (float32)."""
        pts = np.asarray(points_mm, np.float64) @ self.rotation.astype(np.float64).T + self.translation_mm
        return (pts * 1e-3).astype(np.float32)


def metric_pose(face, intrinsics: Intrinsics) -> MetricPose:
    """The metric placement of ``face`` (a FaceResult) for a pinhole camera; see the comment
    above: depth Z0 = f / s with f = (fx + fy) / 2, rotation = the fitted R."""
    if not intrinsics.is_valid():
        raise ValueError(f"intrinsics must be finite with fx, fy > 0, got {intrinsics}")
    s, tx, ty = float(face.camera[0]), float(face.camera[4]), float(face.camera[5])
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"weak-perspective scale must be > 0, got {s}")
    z0 = 0.5 * (intrinsics.fx + intrinsics.fy) / s
    translation = np.array([(tx - intrinsics.cx) * z0 / intrinsics.fx,
                            (ty - intrinsics.cy) * z0 / intrinsics.fy, z0])
    rotation = np.asarray(face.rotation, np.float64)
    sellion = np.asarray(sellion_mm(face.model, face.params), np.float64)
    head_pos = (translation + rotation @ sellion) * 1e-3
    return MetricPose(translation, rotation.astype(np.float32), head_pos.astype(np.float64),
                      head_rotation(rotation))


def metric_landmarks_mm(face) -> np.ndarray:
    """The 68 landmark vertices (mm, model frame) with the jaw on the silhouette of this pose."""
    ids = face.model.contour_landmarks(np.asarray(face.rotation, np.float32), face.params)
    return face.vertices_mm(ids)


def quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix, the geometry_msgs order."""
    w, x, y, z = mat2quat(np.asarray(rotation, np.float64))
    return np.array([x, y, z, w]) * (1.0 if w >= 0 else -1.0)
