"""Face profiling (Zhu et al., 3DDFA / 300W-LP): a photo re-rendered with its fitted head turned
to a larger yaw, face, hair, ears, neck and background together.

The photo becomes a 2D-triangulated 3D surface:
- the fitted mesh's vertices that the photo shows (depth buffer), thinned to one per cell of a
  pixel grid, with their fitted depths;
- anchor points on a regular grid over a window around the face (outside the face), whose depth
  continues the face's silhouette depth outwards (the head curves away: +``HEAD_SLOPE`` per
  pixel of distance, up to the back of the head).
Everything is triangulated in the photo (scipy Delaunay); the texture coordinates of every point
are its photo position. The head turns about its own vertical axis through the model origin
(``yaw += delta``, pitch and roll kept): a point p goes to ``M (p - c) + c`` with
``M = R_new R_old^T`` and c the projected model origin. The face turns exactly with the fit;
an anchor turns with the head weighted by ``head_weight`` of its distance to the face, so
hair and ears turn with it and the far background stays where it was (the camera and the room
do not move). The turned surface is rasterised into the output crop with a depth buffer
(``core.rasterizer``; far anchors sit behind everything) and each crop pixel takes the photo's
colour at its interpolated texture coordinate. The labels come from the turned fit exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.face_crop import FACE_SPAN_MM
from face_alignment_ros.core.rasterizer import rasterize_depth, rasterize_ids

WINDOW_SPANS = 1.3        # half-side of the anchor window, in canonical crop sides (model span)
RASTER = 256              # side of the working raster over the window (visibility, distances)
ANCHOR_CELLS = 48         # anchors per window side
VERTEX_CELL_CROP = 1.5    # one face vertex per cell of this many output-crop pixels
DEPTH_TOLERANCE_MM = 6.0  # a vertex is seen when no deeper than the buffer plus this
HEAD_SLOPE = 0.6          # depth gained per pixel of distance from the face (head curves away)
HEAD_BACK_MM = 90.0       # the back of the head, behind the model origin
TURN_FULL_MM = 35.0       # anchors within this distance of the face turn fully with the head
TURN_NONE_MM = 130.0      # ... and beyond this one not at all (background, shoulders)
FAR_DEPTH_MM = 400.0      # depth of non-turning anchors: behind the turned head


@dataclass
class PhotoSurface:
    """A photo as a triangulated surface (everything in photo pixels)."""
    points: np.ndarray        # (m, 3) x, y, depth (px), face vertices first
    texture: np.ndarray       # (m, 2) photo position of each point
    weight: np.ndarray        # (m,) 1: turns with the head, 0: stays (background)
    triangles: np.ndarray     # (t, 3) int32
    n_face: int               # the first n_face points are mesh vertices
    vertex_ids: np.ndarray    # (n_face,) their mesh ids
    pivot: np.ndarray         # (3,) projected model origin (tx, ty, 0)


def head_weight(distance_mm: np.ndarray) -> np.ndarray:
    """1 within TURN_FULL_MM of the face, 0 beyond TURN_NONE_MM, a cosine ramp between."""
    t = np.clip((np.asarray(distance_mm, np.float32) - TURN_FULL_MM) / (TURN_NONE_MM - TURN_FULL_MM), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _window(camera: np.ndarray) -> tuple[np.ndarray, float]:
    """Origin (x0, y0) and pixel size of the working raster: a square of half-side
    WINDOW_SPANS canonical crop sides around the projected model origin."""
    half = WINDOW_SPANS * FACE_SPAN_MM * float(camera[cam.S])
    origin = np.array([camera[cam.TX] - half, camera[cam.TY] - half], np.float32)
    return origin, 2.0 * half / RASTER


def photo_surface(camera: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, output_px: float) -> PhotoSurface:
    """The triangulated surface of a fitted photo (``camera`` in photo pixels, ``vertices`` the
    fitted mesh in model mm); ``output_px``: photo pixels per output-crop pixel (sets the face
    vertex density)."""
    s = float(camera[cam.S])
    tv = cam.transform(camera, vertices)
    origin, px = _window(camera)
    # working raster: the face's depth, for visibility, the face mask and silhouette depths
    grid = tv.copy()
    grid[:, :2] = (tv[:, :2] - origin) / px
    zbuf = rasterize_depth(grid, triangles, RASTER, RASTER)
    face = np.isfinite(zbuf)
    gi = np.clip(np.rint(grid[:, :2]).astype(np.int64), 0, RASTER - 1)
    inside = np.all((grid[:, :2] >= 0) & (grid[:, :2] <= RASTER - 1), axis=1)
    front = np.full((RASTER + 2, RASTER + 2), -np.inf, np.float32)  # farthest surface of a 3x3 cell
    zb = np.where(face, zbuf, -np.inf).astype(np.float32)
    front[1:-1, 1:-1] = cv2.dilate(zb, np.ones((3, 3), np.uint8))
    seen = inside & (tv[:, 2] <= front[gi[:, 1] + 1, gi[:, 0] + 1] + DEPTH_TOLERANCE_MM * s)
    # thin the seen vertices to one per cell of the output's pixel grid
    cell = VERTEX_CELL_CROP * output_px
    ids = np.flatnonzero(seen)
    keys = np.floor(tv[ids, :2] / cell).astype(np.int64)
    _, first = np.unique(keys[:, 0] * 1_000_003 + keys[:, 1], return_index=True)
    ids = ids[np.sort(first)]

    # anchors: grid cells away from the (slightly dilated) face
    ring = cv2.dilate(face.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    dist, labels = cv2.distanceTransformWithLabels((~face).astype(np.uint8), cv2.DIST_L2, 5,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(labels.max() + 1, np.float32)
    on_face = np.flatnonzero(face.reshape(-1))
    lut[labels.reshape(-1)[on_face]] = zbuf.reshape(-1)[on_face]
    axis = np.linspace(0.0, RASTER - 1.0, ANCHOR_CELLS + 1)
    ax, ay = np.meshgrid(axis, axis)
    a = np.stack([ax.ravel(), ay.ravel()], axis=1)
    ai = np.rint(a).astype(np.int64)
    keep = ~ring[ai[:, 1], ai[:, 0]]
    a, ai = a[keep], ai[keep]
    d_px = dist[ai[:, 1], ai[:, 0]] * px
    z_edge = lut[labels[ai[:, 1], ai[:, 0]]] if face.any() else np.zeros(len(a), np.float32)
    z = np.minimum(z_edge + HEAD_SLOPE * d_px, HEAD_BACK_MM * s)
    anchors = np.column_stack([a * px + origin, z]).astype(np.float32)

    points = np.concatenate([tv[ids], anchors]).astype(np.float32)
    weight = np.concatenate([np.ones(len(ids), np.float32), head_weight(d_px / s)])
    tris = Delaunay(points[:, :2].astype(np.float64)).simplices.astype(np.int32)
    pivot = np.array([camera[cam.TX], camera[cam.TY], 0.0], np.float32)
    return PhotoSurface(points, points[:, :2].copy(), weight, tris, len(ids), ids.astype(np.int32), pivot)


def turned_camera(camera: np.ndarray, delta_yaw: float) -> np.ndarray:
    """The camera with the head turned by ``delta_yaw`` radians about its vertical axis."""
    out = np.array(camera, np.float32)
    out[cam.YAW] += delta_yaw
    return out


def turn_points(surface: PhotoSurface, camera: np.ndarray, new_camera: np.ndarray) -> np.ndarray:
    """(m, 3) positions of the surface's points after the head turn from ``camera`` to
    ``new_camera`` (photo pixels and depth); non-turning points are pushed behind the head."""
    m = (cam.rotation_matrix(*new_camera[cam.PITCH:cam.ROLL + 1])
         @ cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]).T)
    p = surface.points - surface.pivot
    turned = p @ m.T + surface.pivot
    w = surface.weight[:, None]
    out = w * turned + (1.0 - w) * surface.points
    out[:, 2] += (1.0 - surface.weight) * FAR_DEPTH_MM * float(camera[cam.S])
    return out.astype(np.float32)


def render_profiled(image: np.ndarray, surface: PhotoSurface, turned: np.ndarray, crop_box: np.ndarray,
                    size: int) -> np.ndarray:
    """The turned surface seen through ``crop_box`` (photo pixels), ``size`` x ``size`` uint8
    BGR, textured from ``image``; pyramided first so that strong down-scaling does not alias."""
    k = size / float(crop_box[2] - crop_box[0])
    pts = turned.copy()
    pts[:, :2] = (turned[:, :2] - crop_box[:2]) * k
    _, tri_id, bary = rasterize_ids(pts, surface.triangles, size, size)
    covered = tri_id >= 0
    corners = surface.triangles[np.maximum(tri_id, 0)]
    uv = np.einsum("hwk,hwkc->hwc", bary, surface.texture[corners])
    if not covered.all():  # outside the anchor window's hull: the nearest covered pixel's colour
        _, lab = cv2.distanceTransformWithLabels((~covered).astype(np.uint8), cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
        cov = np.flatnonzero(covered.reshape(-1))
        lut = np.zeros(lab.max() + 1, np.int64)
        lut[lab.reshape(-1)[cov]] = cov
        src = lut[lab[~covered]]
        uv[~covered] = uv.reshape(-1, 2)[src]
    src_img = image
    scale = 1.0
    while scale / k > 2.0 and min(src_img.shape[:2]) > 32:  # > 2 source px per output px
        src_img = cv2.pyrDown(src_img)
        scale *= 0.5
    # pyrDown maps pixel centre x to (x + 0.5) / 2 - 0.5
    u = ((uv + 0.5) * scale - 0.5).astype(np.float32)
    return cv2.remap(src_img, u[..., 0], u[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
