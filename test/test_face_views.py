"""core/face_views.py: normalised coordinates (pixel centres at integers), the 70 ROS4HRI
points with their confidences, the region, and the two face images."""
from types import SimpleNamespace

import numpy as np
import pytest

from face_alignment_ros.core import face_views
from face_alignment_ros.core.face_crop import FACE_SPAN_MM

W, H = 200, 100


def _face(landmarks, visible=None, confidence=0.8, camera=(1.0, 0, 0, 0, 100.0, 50.0)):
    landmarks = np.asarray(landmarks, np.float32)
    visible = np.ones(len(landmarks), bool) if visible is None else np.asarray(visible, bool)
    return SimpleNamespace(landmarks=landmarks, visible=visible, confidence=confidence,
                           camera=np.asarray(camera, np.float32))


def _grid_face(x0=60.0, y0=20.0, step=1.0):
    """68 distinct points inside the image: a 17 x 4 grid."""
    gx, gy = np.meshgrid(np.arange(17) * 4 * step, np.arange(4) * 15 * step)
    return np.c_[gx.ravel() + x0, gy.ravel() + y0][:68]


def test_normalise_maps_the_image_span_onto_unit_square():
    pts = [(-0.5, -0.5), (W - 0.5, H - 0.5), (0, 0), (W / 2 - 0.5, H / 2 - 0.5), (-3, 10), (10, H + 4)]
    norm, inside = face_views.normalise(pts, W, H)
    assert np.allclose(norm[:4], [(0, 0), (1, 1), (0.5 / W, 0.5 / H), (0.5, 0.5)])
    assert inside.tolist() == [True, True, True, True, False, False]
    assert np.allclose(norm[4:], [(0, 10.5 / H), (10.5 / W, 1)])  # clipped onto the border


def test_seventy_points_pupils_and_confidences():
    lms = _grid_face()
    visible = np.ones(68, bool)
    visible[[0, 36, 37]] = False
    lms[16] = (W + 20, 30)  # outside the image
    points, conf = face_views.face_points(_face(lms, visible, 0.8), W, H)
    assert points.shape == (70, 2) and conf.shape == (70,)
    px = points * [W, H] - 0.5
    assert np.allclose(px[:68][np.arange(68) != 16], lms[np.arange(68) != 16], atol=1e-4)
    assert np.allclose(px[68], lms[36:42].mean(axis=0)) and np.allclose(px[69], lms[42:48].mean(axis=0))
    assert conf[0] == pytest.approx(0.4) and conf[1] == pytest.approx(0.8)  # hidden: half
    assert conf[16] == 0.0                                                  # outside: none
    assert conf[68] == pytest.approx(0.8 * (4 + 2 * 0.5) / 6) and conf[69] == pytest.approx(0.8)
    assert np.all((points >= 0) & (points <= 1))


def test_region_is_the_landmark_box():
    lms = _grid_face()
    xmin, ymin, xmax, ymax = face_views.face_region(_face(lms), W, H)
    assert (xmin, ymin) == pytest.approx(((lms[:, 0].min() + 0.5) / W, (lms[:, 1].min() + 0.5) / H))
    assert (xmax, ymax) == pytest.approx(((lms[:, 0].max() + 0.5) / W, (lms[:, 1].max() + 0.5) / H))


def test_cropped_face_is_the_square_on_the_landmark_box():
    lms = _grid_face(x0=60, y0=30, step=0.5)  # box 60..92 x 30..52.5: the longer side is x
    image = np.zeros((H, W, 3), np.uint8)
    image[30:53, 60:93] = 255  # the landmark box, filled
    crop = face_views.cropped_face(image, _face(lms), size=64)
    assert crop.shape == (64, 64, 3)
    rows = crop[:, :, 0].mean(axis=1) > 128
    cols = crop[:, :, 0].mean(axis=0) > 128
    assert cols[2:-2].all()                       # the box spans the width
    assert 0.55 < rows.mean() < 0.85 and rows[32]  # and is centred vertically, shorter


def test_aligned_face_is_the_canonical_crop_of_the_fitted_camera():
    s, tx, ty = 0.3, 120.0, 40.0  # canonical crop: side s * FACE_SPAN_MM = 60 px around (tx, ty)
    image = np.zeros((H, W, 3), np.uint8)
    image[38:43, 118:123] = 255                  # the model origin
    image[:, int(tx - 0.5 * s * FACE_SPAN_MM) - 3] = 255  # a line just left of the crop
    crop = face_views.aligned_face(image, _face(_grid_face(), camera=(s, 0, 0, 0, tx, ty)), size=60)
    assert crop.shape == (60, 60, 3)
    assert crop[30, 30, 0] == 255 and crop[0, 0, 0] == 0 and crop[:, :2].max() == 0
