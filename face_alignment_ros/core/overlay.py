"""Draw an aligned face for people: mesh wireframe, visible landmarks, head-pose axes."""
from __future__ import annotations

import cv2
import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.head_frame import MODEL_FROM_HEAD, sellion_mm

AXIS_MM = 70.0
AXIS_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # head x red, y green, z blue (BGR)


def draw_face(image_bgr: np.ndarray, face, wireframe: bool = True, box: bool = True) -> np.ndarray:
    """A copy of the image with the face drawn on it."""
    out = image_bgr.copy() if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    thick = max(1, int(round(max(out.shape[:2]) / 500)))
    if wireframe:
        verts = face.vertices
        tris = face.triangles
        normals = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
        facing = normals[:, 2] < 0  # towards the camera (smaller depth is nearer)
        edges = verts[tris[facing]][:, :, :2]
        overlay = out.copy()
        cv2.polylines(overlay, np.round(edges * 4).astype(np.int32), True, (200, 200, 200), 1,
                      cv2.LINE_AA, shift=2)
        out = cv2.addWeighted(overlay, 0.35, out, 0.65, 0)
    if box:
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 200, 0), thick)
    for (x, y), vis in zip(face.landmarks, face.visible):
        colour = (0, 255, 0) if vis else (0, 0, 255)
        cv2.circle(out, (int(round(x)), int(round(y))), thick + 1, colour, -1 if vis else thick, cv2.LINE_AA)
    origin = sellion_mm(face.model, face.params)
    tips = origin + AXIS_MM * MODEL_FROM_HEAD.T  # rows: head axes in the model frame
    pts = cam.project(face.camera, np.vstack([origin, tips]))
    o = tuple(int(round(v)) for v in pts[0])
    for tip, colour in zip(pts[1:], AXIS_COLOURS):
        cv2.arrowedLine(out, o, tuple(int(round(v)) for v in tip), colour, thick + 1, cv2.LINE_AA, tipLength=0.15)
    return out


def draw_faces(image_bgr: np.ndarray, faces) -> np.ndarray:
    out = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    for face in faces:
        out = draw_face(out, face)
    return out if faces else out.copy()
