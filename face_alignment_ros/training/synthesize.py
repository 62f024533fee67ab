"""Stage ``synthesize`` (paper Sec. III-A, as 300W-LP does): multi-view faces from fitted photos.

For each photo fitted by stage ``fit``:

1. Texture: a colour per model vertex, sampled (bilinear) from the photo at the fitted mesh's
   projected vertices. Vertices the photo does not show well (occluded by the depth buffer, seen
   at a grazing angle, or outside the photo) take the colour of their mirror vertex across the
   face's symmetry plane when that one is seen, and the rest the colour of the nearest seen
   vertices over the mesh (breadth-first diffusion).
2. Views: the identity is re-rendered at random poses (yaw uniform in -90..90 degrees, pitch and
   roll normal with sigma 12 degrees clipped to +-30), expressions drawn from the 3DMM prior and a
   jittered canonical crop (+-10% scale, +-5% shift, as a detector's box would give), straight
   into an N x N crop. The face is shaded by a random directional light, jittered in colour,
   composited over a real background patch (photo regions away from the face), then blurred and
   noised mildly.

Outputs in ``<work>/synthesize/``, one set per split (``train_*`` and ``heldout_*``), all
memory-mapped ``.npy`` so that later stages read samples without loading the lot:

==========================  ===================  =================================================
file                        shape, dtype         content
==========================  ===================  =================================================
``{split}_images``          (n, N, N, 3) uint8   BGR render
``{split}_vertex_ids``      (n, N, N) uint16     vertex of the covering triangle with the largest
                                                 barycentric; 65535 = background
``{split}_camera``          (n, 6) float32       weak-perspective camera in crop pixels
``{split}_shape``           (n, 50) float32      40 identity then 10 expression parameters
``{split}_landmarks``       (n, 68, 2) float32   crop pixels; jaw points on the silhouette
``{split}_landmark_ids``    (n, 68) int32        vertex ids of those 68 (contour_landmarks)
``{split}_landmark_visible``(n, 68) bool         VisibilityTester on those vertices
``{split}_dense``           (n, 160, 2) float32  the 160 dense landmarks (fixed vertex ids)
``{split}_dense_visible``   (n, 160) bool        VisibilityTester on the fixed vertex ids
``{split}_identity``        (n,) int32           row of ``fit/fits.npz``
``{split}_view``            (n,) int16           view number within the identity
``{split}_yaw_bin``         (n,) int8            0: |yaw| in [0,30], 1: [30,60], 2: [60,90]
==========================  ===================  =================================================

With ``--photo-views N`` (default 4) the stage also writes ``photo_train_*`` (N jittered crops of
each training photo itself, labelled by its fit) and ``photo_heldout_*`` (one crop per held-out
photo, a monitor only), in the same layout: see ``photo_views``.

Sample ``identity * views + view`` is seeded by (seed, split, identity, view) alone, so results do
not depend on the number of workers, and a run resumes at the last checkpoint (``progress.json``,
the count of identities done per split, written atomically after the arrays are flushed).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numba import njit
from scipy.spatial import cKDTree

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core.mesh_topology import triangle_normals
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import rasterize_depth, rasterize_ids
from face_alignment_ros.core.threads import limit_blas_threads
from face_alignment_ros.core.visibility import VisibilityTester
from face_alignment_ros.training.stage_io import Stage

STAGE = "synthesize"
SPLITS = ("train", "heldout")
DEFAULT_SIZE = 128
DEFAULT_TRAIN_SAMPLES = 30000
DEFAULT_PHOTO_VIEWS = 4  # crops of each training photo itself (photo_views)
DEFAULT_HELDOUT_VIEWS_PER_BIN = 12
YAW_BINS_DEG = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))
PITCH_ROLL_SIGMA_DEG = 12.0
PITCH_ROLL_CLIP_DEG = 30.0
SCALE_JITTER = 0.10      # crop side x U(1 - j, 1 + j)
SHIFT_JITTER = 0.05      # crop centre + U(-j, j) crop sides
BACKGROUND_ID = 65535
# A photo pixel seen this obliquely (cosine between normal and view) is a stretched smear:
# such vertices take mirrored or diffused colour instead.
GRAZING_COS = 0.35
# Depth-test slack in mm (times the scale): the buffer is sampled at the vertex's pixel centre.
PHOTO_DEPTH_TOLERANCE_MM = 3.0
BACKGROUND_PATCHES_PER_PHOTO = 3
SPLIT_CODE = {"train": 0, "heldout": 1}


# --------------------------------------------------------------------------------------------
# Mesh helpers, precomputed once per model
# --------------------------------------------------------------------------------------------

def mirror_vertex_map(mean: np.ndarray) -> np.ndarray:
    """(n,) int32: for each vertex, the mean-shape vertex nearest to its mirror (-x, y, z)."""
    _, idx = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0], np.float32))
    return idx.astype(np.int32)


def vertex_adjacency(n_vertices: int, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of the mesh's vertex graph."""
    t = np.asarray(triangles, np.int64)
    a = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
    b = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
    key = np.unique(a * n_vertices + b)
    a, b = key // n_vertices, key % n_vertices
    indptr = np.zeros(n_vertices + 1, np.int64)
    np.cumsum(np.bincount(a, minlength=n_vertices), out=indptr[1:])
    return indptr, b.astype(np.int32)


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


