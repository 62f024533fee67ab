"""Per-vertex texture of a fitted photo (step 1 of stage ``synthesize``).

A colour per model vertex, sampled (bilinear) from the photo at the fitted mesh's projected
vertices. Vertices the photo does not show well (occluded by the depth buffer, seen at a grazing
angle, or outside the photo) take the colour of their mirror vertex across the face's symmetry
plane when that one is seen, and the rest the colour of the nearest seen vertices over the mesh
(breadth-first diffusion), both blended into their surroundings.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit
from scipy.spatial import cKDTree

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.mesh_topology import triangle_normals, vertex_adjacency
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import rasterize_depth
from face_alignment_ros.core.visibility import VisibilityTester

# A photo pixel seen this obliquely (cosine between normal and view) is a stretched smear:
# such vertices take mirrored or diffused colour instead.
GRAZING_COS = 0.35
# Depth-test slack in mm (times the scale): the buffer is sampled at the vertex's pixel centre.
PHOTO_DEPTH_TOLERANCE_MM = 3.0


# --------------------------------------------------------------------------------------------
# Mesh helpers, precomputed once per model
# --------------------------------------------------------------------------------------------

def mirror_vertex_map(mean: np.ndarray) -> np.ndarray:
    """(n,) int32: for each vertex, the mean-shape vertex nearest to its mirror (-x, y, z)."""
    _, idx = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0], np.float32))
    return idx.astype(np.int32)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(n, 3) unit outward normals: area-weighted sums of the triangle normals."""
    fn = triangle_normals(vertices, triangles)
    n = len(vertices)
    out = np.empty((n, 3), np.float32)
    for k in range(3):
        out[:, k] = (np.bincount(triangles[:, 0], fn[:, k], n) + np.bincount(triangles[:, 1], fn[:, k], n)
                     + np.bincount(triangles[:, 2], fn[:, k], n))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@njit(cache=True, nogil=True)
def _neighbour_sum(values, mask, indptr, indices, v):
    """Sum of the rows of ``values`` over v's neighbours in ``mask``, and their count."""
    c0 = 0.0
    c1 = 0.0
    c2 = 0.0
    cnt = 0
    for j in range(indptr[v], indptr[v + 1]):
        u = indices[j]
        if mask[u]:
            c0 += values[u, 0]
            c1 += values[u, 1]
            c2 += values[u, 2]
            cnt += 1
    return c0, c1, c2, cnt


@njit(cache=True, nogil=True)
def _diffuse(colors, known, indptr, indices):
    """Breadth-first fill: each unknown vertex takes the mean colour of its neighbours that were
    known before its ring, so every hole gets the colour of its nearest known vertices."""
    n = colors.shape[0]
    frontier = np.empty(n, np.int64)
    nxt = np.empty(n, np.int64)
    queued = known.copy()
    nf = 0
    for v in range(n):
        if known[v]:
            frontier[nf] = v
            nf += 1
    while nf > 0:
        nn = 0
        for i in range(nf):
            v = frontier[i]
            for j in range(indptr[v], indptr[v + 1]):
                u = indices[j]
                if not queued[u]:
                    queued[u] = True
                    nxt[nn] = u
                    nn += 1
        for i in range(nn):
            u = nxt[i]
            c0, c1, c2, cnt = _neighbour_sum(colors, known, indptr, indices, u)
            colors[u, 0] = c0 / cnt
            colors[u, 1] = c1 / cnt
            colors[u, 2] = c2 / cnt
        for i in range(nn):
            known[nxt[i]] = True
            frontier[i] = nxt[i]
        nf = nn
    return queued


@njit(cache=True, nogil=True)
def _relax(values, solve, use, indptr, indices, iterations, omega):
    """Successive over-relaxation of Laplace's equation on the ``solve`` vertices: each becomes
    the mean of its ``use`` neighbours; the other ``use`` vertices are fixed boundary values and
    non-``use`` neighbours are ignored (a free boundary)."""
    n = values.shape[0]
    for _ in range(iterations):
        for v in range(n):
            if not solve[v]:
                continue
            c0, c1, c2, cnt = _neighbour_sum(values, use, indptr, indices, v)
            if cnt > 0:
                values[v, 0] += omega * (c0 / cnt - values[v, 0])
                values[v, 1] += omega * (c1 / cnt - values[v, 1])
                values[v, 2] += omega * (c2 / cnt - values[v, 2])


@dataclass
class MeshTools:
    model: MorphableModel
    mirror: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    visibility: VisibilityTester
    exp_basis_t: np.ndarray   # (10, 3n) contiguous, for a fast expression offset
    vertex_colours: np.ndarray  # (n, 3) uint8 BGR colour-coding of the mean shape, for the sheets

    @classmethod
    def build(cls, model: MorphableModel) -> "MeshTools":
        indptr, indices = vertex_adjacency(model.n_vertices, model.triangles)
        lo, hi = model.mean.min(axis=0), model.mean.max(axis=0)
        code = ((model.mean - lo) / (hi - lo) * 200 + 40).astype(np.uint8)
        return cls(model, mirror_vertex_map(model.mean), indptr, indices, VisibilityTester(model),
                   np.ascontiguousarray(model.exp_basis.T), code)


RELAX_ITERATIONS = 150
RELAX_OMEGA = 1.8


