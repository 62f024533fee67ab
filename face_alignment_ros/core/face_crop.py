"""The canonical face crop: where the network and the cascade look, and how a box gets there.

A face under camera (s, angles, tx, ty) in image pixels has its canonical crop: the square of
side ``s * FACE_SPAN_MM`` centred on the projected model origin (tx, ty). Resampled to N x N,
the same face has, in crop pixels, s_crop = N / FACE_SPAN_MM and t_crop = (N/2, N/2) whatever
its size and place in the image: the cascade therefore starts from one fixed camera.

A detector (or landmark) box predicts the canonical crop through ``BoxPrior``: the crop centre
is the box centre plus (dx, dy) box sides, and the crop side is the box side times
exp(log_scale). The priors are means over training photos and are stored with each descent
model, because they depend on the detector that made the boxes. A detector that also gives
facial keypoints (BlazeFace's six) can have the offsets predicted from them instead: a turned
face's box sits differently on it (smaller, higher, off-centre: docs/training.md, round 7), and
the keypoints' layout says how far and which way it turns. That prior is linear in
``keypoint_features`` (``keypoint_intercept`` + ``keypoint_coef`` @ features, ridge-fitted by
``training/keypoint_box_prior.py``); without keypoints the constant offsets apply.

Crop convention (the one place it is written): the square box (x0, y0, x1, y1) in image pixels
(pixel centres at integer coordinates) maps affinely onto the N x N crop so that image point
(x0, y0) lands on crop pixel centre (0, 0) and (x1, y1) on (N, N), i.e. scale N / (x1 - x0): the
crop covers [x0, x1) with N samples. ``crop_affine`` is that map as a 2x3 matrix,
``image_to_crop`` / ``crop_to_image`` the same map on points and ``camera_image_to_crop`` /
``camera_crop_to_image`` on cameras. ``crop_image`` resamples: pixels outside the image are
filled with ``BORDER_REPLICATE`` (edge pixels repeated): a constant fill would put a hard
artificial edge into faces near the image border, which a convolutional descriptor would react
to; replicated borders look like smooth background. Resampling is bilinear (``INTER_AREA`` is
not available for warps); for strong down-scaling (box more than twice the crop) the image is
first pyramided down with ``cv2.pyrDown`` to avoid aliasing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from face_alignment_ros.core import camera as cam

FACE_SPAN_MM = 200.0
# Smallest box side a face is aligned from: far below the detector's 24 px minimum; a smaller
# box cannot hold a face, and a crop from it would be resampled blur.
MIN_BOX_SIDE_PX = 8.0


def box_side(box) -> float:
    """The geometric mean of a box's width and height: the unit of the prior's offsets."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return float(np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)))