@njit(cache=True, nogil=True)
def _front_facing(tv, triangles):
    """Triangles whose outward normal faces the camera: negative signed image area (y down)."""
    out = np.empty(triangles.shape[0], np.bool_)
    for t in range(triangles.shape[0]):
        i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        area = ((tv[i1, 0] - tv[i0, 0]) * (tv[i2, 1] - tv[i0, 1])
                - (tv[i2, 0] - tv[i0, 0]) * (tv[i1, 1] - tv[i0, 1]))
        out[t] = area < 0
    return out


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
    return fill_texture(bilinear_sample(image, tv[:, :2]), seen, tools)


def bilinear_sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 3) float32 colours at (n, 2) pixel positions (pixel centres at integers)."""
    n = len(points)
    cols = 256  # remap wants maps under 32767 on a side
    pad = np.zeros(((n + cols - 1) // cols * cols, 2), np.float32)
    pad[:n] = points
    maps = pad.reshape(-1, cols, 2)
    out = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, image.shape[2])[:n].astype(np.float32)


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------

def _face_exclusion_box(landmarks: np.ndarray, shape_hw) -> np.ndarray:
    x0, y0, x1, y1 = face_crop.landmark_box(landmarks)
    w, h = x1 - x0, y1 - y0
    # hair above the brows and the neck below the chin belong to the person, not the background
    return np.array([x0 - 0.25 * w, y0 - 0.6 * h, x1 + 0.25 * w, y1 + 0.35 * h], np.float32)


def background_patches(image: np.ndarray, landmarks: np.ndarray, size: int, count: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``count`` size x size patches of a photo away from its face; where the face fills
    the photo, the widest strip beside it; failing that the whole photo, flipped and blurred."""
    h, w = image.shape[:2]
    ex = _face_exclusion_box(landmarks, (h, w))
    out = []
    for _ in range(20 * count):
        if len(out) == count:
            break
        side = int(rng.uniform(0.2, 0.45) * min(h, w))
        if side < 16:
            break
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        ix = max(0.0, min(x0 + side, ex[2]) - max(x0, ex[0]))
        iy = max(0.0, min(y0 + side, ex[3]) - max(y0, ex[1]))
        if ix * iy < 0.08 * side * side:
            out.append(cv2.resize(image[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA))
    if out:
        return out
    strips = [image[:, :max(int(ex[0]), 0)], image[:, min(int(ex[2]), w):],
              image[:max(int(ex[1]), 0), :], image[min(int(ex[3]), h):, :]]
    strip = max(strips, key=lambda a: min(a.shape[:2]) if a.size else 0)
    if strip.size and min(strip.shape[:2]) >= 8:
        return [cv2.resize(strip, (size, size), interpolation=cv2.INTER_AREA)]
    whole = cv2.resize(image[:, ::-1], (size, size), interpolation=cv2.INTER_AREA)
    return [cv2.GaussianBlur(whole, (0, 0), size / 16.0)]


# --------------------------------------------------------------------------------------------
# Inputs and sampling
# --------------------------------------------------------------------------------------------

@dataclass
class Fits:
    subset: np.ndarray
    name: np.ndarray
    split: np.ndarray
    image_path: np.ndarray
    camera: np.ndarray
    shape_params: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> "Fits":
        with np.load(path, allow_pickle=False) as d:
            missing = [f for f in cls.__dataclass_fields__ if f not in d.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing} (expected the output of stage fit)")
            return cls(**{f: d[f] for f in cls.__dataclass_fields__})

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for arr in (self.camera, self.shape_params, self.split.astype(str), self.name.astype(str)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def resolve_image(path: str, subset: str, name: str) -> Path:
    p = Path(str(path))
    if p.exists():
        return p
    data = resources.data_dir()
    for cand in ([data / p, data / "300w" / subset / f"{name}.jpg", data / "300w" / subset / f"{name}.png"]
                 if data is not None else []):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"photo {path} ({subset}/{name}) not found; set FACE_DATA_DIR")


def read_image(fits: Fits, row: int) -> np.ndarray:
    path = resolve_image(fits.image_path[row], str(fits.subset[row]), str(fits.name[row]))
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {path}")
    return image


def sample_rng(seed: int, split: str, identity: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODE[split], identity, view])


