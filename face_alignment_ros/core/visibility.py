"""Which model vertices the camera sees: a depth buffer of the decimated mesh, then a depth test."""
from __future__ import annotations

import numpy as np
from numba import njit

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import _rasterize

GRID = 64            # depth-buffer cells along the longer side of the projected face
DEPTH_TOLERANCE_MM = 6.0  # covers the decimated mesh's deviation from the full surface


@njit(cache=True, nogil=True)
def _depth_test(model_mesh, triangles, model_query, rotation, scale, grid, tolerance, visible):
    """Turn the model-frame ``model_mesh`` (k, 3) by ``rotation`` and ``scale`` (image x, y and
    depth; the translation drops out), rasterise it into a grid x grid depth buffer spanning
    its image extent, then set ``visible[i]`` where the turned query point i is no deeper than
    the farthest surface of its cell's 3x3 neighbourhood plus ``tolerance``. One pass without
    temporaries: nine look-ups per query point replace a maximum filter over the grid."""
    mesh = np.empty_like(model_mesh)
    for i in range(model_mesh.shape[0]):
        for r in range(3):
            mesh[i, r] = scale * (rotation[r, 0] * model_mesh[i, 0] + rotation[r, 1] * model_mesh[i, 1]
                                  + rotation[r, 2] * model_mesh[i, 2])
    query = np.empty_like(model_query)
    for i in range(model_query.shape[0]):
        for r in range(3):
            query[i, r] = scale * (rotation[r, 0] * model_query[i, 0] + rotation[r, 1] * model_query[i, 1]
                                   + rotation[r, 2] * model_query[i, 2])
    lo_x, lo_y = mesh[0, 0], mesh[0, 1]
    hi_x, hi_y = lo_x, lo_y
    for i in range(mesh.shape[0]):
        lo_x, hi_x = min(lo_x, mesh[i, 0]), max(hi_x, mesh[i, 0])
        lo_y, hi_y = min(lo_y, mesh[i, 1]), max(hi_y, mesh[i, 1])
    span = max(hi_x - lo_x, hi_y - lo_y)
    if not np.isfinite(span) or span <= 0:
        visible[:] = False
        return
    to_grid = np.float32((grid - 1) / np.float64(span))
    for i in range(mesh.shape[0]):
        mesh[i, 0] = (mesh[i, 0] - lo_x) * to_grid
        mesh[i, 1] = (mesh[i, 1] - lo_y) * to_grid
    depth = np.full((grid, grid), np.inf, np.float32)
    _rasterize(mesh, triangles, grid, grid, depth, np.empty((1, 1), np.int32),
               np.empty((1, 1, 3), np.float32), False)
    # A point on a steep or silhouette surface shares its cell with nearer surface: compare with
    # the farthest depth of the 3x3 neighbourhood (background counts as infinitely far).
    for q in range(query.shape[0]):
        if not (np.isfinite(query[q, 0]) and np.isfinite(query[q, 1]) and np.isfinite(query[q, 2])):
            visible[q] = False
            continue
        cx = min(max(int(np.rint((query[q, 0] - lo_x) * to_grid)), 0), grid - 1)
        cy = min(max(int(np.rint((query[q, 1] - lo_y) * to_grid)), 0), grid - 1)
        front = -np.inf
        for y in range(max(cy - 1, 0), min(cy + 2, grid)):
            for x in range(max(cx - 1, 0), min(cx + 2, grid)):
                front = max(front, depth[y, x])
        visible[q] = query[q, 2] <= front + tolerance


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
        _depth_test(mesh, self._triangles, query, rotation, camera[cam.S], self.grid, tolerance, visible)
        return visible
