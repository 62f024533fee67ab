"""SIFT descriptors at given points: the paper's "Ours (SIFT)" ablation.

OpenCV's SIFT ``compute`` runs at caller-given keypoints (no detection). ``size`` is the
keypoint diameter in crop pixels; the caller ties it to the face scale (e.g. a fixed fraction
of the face width in the crop) so that the descriptor covers the same facial area at any
distance. The orientation is fixed at 0 (upright SIFT): the cascade wants descriptors in the
crop frame, and the head roll is part of the pose being regressed.

Rows:
- points outside the crop, non-finite points, and any keypoint OpenCV drops give a zero row;
- every other row is L2-normalised (OpenCV's SIFT rows are already clipped and scaled to a
  norm of about 512; scaling to unit norm puts them on the same footing as the DFF, whose
  rows are unit vectors, so one ridge regularisation fits both).
"""
from __future__ import annotations

import cv2
import numpy as np

SIFT_DIM = 128


class SiftDescriptor:
    def __init__(self):
        self._sift = cv2.SIFT_create()

    @property
    def dim(self) -> int:
        return SIFT_DIM

    def compute(self, gray_crop: np.ndarray, points_crop, size: float) -> np.ndarray:
        """(n, 128) float32 descriptors of ``gray_crop`` (uint8 (H, W); 3-channel BGR is
        converted) at (n, 2) points (x, y) in crop pixels, keypoint diameter ``size``."""
        img = np.asarray(gray_crop)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        pts = np.asarray(points_crop, dtype=np.float64).reshape(-1, 2)
        n = len(pts)
        out = np.zeros((n, SIFT_DIM), np.float32)
        h, w = img.shape[:2]
        inside = np.flatnonzero((pts[:, 0] >= 0) & (pts[:, 1] >= 0)
                                & (pts[:, 0] <= w - 1) & (pts[:, 1] <= h - 1))
        if not len(inside) or not size > 0:
            return out
        # class_id carries the row index so that dropped keypoints can be told apart.
        kps = [cv2.KeyPoint(float(pts[i, 0]), float(pts[i, 1]), float(size), 0.0, 0.0, 0, int(i))
               for i in inside]
        kps_out, desc = self._sift.compute(img, kps)
        if desc is None or not len(kps_out):
            return out
        rows = np.fromiter((k.class_id for k in kps_out), dtype=np.intp, count=len(kps_out))
        desc = desc.astype(np.float32)
        norm = np.linalg.norm(desc, axis=1, keepdims=True)
        out[rows] = np.where(norm > 0, desc / np.maximum(norm, 1e-12), 0.0)
        return out