def sample_pose(rng: np.random.Generator, split: str, view: int, views_per_bin: int) -> tuple[float, float, float, int]:
    """(pitch, yaw, roll) radians and yaw bin. Training views: yaw uniform in -90..90;
    held-out views: ``views_per_bin`` per yaw bin, alternating signs."""
    if split == "train":
        yaw = rng.uniform(-90.0, 90.0)
    else:
        lo, hi = YAW_BINS_DEG[min(view // views_per_bin, len(YAW_BINS_DEG) - 1)]
        yaw = rng.uniform(lo, hi) * (1.0 if view % 2 == 0 else -1.0)
    pitch, roll = np.clip(rng.normal(0.0, PITCH_ROLL_SIGMA_DEG, 2), -PITCH_ROLL_CLIP_DEG, PITCH_ROLL_CLIP_DEG)
    yaw_bin = min(int(abs(yaw) // 30.0), 2)
    return float(np.radians(pitch)), float(np.radians(yaw)), float(np.radians(roll)), yaw_bin


def jittered_crop_camera(pitch: float, yaw: float, roll: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Crop-pixel camera of a face seen through a detector-like box: the canonical crop box,
    scaled by +-SCALE_JITTER and shifted by +-SHIFT_JITTER of its side."""
    camera_image = np.array([1.0, pitch, yaw, roll, 0.0, 0.0], np.float32)
    box = jittered_crop_box(camera_image, rng)
    return face_crop.camera_image_to_crop(camera_image, box, size)


def jittered_crop_box(camera_image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The canonical crop box of an image-pixel camera, scaled by +-SCALE_JITTER and shifted by
    +-SHIFT_JITTER of its side, as a detector's box would place it."""
    box = face_crop.canonical_crop_box(camera_image)
    side = float(box[2] - box[0]) * rng.uniform(1.0 - SCALE_JITTER, 1.0 + SCALE_JITTER)
    centre = 0.5 * (box[:2] + box[2:]) + rng.uniform(-SHIFT_JITTER, SHIFT_JITTER, 2) * side
    return np.concatenate([centre - side / 2, centre + side / 2]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

@dataclass
class Identity:
    row: int
    alpha: np.ndarray      # (40,)
    neutral: np.ndarray    # (n, 3) mean + identity offset, flattened xyz for the expression add
    normals: np.ndarray    # (n, 3) of the neutral face
    texture: np.ndarray    # (n, 3) float32 BGR 0..255
    stats: dict


def prepare_identity(fits: Fits, row: int, tools: MeshTools, image: np.ndarray | None = None) -> Identity:
    model = tools.model
    image = read_image(fits, row) if image is None else image
    texture, stats = photo_texture(image, fits.camera[row], fits.shape_params[row], tools, fits.landmarks[row])
    alpha = np.asarray(fits.shape_params[row][: model.n_id], np.float32)
    neutral = model.mean + (model.id_basis @ alpha).reshape(-1, 3)
    return Identity(row, alpha, neutral, vertex_normals(neutral, model.triangles), texture, stats)


_CLOSE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _close_holes(tri_id: np.ndarray, bary: np.ndarray) -> None:
    """The mesh has holes (nostrils, ear and jaw regions) through which the background would
    show: background pixels enclosed by the face, and notches that a 5x5 closing fills, copy the
    nearest covered pixel, in place."""
    mask = (tri_id >= 0).astype(np.uint8)
    holes = (cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _CLOSE_KERNEL) > mask)
    n_bg, bg_labels = cv2.connectedComponents(1 - mask, connectivity=4)
    if n_bg > 2:
        border = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
        holes |= ~np.isin(bg_labels, border) & (mask == 0)
    if not holes.any():
        return
    _, labels = cv2.distanceTransformWithLabels(1 - mask, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    covered = np.flatnonzero(mask.reshape(-1))
    lut = np.zeros(labels.max() + 1, np.int64)
    lut[labels.reshape(-1)[covered]] = covered
    src = lut[labels[holes]]
    tri_id[holes] = tri_id.reshape(-1)[src]
    bary[holes] = bary.reshape(-1, 3)[src]


def render_sample(ident: Identity, tools: MeshTools, size: int, split: str, view: int, seed: int,
                  views_per_bin: int, backgrounds: np.ndarray) -> dict:
    """One synthetic view of an identity (step 2 of the stage); every draw comes from the
    per-sample generator."""
    model = tools.model
    rng = sample_rng(seed, split, ident.row, view)
    pitch, yaw, roll, yaw_bin = sample_pose(rng, split, view, views_per_bin)
    beta = (rng.standard_normal(model.n_exp) * model.exp_sigma).astype(np.float32)
    params = np.concatenate([ident.alpha, beta])
    verts = ident.neutral + (beta @ tools.exp_basis_t).reshape(-1, 3)
    camera = jittered_crop_camera(pitch, yaw, roll, size, rng)
    rot = cam.rotation_matrix(pitch, yaw, roll)
    tv = cam.transform(camera, verts)

    vid, mask, corners, w = visible_surface(tv, model.triangles, size)

    # per-vertex colour: texture x colour gain x directional light
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.5), -1.0], np.float32)
    light /= np.linalg.norm(light)
    strength = rng.uniform(0.0, 0.6)
    lambert = np.maximum(ident.normals @ (rot.T @ light), 0.0)
    shade = (1.0 - strength) + strength * 1.25 * lambert
    gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    vcol = ident.texture * shade[:, None] * gain
    face = np.einsum("pk,pkc->pc", w, vcol[corners])

    # composite over a real background
    bg = backgrounds[rng.integers(len(backgrounds))].astype(np.float32)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if rng.random() < 0.3:
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.8, 2.5))
    bg = bg * rng.uniform(0.7, 1.2, 3).astype(np.float32)
    img = np.ascontiguousarray(bg)
    img[mask] = face
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)[..., None]
    img = alpha * img + (1.0 - alpha) * bg  # soft silhouette, no stair steps

    image = photometric_jitter(img, rng)
    return sample_record(tools, image, vid, camera, params, verts, tv, ident.row, view, yaw_bin)