@functools.lru_cache(maxsize=2)
def default_tools(model_path: str | None = None) -> MeshTools:
    """MeshTools of the (default) 3DMM, built once per process."""
    return MeshTools.build(MorphableModel.load(model_path))


def fill_texture(colors: np.ndarray, seen: np.ndarray, tools: MeshTools) -> tuple[np.ndarray, dict]:
    """Complete a per-vertex texture: unseen vertices take their mirror's colour when that is
    seen, then the nearest seen colour over the mesh. Returns the texture and fill fractions.

    Both fills are then blended into their surroundings so that no seam or flat facet shows:
    the mirrored region gets a smooth (harmonic) colour offset that matches the seen colours
    along its border (Poisson blending on the mesh), and the diffused region is relaxed to the
    harmonic interpolant of its border colours."""
    colors = np.array(colors, np.float32)
    seen = np.asarray(seen, bool)
    n = len(colors)
    if not seen.any():
        colors[:] = 128.0
        return colors, {"seen": 0.0, "mirrored": 0.0, "diffused": 1.0}
    # one ring of mesh erosion: isolated seen specks would pin spikes into the blended fills
    has_edges = tools.indptr[1:] > tools.indptr[:-1]
    ring = np.logical_and.reduceat(seen[tools.indices], tools.indptr[:-1][has_edges])
    seen = seen.copy()
    seen[has_edges] &= ring
    mirror = tools.mirror
    mirrored = ~seen & seen[mirror]
    colors[mirrored] = colors[mirror[mirrored]]
    # offset = seen colour minus its mirror's colour, where both are seen; harmonic inside
    offset = np.zeros_like(colors)
    anchor = seen & seen[mirror]
    offset[anchor] = colors[anchor] - colors[mirror[anchor]]
    _relax(offset, mirrored, anchor | mirrored, tools.indptr, tools.indices, RELAX_ITERATIONS, RELAX_OMEGA)
    colors[mirrored] += offset[mirrored]
    known = seen | mirrored
    reached = _diffuse(colors, known.copy(), tools.indptr, tools.indices)
    hidden = reached & ~known
    _relax(colors, hidden, reached, tools.indptr, tools.indices, RELAX_ITERATIONS, RELAX_OMEGA)
    colors[~reached] = colors[known].mean(axis=0)  # vertices on no triangle: never drawn
    np.clip(colors, 0.0, 255.0, out=colors)
    return colors, {"seen": float(seen.sum()) / n, "mirrored": float(mirrored.sum()) / n,
                    "diffused": float((~known).sum()) / n}


def face_region_mask(landmarks: np.ndarray, shape_hw) -> np.ndarray:
    """(H, W) bool: where a photo shows face skin, by its 68 landmarks: inside the jaw line and
    a forehead above the brows (raised by 0.8 nose lengths along the face's up direction).
    Mesh vertices that the fit projects outside it would sample hair, neck or background."""
    pts = np.asarray(landmarks, np.float32)
    up = pts[27] - pts[33]  # nose bridge top minus nose tip: the face's up direction
    brows = pts[26:16:-1] + 0.8 * up
    poly = np.concatenate([pts[:17], brows]).round().astype(np.int32)
    mask = np.zeros(shape_hw, np.uint8)
    cv2.fillPoly(mask, [poly], 1)
    return mask.astype(bool)


def photo_texture(image: np.ndarray, camera_image: np.ndarray, shape_params: np.ndarray,
                  tools: MeshTools, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(n, 3) float32 BGR texture of the fitted mesh, from the photo (step 1 of the stage).
    With the photo's 68 landmarks, only vertices inside ``face_region_mask`` count as seen."""
    model = tools.model
    verts = model.vertices(shape_params)
    tv = cam.transform(camera_image, verts)
    h, w = image.shape[:2]
    zbuf = rasterize_depth(tv, model.triangles, h, w)
    px = np.rint(tv[:, 0]).astype(np.int64)
    py = np.rint(tv[:, 1]).astype(np.int64)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    front = np.zeros(len(tv), bool)
    s = abs(float(camera_image[cam.S]))
    front[inside] = tv[inside, 2] <= zbuf[py[inside], px[inside]] + PHOTO_DEPTH_TOLERANCE_MM * s
    rot = cam.rotation_matrix(*camera_image[cam.PITCH:cam.ROLL + 1])
    facing = -(vertex_normals(verts, model.triangles) @ rot[2])  # cosine to the viewer (-z)
    seen = inside & front & (facing > GRAZING_COS)
    if landmarks is not None:
        region = face_region_mask(landmarks, (h, w))
        seen[inside] &= region[py[inside], px[inside]]
    return fill_texture(sample_colours(image, tv[:, :2]), seen, tools)


def sample_colours(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 3) float32 colours at (n, 2) pixel positions (pixel centres at integers), edge pixels
    repeated outside. OpenCV's remap, not ``dff_extractor.bilinear_sample`` (zero outside, float
    weights): the synthesized data were made with this one, and its fixed-point weights differ in
    the last bits."""
    n = len(points)
    cols = 256  # remap wants maps under 32767 on a side
    pad = np.zeros(((n + cols - 1) // cols * cols, 2), np.float32)
    pad[:n] = points
    maps = pad.reshape(-1, cols, 2)
    out = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, image.shape[2])[:n].astype(np.float32)
