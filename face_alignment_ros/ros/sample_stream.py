"""A small sample stream of a real face for demos, tests and benchmarks: scikit-image's
astronaut photo (Eileen Collins, public domain) with a slow synthetic head motion (shifts and
in-plane rotations of the photo). Generated on the fly, nothing is shipped.

This is a data source, not part of the processing pipeline.
"""
from __future__ import annotations

import cv2
import numpy as np

FACE_CENTRE = (225.0, 125.0)  # face centre in the 512x512 photo, px
FACE_SIZE = 100.0             # face width in the photo, px


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def sample_frames(n: int, width: int = 640, height: int = 480, face_px: float = 150.0, fps: float = 15.0):
    """``n`` BGR frames (height, width, 3): the face, about ``face_px`` wide, drifting around the
    image centre by up to 8% of the width and rolling by up to 8 degrees, a 4 s cycle."""
    photo = astronaut_bgr()
    zoom = face_px / FACE_SIZE
    for i in range(n):
        phase = 2.0 * np.pi * i / (4.0 * fps)
        angle = 8.0 * np.sin(phase)
        dx, dy = 0.08 * width * np.sin(phase), 0.05 * height * np.sin(2 * phase)
        m = cv2.getRotationMatrix2D(FACE_CENTRE, angle, zoom)
        m[:, 2] += np.array([width / 2 + dx, height / 2 + dy]) - np.array(FACE_CENTRE)
        yield cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
