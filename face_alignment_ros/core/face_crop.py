"""The canonical face crop: where the network and the cascade look, and how a box gets there.

A face under camera (s, angles, tx, ty) in image pixels has its canonical crop: the square of
side ``s * FACE_SPAN_MM`` centred on the projected model origin (tx, ty). Resampled to N x N,
the same face has, in crop pixels, s_crop = N / FACE_SPAN_MM and t_crop = (N/2, N/2) whatever
its size and place in the image: the cascade therefore starts from one fixed camera.

A detector (or landmark) box predicts the canonical crop through ``BoxPrior``: the crop centre
is the box centre plus (dx, dy) box sides, and the crop side is the box side times
exp(log_scale). The priors are means over training photos and are stored with each descent
model, because they depend on the detector that made the boxes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from face_alignment_ros.core import camera as cam

FACE_SPAN_MM = 200.0
# Smallest box side a face is aligned from: far below the detector's 24 px minimum; a smaller
# box cannot hold a face, and a crop from it would be resampled blur.
MIN_BOX_SIDE_PX = 8.0


@dataclass(frozen=True)
class BoxPrior:
    dx: float = 0.0
    dy: float = 0.0
    log_scale: float = 0.0
    # spread over training photos, used to perturb initialisations when learning descents
    std_dx: float = 0.0
    std_dy: float = 0.0
    std_log_scale: float = 0.0

    def crop_box(self, box) -> np.ndarray:
        """Square crop box (x0, y0, x1, y1) predicted from a box."""
        x0, y0, x1, y1 = (float(v) for v in box)
        side = np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6))
        cx = 0.5 * (x0 + x1) + self.dx * side
        cy = 0.5 * (y0 + y1) + self.dy * side
        half = 0.5 * side * np.exp(self.log_scale)
        return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def fit(cls, boxes: np.ndarray, cameras: np.ndarray) -> BoxPrior:
        """Mean and spread of the box -> canonical-crop offsets over (n, 4) boxes and their
        (n, 6) ground-truth image cameras."""
        boxes = np.asarray(boxes, np.float64)
        cameras = np.asarray(cameras, np.float64)
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        dx = (cameras[:, cam.TX] - 0.5 * (boxes[:, 0] + boxes[:, 2])) / side
        dy = (cameras[:, cam.TY] - 0.5 * (boxes[:, 1] + boxes[:, 3])) / side
        log_scale = np.log(cameras[:, cam.S] * FACE_SPAN_MM / side)
        return cls(float(dx.mean()), float(dy.mean()), float(log_scale.mean()),
                   float(dx.std()), float(dy.std()), float(log_scale.std()))


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

