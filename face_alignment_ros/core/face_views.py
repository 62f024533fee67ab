"""What a fitted face is republished as for people-tracking stacks (ROS4HRI, REP-155): its
region of the image and 70 landmarks with confidences, both in normalised image coordinates,
and two face images. ``ros/hri.py`` copies these into hri_msgs messages.

Normalised coordinates: pixel centres sit at integer coordinates (docs/CONVENTIONS.md), so an
image of W x H pixels spans [-0.5, W - 0.5] x [-0.5, H - 0.5], and that span maps onto [0, 1].
Points outside the image are clipped onto its border (the messages allow only [0, 1]) and get
confidence 0, since the clipped position is not theirs.

Landmark confidence: the fit's confidence for a landmark the fitted model sees, half of it for
one it hides (self-occluded: placed by the model, not seen in the image). Each pupil is the mean
of its eye's six points, with their mean confidence.
"""
from __future__ import annotations

import numpy as np

from face_alignment_ros.core.face_crop import canonical_crop_box, crop_image, landmark_box

# iBUG 68 order: the person's right eye (image left in a frontal view), then the left eye.
RIGHT_EYE = np.arange(36, 42)
LEFT_EYE = np.arange(42, 48)
NUM_POINTS = 70  # the 68, then the right pupil (68) and the left pupil (69), as ROS4HRI numbers them
OCCLUDED_WEIGHT = 0.5
FACE_IMAGE_SIZE = 128  # side of the cropped and aligned images; the cascade's crop size too


def normalise(points, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) image pixels -> (n, 2) normalised coordinates clipped to [0, 1], and (n,) flags:
    true where the point lies inside the image."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    norm = (p + 0.5) / np.array([width, height], np.float64)
    inside = np.all((norm >= 0.0) & (norm <= 1.0), axis=1)
    return np.clip(norm, 0.0, 1.0), inside


def landmarks_with_pupils(face) -> tuple[np.ndarray, np.ndarray]:
    """(70, 2) image pixels and (70,) confidences: the 68 landmarks, then the two pupils."""
    points = np.asarray(face.landmarks, np.float64)
    weight = np.where(np.asarray(face.visible, bool), 1.0, OCCLUDED_WEIGHT)
    conf = float(face.confidence) * weight
    pupils = np.stack([points[RIGHT_EYE].mean(axis=0), points[LEFT_EYE].mean(axis=0)])
    return (np.concatenate([points, pupils]),
            np.concatenate([conf, [conf[RIGHT_EYE].mean(), conf[LEFT_EYE].mean()]]))


def face_points(face, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(70, 2) normalised landmarks and pupils, and their (70,) confidences (module doc)."""
    points, conf = landmarks_with_pupils(face)
    norm, inside = normalise(points, width, height)
    return norm, np.where(inside, conf, 0.0)


def face_region(face, width: int, height: int) -> np.ndarray:
    """(xmin, ymin, xmax, ymax) normalised: the tight box of the 68 landmarks, clipped."""
    norm, _ = normalise(landmark_box(face.landmarks).reshape(2, 2), width, height)
    return norm.reshape(4)


def cropped_face(image_bgr: np.ndarray, face, size: int = FACE_IMAGE_SIZE) -> np.ndarray:
    """The face's region as a (size, size, 3) image: the square on the landmark box's centre
    whose side is the box's longer side (pixels beyond the image edge repeat the edge)."""
    x0, y0, x1, y1 = (float(v) for v in landmark_box(face.landmarks))
    half = 0.5 * max(x1 - x0, y1 - y0, 1.0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return crop_image(image_bgr, (cx - half, cy - half, cx + half, cy + half), size)[0]


def aligned_face(image_bgr: np.ndarray, face, size: int = FACE_IMAGE_SIZE) -> np.ndarray:
    """The face's canonical crop (core/face_crop.py) as a (size, size, 3) image: centred on the
    fitted model's origin and scaled to the face, the frame the cascade aligns in."""
    return crop_image(image_bgr, canonical_crop_box(face.camera), size)[0]
