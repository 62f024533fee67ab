"""Synthetic views of a textured identity (step 2 of stage ``synthesize``) and the pieces the
photo views share with them: backgrounds, the fit input, pose and crop sampling, rendering and
the sample record.

The identity is re-rendered at random poses (yaw uniform in -90..90 degrees, pitch and roll
normal with sigma 12 degrees clipped to +-30), expressions drawn from the 3DMM prior and a
jittered canonical crop (+-10% scale, +-5% shift, as a detector's box would give), straight into
an N x N crop. The face is shaded by a random directional light, jittered in colour, composited
over a real background patch (photo regions away from the face), then blurred and noised mildly.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from face_alignment_ros.common.render_format import BACKGROUND_ID, YAW_BINS_DEG, yaw_bin
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core.mesh_topology import front_facing
from face_alignment_ros.core.rasterizer import rasterize_ids
from face_alignment_ros.training.mesh_texture import MeshTools, photo_texture, vertex_normals

PITCH_ROLL_SIGMA_DEG = 12.0
PITCH_ROLL_CLIP_DEG = 30.0
SCALE_JITTER = 0.10      # crop side x U(1 - j, 1 + j)
SHIFT_JITTER = 0.05      # crop centre + U(-j, j) crop sides
SPLIT_CODE = {"train": 0, "heldout": 1}


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
    return float(np.radians(pitch)), float(np.radians(yaw)), float(np.radians(roll)), yaw_bin(yaw)


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
    pitch, yaw, roll, bin_ = sample_pose(rng, split, view, views_per_bin)
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
    return sample_record(tools, image, vid, camera, params, verts, tv, ident.row, view, bin_)


def visible_surface(tv: np.ndarray, triangles: np.ndarray, size: int):
    """Rasterise a mesh already in crop pixels: (vertex_ids (N, N) uint16, mask, the covering
    triangles' corner ids, their barycentrics) with the mesh's holes closed."""
    # Back faces never show on a face mask seen from the front half-space; culling them halves
    # the raster work and keeps the mask's inside out of profile views.
    tris = triangles[front_facing(tv, triangles)]
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