def keypoint_features(box, keypoints) -> np.ndarray:
    """(3k,) features of k detector keypoints in their box: each point's offset from the box
    centre in box sides, x then y, then the x offsets' magnitudes (how far the face turns,
    whichever way: a turned face's box is smaller on it either way)."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = (float(v) for v in box)
    rel = (kp - [0.5 * (x0 + x1), 0.5 * (y0 + y1)]) / box_side(box)
    return np.concatenate([rel[:, 0], rel[:, 1], np.abs(rel[:, 0])])


@dataclass(frozen=True)
class BoxPrior:
    dx: float = 0.0
    dy: float = 0.0
    log_scale: float = 0.0
    # spread over training photos, used to perturb initialisations when learning descents
    std_dx: float = 0.0
    std_dy: float = 0.0
    std_log_scale: float = 0.0
    # (dx, dy, log_scale) = keypoint_intercept + keypoint_coef @ keypoint_features, where the
    # detector gave keypoints; empty: the constant offsets above everywhere
    keypoint_intercept: tuple[float, ...] = ()
    keypoint_coef: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self):
        # JSON gives lists; a frozen prior holds tuples
        object.__setattr__(self, "keypoint_intercept", tuple(float(v) for v in self.keypoint_intercept))
        object.__setattr__(self, "keypoint_coef", tuple(tuple(float(v) for v in row) for row in self.keypoint_coef))

    @property
    def keypoint_count(self) -> int:
        """How many detector keypoints the keypoint term reads (0: none)."""
        return len(self.keypoint_coef[0]) // 3 if self.keypoint_coef else 0

    def offsets(self, box, keypoints=None) -> np.ndarray:
        """(dx, dy, log_scale) for a box, from its keypoints where the prior has a keypoint term
        and the detector gave as many keypoints as it reads; the constant offsets otherwise."""
        if keypoints is not None and self.keypoint_count and np.size(keypoints) == 2 * self.keypoint_count \
                and np.all(np.isfinite(keypoints)):
            features = keypoint_features(box, keypoints)
            return np.asarray(self.keypoint_intercept) + np.asarray(self.keypoint_coef) @ features
        return np.array([self.dx, self.dy, self.log_scale])

    def crop_box(self, box, keypoints=None) -> np.ndarray:
        """Square crop box (x0, y0, x1, y1) predicted from a box (and the detector's keypoints)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        side = box_side(box)
        dx, dy, log_scale = self.offsets(box, keypoints)
        cx = 0.5 * (x0 + x1) + dx * side
        cy = 0.5 * (y0 + y1) + dy * side
        half = 0.5 * side * np.exp(log_scale)
        return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def fit(cls, boxes: np.ndarray, cameras: np.ndarray) -> BoxPrior:
        """Mean and spread of the box -> canonical-crop offsets over (n, 4) boxes and their
        (n, 6) ground-truth image cameras."""
        dx, dy, log_scale = box_offsets(boxes, cameras).T
        return cls(float(dx.mean()), float(dy.mean()), float(log_scale.mean()),
                   float(dx.std()), float(dy.std()), float(log_scale.std()))


def box_offsets(boxes: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """(n, 3) true (dx, dy, log_scale) of the canonical crops of (n, 6) image cameras from
    (n, 4) boxes: what a prior predicts."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cameras = np.asarray(cameras, np.float64).reshape(-1, 6)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    dx = (cameras[:, cam.TX] - 0.5 * (boxes[:, 0] + boxes[:, 2])) / side
    dy = (cameras[:, cam.TY] - 0.5 * (boxes[:, 1] + boxes[:, 3])) / side
    log_scale = np.log(cameras[:, cam.S] * FACE_SPAN_MM / side)
    return np.stack([dx, dy, log_scale], axis=1)


def box_problem(box, image_shape: tuple[int, ...]) -> str | None:
    """Why no face can be aligned from ``box`` in an image of ``image_shape``; None if one can.
    A box may reach past the border (a face at the edge) but must overlap the image."""
    b = np.asarray(box, np.float32).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        return f"box must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {b.tolist()}"
    width, height = float(b[2] - b[0]), float(b[3] - b[1])
    if min(width, height) < MIN_BOX_SIDE_PX:
        return f"box {b.tolist()} is {width:g} x {height:g} px; a face needs at least {MIN_BOX_SIDE_PX:g} px a side"
    rows, cols = image_shape[:2]
    if b[2] <= 0 or b[3] <= 0 or b[0] >= cols or b[1] >= rows:
        return f"box {b.tolist()} lies entirely outside the {cols} x {rows} image"
    return None


def check_box(box, image_shape: tuple[int, ...]) -> np.ndarray:
    """``box`` as float32 (x0, y0, x1, y1), or a ``ValueError`` saying why no face can be
    aligned from it (see ``box_problem``)."""
    problem = box_problem(box, image_shape)
    if problem:
        raise ValueError(problem)
    return np.asarray(box, np.float32).reshape(-1)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1) of (n, 2) points."""
    pts = np.asarray(points, np.float32)
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def canonical_crop_box(camera_image: np.ndarray) -> np.ndarray:
    """The canonical crop box of a face under an image-pixel camera."""
    s, tx, ty = float(camera_image[cam.S]), float(camera_image[cam.TX]), float(camera_image[cam.TY])
    half = 0.5 * s * FACE_SPAN_MM
    return np.array([tx - half, ty - half, tx + half, ty + half], np.float32)


def crop_scale(crop_box: np.ndarray, crop_size: int) -> float:
    """Crop pixels per image pixel."""
    return crop_size / float(crop_box[2] - crop_box[0])


def image_to_crop(points: np.ndarray, crop_box: np.ndarray, crop_size: int) -> np.ndarray:
    return (np.asarray(points, np.float32) - crop_box[:2]) * crop_scale(crop_box, crop_size)


def crop_to_image(points: np.ndarray, crop_box: np.ndarray, crop_size: int) -> np.ndarray:
    return np.asarray(points, np.float32) / crop_scale(crop_box, crop_size) + crop_box[:2]


def camera_image_to_crop(camera_image: np.ndarray, crop_box: np.ndarray, crop_size: int) -> np.ndarray:
    """The same weak-perspective camera expressed in crop pixels."""
    k = crop_scale(crop_box, crop_size)
    out = np.array(camera_image, np.float32)
    out[cam.S] *= k
    out[cam.TX:cam.TY + 1] = (out[cam.TX:cam.TY + 1] - crop_box[:2]) * k
    return out


def camera_crop_to_image(camera_crop: np.ndarray, crop_box: np.ndarray, crop_size: int) -> np.ndarray:
    k = crop_scale(crop_box, crop_size)
    out = np.array(camera_crop, np.float32)
    out[cam.S] /= k
    out[cam.TX:cam.TY + 1] = out[cam.TX:cam.TY + 1] / k + crop_box[:2]
    return out


def initial_camera(crop_size: int) -> np.ndarray:
    """The cascade's starting camera in crop pixels: frontal, canonical scale, centred."""
    return np.array([crop_size / FACE_SPAN_MM, 0.0, 0.0, 0.0, crop_size / 2.0, crop_size / 2.0], np.float32)


def validate_image(image: np.ndarray) -> np.ndarray:
    """Check a detector input and return it as a contiguous uint8 BGR (H, W, 3) array.

    Accepts BGR ``(H, W, 3)`` and gray ``(H, W)`` or ``(H, W, 1)`` uint8 images; raises
    ``ValueError`` otherwise.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be BGR (H, W, 3) or gray (H, W), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    return np.ascontiguousarray(image)


def crop_affine(crop_box, size: int) -> np.ndarray:
    """2x3 affine image -> crop for a square ``crop_box`` resampled to ``size`` x ``size``."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"crop box {crop_box} is empty")
    sx, sy = size / w, size / h  # equal for a square box; kept apart so a near-square box works
    return np.array([[sx, 0.0, -sx * x0], [0.0, sy, -sy * y0]], dtype=np.float64)


def apply_affine(affine: np.ndarray, points) -> np.ndarray:
    """(n, 2) points through a 2x3 affine."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"expected a gray, BGR or BGRA image, got shape {image.shape}")


def crop_image(image: np.ndarray, crop_box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 BGR crop and the 2x3 affine image -> crop (see module doc)."""
    image = _to_bgr(np.asarray(image))
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    affine = crop_affine(crop_box, size)
    src, a = image, affine.copy()
    # Anti-aliasing: halve the source while the crop is still > 2x smaller than the box.
    while a[0, 0] < 0.5 and min(src.shape[:2]) >= 4:
        src = cv2.pyrDown(src)
        # pyrDown maps source pixel centre 2i to i (centres at integers).
        a[:, :2] *= 2.0
    crop = cv2.warpAffine(src, a, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, affine
