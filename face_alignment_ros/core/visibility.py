"""Which model vertices the camera sees: a depth buffer of the decimated mesh, then a depth test."""
from __future__ import annotations

import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import depth_test

GRID = 64            # depth-buffer cells along the longer side of the projected face
DEPTH_TOLERANCE_MM = 6.0  # covers the decimated mesh's deviation from the full surface


class VisibilityTester:
    """Precomputes the decimated mesh's basis rows; one test costs one mat-vec and one small
    rasterisation (docs/cascade.md, "fast path")."""

    def __init__(self, model: MorphableModel, grid: int = GRID, tolerance_mm: float = DEPTH_TOLERANCE_MM):
        self.model = model
        self.grid = grid
        self.tolerance_mm = tolerance_mm
        self._mesh = model.decimated_mesh
        self._triangles = np.ascontiguousarray(model.decimated_triangles, np.int32)

    def mesh_vertices(self, shape_params: np.ndarray | None) -> np.ndarray:
        return self._mesh.vertices(shape_params)

    def visible(self, camera: np.ndarray, shape_params: np.ndarray | None, points_3d: np.ndarray) -> np.ndarray:
        """(n,) bool: is each model-frame point (on the surface) unoccluded under ``camera``?"""
        camera = np.asarray(camera, np.float32)
        mesh = self.mesh_vertices(shape_params)
        query = np.ascontiguousarray(points_3d, np.float32)
        visible = np.zeros(len(query), bool)
        # Non-finite input sees nothing: it gives a non-finite mesh extent or query point.
        rotation = cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1])
        tolerance = np.float32(self.tolerance_mm * abs(float(camera[cam.S])))
        depth_test(mesh, self._triangles, query, rotation, camera[cam.S], self.grid, tolerance, visible)
        return visible