def visible_surface(tv: np.ndarray, triangles: np.ndarray, size: int):
    """Rasterise a mesh already in crop pixels: (vertex_ids (N, N) uint16, mask, the covering
    triangles' corner ids, their barycentrics) with the mesh's holes closed."""
    # Back faces never show on a face mask seen from the front half-space; culling them halves
    # the raster work and keeps the mask's inside out of profile views.
    tris = triangles[_front_facing(tv, triangles)]
    _, tri_id, bary = rasterize_ids(tv, tris, size, size)
    _close_holes(tri_id, bary)
    mask = tri_id >= 0
    corners = tris[tri_id[mask]]
    w = bary[mask]
    vid = np.full((size, size), BACKGROUND_ID, np.uint16)
    vid[mask] = corners[np.arange(len(corners)), np.argmax(w, axis=1)]
    return vid, mask, corners, w


def photometric_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global contrast, brightness and gamma jitter, mild blur and noise -> uint8."""
    img = np.asarray(img, np.float32)
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-20.0, 20.0)
    img = (img - img.mean()) * contrast + img.mean() + brightness
    img = 255.0 * (np.clip(img, 0.0, 255.0) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.normal(0.0, rng.uniform(0.0, 4.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def sample_record(tools: MeshTools, image, vid, camera, params, verts, tv, identity: int, view: int,
                  yaw_bin: int) -> dict:
    """One sample in the layout of ``output_specs``: landmarks and visibility from the mesh."""
    model = tools.model
    rot = cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1])
    ids68 = model.contour_landmarks(rot, params).astype(np.int32)
    dense_ids = model.dense_landmarks
    vis = tools.visibility.visible(camera, params, verts[np.concatenate([ids68, dense_ids])])
    return {
        "images": image, "vertex_ids": vid, "camera": camera, "shape": params,
        "landmarks": tv[ids68, :2], "landmark_ids": ids68, "landmark_visible": vis[:68],
        "dense": tv[dense_ids, :2], "dense_visible": vis[68:],
        "identity": identity, "view": view, "yaw_bin": yaw_bin,
    }


def output_specs(size: int) -> dict:
    return {
        "images": ((size, size, 3), np.uint8), "vertex_ids": ((size, size), np.uint16),
        "camera": ((6,), np.float32), "shape": ((50,), np.float32),
        "landmarks": ((68, 2), np.float32), "landmark_ids": ((68,), np.int32),
        "landmark_visible": ((68,), bool), "dense": ((160, 2), np.float32),
        "dense_visible": ((160,), bool), "identity": ((), np.int32), "view": ((), np.int16),
        "yaw_bin": ((), np.int8),
    }


def open_outputs(folder: Path, split: str, n: int, size: int, mode: str) -> dict:
    out = {}
    for key, (shape, dtype) in output_specs(size).items():
        path = folder / f"{split}_{key}.npy"
        if mode == "w+":
            out[key] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape))
        else:
            out[key] = np.load(path, mmap_mode="r+")
            if out[key].shape != (n, *shape):
                raise ValueError(f"{path} has shape {out[key].shape}, expected {(n, *shape)}: rerun with --restart")
    return out


def load_outputs(work_dir: str | Path | None = None, split: str = "train") -> dict:
    """Read-only memory maps of a split's samples, keyed as in ``output_specs``."""
    folder = (Path(work_dir) if work_dir else resources.work_dir()) / STAGE
    return {key: np.load(folder / f"{split}_{key}.npy", mmap_mode="r") for key in output_specs(1)}


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_CTX: dict = {}


