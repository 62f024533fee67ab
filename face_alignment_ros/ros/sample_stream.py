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


def sample_frames(n: int, width: int = 640, height: int = 480, face_px: float = 150.0, fps: float = 15.0,
                  faces: int = 1):
    """``n`` BGR frames (height, width, 3): the face, about ``face_px`` wide, drifting around the
    image centre by up to 8% of the width and rolling by up to 8 degrees, a 4 s cycle. With
    ``faces`` > 1 the frame is cut into that many vertical strips, one face in each (at most
    60% of a strip wide), each moving with its own phase."""
    photo = astronaut_bgr()
    strip = width / faces
    zoom = min(face_px, 0.6 * strip) / FACE_SIZE
    for i in range(n):
        frame = np.empty((height, width, 3), np.uint8)
        for k in range(faces):
            phase = 2.0 * np.pi * i / (4.0 * fps) + k * 2.0 * np.pi / faces
            angle = 8.0 * np.sin(phase)
            dx, dy = 0.08 * strip * np.sin(phase), 0.05 * height * np.sin(2 * phase)
            m = cv2.getRotationMatrix2D(FACE_CENTRE, angle, zoom)
            m[:, 2] += np.array([strip / 2 + dx, height / 2 + dy]) - np.array(FACE_CENTRE)
            x0, x1 = int(round(k * strip)), int(round((k + 1) * strip))
            frame[:, x0:x1] = cv2.warpAffine(photo, m, (x1 - x0, height), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REFLECT)
        yield frame
