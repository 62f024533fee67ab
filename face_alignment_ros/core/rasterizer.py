"""CPU triangle rasteriser with a depth buffer (the paper uses OpenGL; this is its CPU twin).

Vertices come in pixel coordinates plus depth (smaller depth is nearer). Pixel centres sit at
integer coordinates. One kernel serves visibility (depth only) and training renders (triangle
id and barycentric coordinates per pixel); ``depth_test`` wraps it for the cascade's visibility
test (it lives here because numba's cache does not notice edits to kernels in other files).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _rasterize(verts, triangles, height, width, depth, tri_id, bary, want_ids):
    for t in range(triangles.shape[0]):
        i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        x0, y0, z0 = verts[i0, 0], verts[i0, 1], verts[i0, 2]
        x1, y1, z1 = verts[i1, 0], verts[i1, 1], verts[i1, 2]
        x2, y2, z2 = verts[i2, 0], verts[i2, 1], verts[i2, 2]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        xmin = max(int(np.ceil(min(x0, min(x1, x2)))), 0)
        xmax = min(int(np.floor(max(x0, max(x1, x2)))), width - 1)
        ymin = max(int(np.ceil(min(y0, min(y1, y2)))), 0)
        ymax = min(int(np.floor(max(y0, max(y1, y2)))), height - 1)
        inv = 1.0 / area
        for py in range(ymin, ymax + 1):
            for px in range(xmin, xmax + 1):
                w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * inv
                w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * inv
                w2 = 1.0 - w0 - w1
                if w0 < -1e-6 or w1 < -1e-6 or w2 < -1e-6:
                    continue
                z = w0 * z0 + w1 * z1 + w2 * z2
                if z < depth[py, px]:
                    depth[py, px] = z
                    if want_ids:
                        tri_id[py, px] = t
                        bary[py, px, 0] = w0
                        bary[py, px, 1] = w1
                        bary[py, px, 2] = w2


@njit(cache=True, nogil=True)
def depth_test(model_mesh, triangles, model_query, rotation, scale, grid, tolerance, visible):
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


def _prepare(verts: np.ndarray, triangles: np.ndarray, height: int, width: int):
    if height <= 0 or width <= 0:
        raise ValueError(f"raster size must be positive, got {height}x{width}")
    return (np.ascontiguousarray(verts, np.float32), np.ascontiguousarray(triangles, np.int32),
            np.full((height, width), np.inf, np.float32))


def rasterize_depth(verts: np.ndarray, triangles: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) float32 depth buffer, +inf where no triangle covers the pixel."""
    verts, triangles, depth = _prepare(verts, triangles, height, width)
    _rasterize(verts, triangles, height, width, depth,
               np.empty((1, 1), np.int32), np.empty((1, 1, 3), np.float32), False)
    return depth


def rasterize_ids(verts: np.ndarray, triangles: np.ndarray, height: int, width: int):
    """Depth (H, W), triangle id (H, W) int32 (-1 background) and barycentrics (H, W, 3)."""
    verts, triangles, depth = _prepare(verts, triangles, height, width)
    tri_id = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 3), np.float32)
    _rasterize(verts, triangles, height, width, depth, tri_id, bary, True)
    return depth, tri_id, bary