def _init_worker(ctx: dict) -> None:
    # Thread limits are set by run() before the fork: cv2.setNumThreads in a forked child whose
    # parent had a busy OpenCV pool hangs.
    _CTX.clear()
    _CTX.update(ctx)


def _render_identity(task: tuple[str, int]) -> tuple[str, int, dict, dict]:
    split, row = task
    c = _CTX
    t0, cpu0 = time.perf_counter(), time.process_time()
    ident = prepare_identity(c["fits"], row, c["tools"])
    t1, cpu1 = time.perf_counter(), time.process_time()
    views = c["views"][split]
    samples = [render_sample(ident, c["tools"], c["size"], split, v, c["seed"], c["views_per_bin"],
                             c["backgrounds"][split]) for v in range(views)]
    t2 = time.perf_counter()
    cpu2 = time.process_time()
    batch = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}
    info = dict(ident.stats, prepare_s=t1 - t0, render_s=t2 - t1, views=views,
                prepare_cpu_s=cpu1 - cpu0, render_cpu_s=cpu2 - cpu1)
    return split, row, batch, info


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def _add(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    # The dispatcher may already define shared options (--work-dir, --seed).
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--work-dir", default=None, help="work folder (default $FACE_WORK_DIR or ~/.cache/...)")
    _add(parser, "--seed", type=int, default=0, help="random seed")
    _add(parser, "--fits", default=None, help="fits file (default <work>/fit/fits.npz)")
    _add(parser, "--size", type=int, default=DEFAULT_SIZE, help="crop side in pixels (the DFF input size)")
    _add(parser, "--train-samples", type=int, default=DEFAULT_TRAIN_SAMPLES,
         help="about this many training samples; views per identity follow")
    _add(parser, "--views", type=int, default=None, help="views per training identity (overrides --train-samples)")
    _add(parser, "--heldout-views-per-bin", type=int, default=DEFAULT_HELDOUT_VIEWS_PER_BIN,
         help="held-out views per yaw bin [0,30], [30,60], [60,90] (signs alternate)")
    _add(parser, "--photo-views", type=int, default=DEFAULT_PHOTO_VIEWS,
         help="jittered crops of each training photo itself, labelled by its fit, for the DFF (0: none)")
    _add(parser, "--limit", type=int, default=0, help="use only the first N identities of each split (trials)")
    _add(parser, "--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    _add(parser, "--chunk", type=int, default=16, help="identities per checkpoint")
    _add(parser, "--restart", action="store_true", help="discard earlier outputs and start over")
    _add(parser, "--sheet-samples", type=int, default=32, help="samples on the contact sheet")


def _identity_rows(fits: Fits, limit: int) -> dict:
    rows = {s: np.flatnonzero(fits.split.astype(str) == s) for s in SPLITS}
    if limit:
        rows = {s: r[:limit] for s, r in rows.items()}
    return rows


def _build_backgrounds(fits: Fits, rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    patches = []
    for row in rows:
        try:
            image = read_image(fits, int(row))
        except (OSError, FileNotFoundError):
            continue
        patches += background_patches(image, fits.landmarks[row], size, BACKGROUND_PATCHES_PER_PHOTO, rng)
    if not patches:  # no photo readable: flat grey, so that the stage still runs
        patches = [np.full((size, size, 3), 127, np.uint8)]
    return np.stack(patches)


def run(args: argparse.Namespace) -> int:
    stage = Stage(STAGE, getattr(args, "work_dir", None), seed=getattr(args, "seed", 0))
    log = stage.log
    fits_path = Path(args.fits) if getattr(args, "fits", None) else stage.input("fit", "fits.npz")
    fits = Fits.load(fits_path)
    rows = _identity_rows(fits, args.limit)
    n_train = len(rows["train"])
    views = {"train": args.views or max(1, int(round(args.train_samples / max(n_train, 1)))),
             "heldout": args.heldout_views_per_bin * len(YAW_BINS_DEG)}
    config = {"fits": fits.fingerprint(), "size": args.size, "seed": stage.seed, "views": views,
              "views_per_bin": args.heldout_views_per_bin, "identities": {s: len(r) for s, r in rows.items()},
              "version": 1}
    progress_path = stage.path("progress.json")
    done = {s: 0 for s in SPLITS}
    if progress_path.exists() and not args.restart:
        import json

        prev = json.loads(progress_path.read_text())
        if prev.get("config") != config:
            log.error("outputs in %s were made with other settings (%s); rerun with --restart to discard them",
                      stage.dir, prev.get("config"))
            return 2
        done = prev["done"]
    fresh = not progress_path.exists() or args.restart
    if fresh and args.restart:
        for p in list(stage.dir.glob("*.npy")) + [progress_path, stage.path("metrics.jsonl")]:
            p.unlink(missing_ok=True)
    totals = {s: len(rows[s]) * views[s] for s in SPLITS}
    outputs = {s: open_outputs(stage.dir, s, totals[s], args.size, "w+" if fresh else "r+") for s in SPLITS}
    if fresh:
        stage.save_json("progress.json", {"config": config, "done": done})
    log.info("synthesize: %s identities, %s views each -> %s samples at %dx%d (fits %s); resuming at %s",
             {s: len(r) for s, r in rows.items()}, views, totals, args.size, args.size, fits_path, done)

    t_start = time.perf_counter()
    # One thread per process: the workers fill the cores, and spinning BLAS or OpenCV threads
    # beside them slow the many small operations several-fold.
    restore = (cv2.getNumThreads(), limit_blas_threads(1))
    cv2.setNumThreads(1)
    rng = stage.rng()
    backgrounds = {s: _build_backgrounds(fits, rows[s], args.size, rng) for s in SPLITS}
    log.info("background bank: %s patches (%.1f s)", {s: len(b) for s, b in backgrounds.items()},
             time.perf_counter() - t_start)
    tools = default_tools()
    ctx = {"fits": fits, "tools": tools, "size": args.size, "seed": stage.seed, "views": views,
           "views_per_bin": args.heldout_views_per_bin, "backgrounds": backgrounds}
    tasks = [(s, int(r)) for s in SPLITS for r in rows[s][done[s]:]]

    from tqdm import tqdm

    remaining = sum(views[s] for s, _ in tasks)
    bar = tqdm(total=sum(totals.values()), initial=sum(totals.values()) - remaining, unit="sample",
               desc="synthesize", dynamic_ncols=True)
    pool = None
    if args.workers > 1 and len(tasks) > 1:
        pool = mp.get_context("fork").Pool(args.workers, _init_worker, (ctx,))
        results = pool.imap(_render_identity, tasks, chunksize=1)
    else:
        _init_worker(ctx)
        results = map(_render_identity, tasks)
    t_loop = time.perf_counter()
    cpu = {"prepare_s": 0.0, "render_s": 0.0, "prepare_cpu_s": 0.0, "render_cpu_s": 0.0, "samples": 0,
           "identities": 0}
    chunk_stats: list[dict] = []
    try:
        for split, row, batch, info in results:
            k = done[split]
            lo = k * views[split]
            for key, arr in batch.items():
                outputs[split][key][lo:lo + len(arr)] = arr
            done[split] = k + 1
            for key in ("prepare_s", "render_s", "prepare_cpu_s", "render_cpu_s"):
                cpu[key] += info[key]
            cpu["samples"] += info["views"]
            cpu["identities"] += 1
            chunk_stats.append(info)
            bar.update(info["views"])
            if len(chunk_stats) >= args.chunk or done[split] == len(rows[split]):
                _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop)
                chunk_stats = []
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        _CTX.clear()
        cv2.setNumThreads(restore[0])
        if restore[1] is not None:
            limit_blas_threads(restore[1])
        if chunk_stats:
            _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop)

    wall = time.perf_counter() - t_loop
    from face_alignment_ros.training.photo_views import make_photo_views

    t_photos = time.perf_counter()
    photo_counts = make_photo_views(stage, fits, rows, tools, args.size, args.photo_views, stage.seed) \
        if args.photo_views > 0 else {}
    photo_s = time.perf_counter() - t_photos
    summary = {
        "counts": totals, "views": views, "size": args.size, "seed": stage.seed, "fits": str(fits_path),
        "workers": args.workers, "rendered_this_run": cpu["samples"],
        "wall_s_this_run": round(wall, 1), "total_s_this_run": round(time.perf_counter() - t_start, 1),
        "wall_ms_per_sample": round(1000 * wall / max(cpu["samples"], 1), 2),
        # worker wall time (shared machines inflate it) and worker CPU time (one core's cost)
        "worker_ms_per_sample_render": round(1000 * cpu["render_s"] / max(cpu["samples"], 1), 2),
        "worker_ms_per_identity_texture": round(1000 * cpu["prepare_s"] / max(cpu["identities"], 1), 1),
        "cpu_ms_per_sample_render": round(1000 * cpu["render_cpu_s"] / max(cpu["samples"], 1), 2),
        "cpu_ms_per_identity_texture": round(1000 * cpu["prepare_cpu_s"] / max(cpu["identities"], 1), 1),
        "cpu_ms_per_sample_all": round(1000 * (cpu["render_cpu_s"] + cpu["prepare_cpu_s"])
                                       / max(cpu["samples"], 1), 2),
    }
    if cpu["samples"] == 0 and stage.path("summary.json").exists():
        import json  # nothing rendered now: keep the timings of the run that rendered

        summary = dict(json.loads(stage.path("summary.json").read_text()), counts=totals)
    summary["photo_counts"] = photo_counts
    if photo_counts and photo_s > 1.0:
        summary["photo_views_s"] = round(photo_s, 1)
    sheets = write_sheets(stage, args.sheet_samples)
    summary["sheets"] = [str(p) for p in sheets]
    stage.save_json("summary.json", summary)
    if len(stage.metrics()) > 1:
        stage.plot_curves("samples_done", ["wall_ms_per_sample", "texture_seen", "coverage"])
    log.info("done: %s", summary)
    return 0


def _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop) -> None:
    for arrays in outputs.values():
        for arr in arrays.values():
            arr.flush()
    stage.save_json("progress.json", {"config": config, "done": done})
    out = outputs[split]
    hi = done[split] * views[split]
    lo = max(0, hi - sum(s["views"] for s in chunk_stats))
    coverage = float((out["vertex_ids"][lo:hi] != BACKGROUND_ID).mean()) if hi > lo else 0.0
    n = sum(s["views"] for s in chunk_stats)
    stage.record(split=split, samples_done=int(sum(done[s] * views[s] for s in SPLITS)),
                 wall_ms_per_sample=round(1000 * (time.perf_counter() - t_loop)
                                          / max(sum(done[s] * views[s] for s in SPLITS), 1), 2),
                 cpu_ms_per_sample=round(1000 * sum(s.get("render_cpu_s", s["render_s"]) for s in chunk_stats)
                                         / max(n, 1), 2),
                 texture_seen=float(np.mean([s["seen"] for s in chunk_stats])),
                 texture_mirrored=float(np.mean([s["mirrored"] for s in chunk_stats])),
                 texture_diffused=float(np.mean([s["diffused"] for s in chunk_stats])),
                 coverage=coverage)


