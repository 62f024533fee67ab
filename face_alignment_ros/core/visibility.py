"""Which model vertices the camera sees: a depth buffer of the decimated mesh, then a depth test."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import rasterize_depth

GRID = 64            # depth-buffer cells along the longer side of the projected face
DEPTH_TOLERANCE_MM = 6.0  # covers the decimated mesh's deviation from the full surface


class VisibilityTester:
    """Precomputes the decimated mesh's basis rows so that each test costs about 0.1 ms."""

    def __init__(self, model: MorphableModel, grid: int = GRID, tolerance_mm: float = DEPTH_TOLERANCE_MM):
        self.model = model
        self.grid = grid
        self.tolerance_mm = tolerance_mm
        self._mesh_mean, self._mesh_basis = model.basis_rows(model.decimated)
        self._triangles = model.decimated_triangles

    def mesh_vertices(self, shape_params: np.ndarray | None) -> np.ndarray:
        if shape_params is None:
            return self._mesh_mean
        return self._mesh_mean + self._mesh_basis @ np.asarray(shape_params, np.float32)

    def visible(self, camera: np.ndarray, shape_params: np.ndarray | None, points_3d: np.ndarray) -> np.ndarray:
        """(n,) bool: is each model-frame point (on the surface) unoccluded under ``camera``?"""
        mesh = cam.transform(camera, self.mesh_vertices(shape_params))
        query = cam.transform(camera, np.asarray(points_3d, np.float32))
        lo = mesh[:, :2].min(axis=0)
        span = float(np.max(mesh[:, :2].max(axis=0) - lo))
        if not np.isfinite(span) or span <= 0:
            return np.zeros(len(query), bool)
        scale = (self.grid - 1) / span
        mesh[:, :2] = (mesh[:, :2] - lo) * scale
        depth = rasterize_depth(mesh, self._triangles, self.grid, self.grid)
        # A point on a steep or silhouette surface shares its cell with nearer surface: compare
        # with the farthest depth of the 3x3 neighbourhood (background counts as infinitely far).
        farthest = maximum_filter(depth, size=3, mode="nearest")
        cell = np.clip(np.rint((query[:, :2] - lo) * scale), 0, self.grid - 1).astype(int)
        front = farthest[cell[:, 1], cell[:, 0]]
        tolerance = self.tolerance_mm * abs(float(camera[cam.S]))
        return query[:, 2] <= front + tolerance