# --------------------------------------------------------------------------------------------
# Contact sheets
# --------------------------------------------------------------------------------------------

def colourise_vertex_ids(vid: np.ndarray, tools: MeshTools) -> np.ndarray:
    """BGR picture of a vertex-id map: each vertex coloured by its mean-shape position."""
    out = np.zeros((*vid.shape, 3), np.uint8)
    fg = vid != BACKGROUND_ID
    out[fg] = tools.vertex_colours[vid[fg]]
    return out


def draw_sample(image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, scale: int = 2) -> np.ndarray:
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    pts = (landmarks + 0.5) * scale - 0.5
    for i, ((x, y), v) in enumerate(zip(pts, visible)):
        colour = (0, 255, 0) if v else (0, 0, 255)
        if i < 17:
            colour = (255, 255, 0) if v else (255, 0, 255)
        cv2.circle(big, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
    return big


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = t
    return sheet


def write_sheets(stage: Stage, count: int = 32) -> list[Path]:
    """Contact sheets: renders with their 68 landmarks (jaw cyan/magenta, others green; red or
    magenta = not visible), and image | vertex-id map pairs."""
    import json

    from face_alignment_ros.training.photo_views import PHOTO_SPLITS

    tools = None
    written = []
    for split in (*SPLITS, *PHOTO_SPLITS):
        try:
            data = load_outputs(stage.root, split)
        except FileNotFoundError:
            continue
        n = len(data["view"])
        if split in SPLITS:  # renders: only the samples done so far
            prog = json.loads(stage.path("progress.json").read_text())
            n = min(prog["done"][split] * prog["config"]["views"][split], n)
        if n == 0 or count <= 0:
            continue
        if tools is None:
            tools = default_tools()
        idx = np.linspace(0, n - 1, min(count, n)).astype(int)
        idx = idx[np.argsort(data["camera"][idx, cam.YAW], kind="stable")]  # left-to-right by yaw
        tiles = [draw_sample(data["images"][i], data["landmarks"][i], data["landmark_visible"][i]) for i in idx]
        path = stage.path(f"contact_sheet_{split}.png")
        cv2.imwrite(str(path), _grid(tiles, 8))
        written.append(path)
        pairs = []
        for i in idx[:: max(1, len(idx) // 8)][:8]:
            pairs.append(np.concatenate([data["images"][i], colourise_vertex_ids(data["vertex_ids"][i], tools)], axis=1))
        path = stage.path(f"vertex_ids_{split}.png")
        cv2.imwrite(str(path), cv2.resize(_grid(pairs, 4), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face-align-train synthesize", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
