"""Tests of face_alignment_ros.core.face_detector (fast; data-set tests skip without data)."""
import dataclasses
import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from face_alignment_ros.core.face_detector import (
    Detection, FaceDetector, available_detectors, box_iou, create_detector,
    non_max_suppression)
from face_alignment_ros.core.face_crop import validate_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FACE_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
AFW = os.path.join(DATA_DIR, "300w", "afw")

# Hand-checked tight box of the astronaut's face in skimage.data.astronaut() (512x512).
ASTRONAUT_FACE = (180.0, 80.0, 265.0, 175.0)


def _astronaut_bgr():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def _has(module):
    return importlib.util.find_spec(module) is not None


DETECTOR_PARAMS = [
    pytest.param("default", {}, id="default"),
    pytest.param("blazeface_short", {}, id="blazeface_short",
                 marks=pytest.mark.skipif(not _has("mediapipe"), reason="mediapipe absent")),
    # min_size keeps the pure-Python-fallback cascade fast on a 512 px image.
    pytest.param("cascade", {"min_size": 60}, id="cascade"),
    pytest.param("dlib", {}, id="dlib",
                 marks=pytest.mark.skipif(not _has("dlib"), reason="dlib absent")),
]


@pytest.fixture(scope="module")
def detectors():
    cache = {}

    def get(name, kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = create_detector(name, **kwargs)
        return cache[key]

    return get


@pytest.mark.parametrize("name,kwargs", DETECTOR_PARAMS)
def test_finds_astronaut_face(detectors, name, kwargs):
    det = detectors(name, kwargs)
    assert isinstance(det, FaceDetector) and isinstance(det.name, str)
    found = det.detect(_astronaut_bgr())
    assert found, f"{det.name} found no face"
    assert all(isinstance(d, Detection) for d in found)
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    best = max(box_iou(d.box, ASTRONAUT_FACE) for d in found)
    assert best > 0.5, f"{det.name}: best IoU with the face {best:.2f}"
    if name != "cascade":  # the LBP fallback has no scores and fires on textured background
        assert box_iou(found[0].box, ASTRONAUT_FACE) > 0.5


@pytest.mark.parametrize("name,kwargs", DETECTOR_PARAMS)
def test_blank_images_give_nothing(detectors, name, kwargs):
    det = detectors(name, kwargs)
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert det.detect(np.full((120, 160), 200, np.uint8)) == []


def test_gray_input_accepted(detectors):
    det = detectors("default", {})
    gray = _astronaut_bgr().mean(axis=2).astype(np.uint8)
    found = det.detect(gray)
    assert found and max(box_iou(d.box, ASTRONAUT_FACE) for d in found) > 0.4


@pytest.mark.parametrize("bad", [
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((10, 0), np.uint8),
    np.zeros((48, 64, 3), np.float32),
    np.zeros((48, 64, 3), np.uint16),
    np.zeros((48, 64, 4), np.uint8),
    np.zeros((48, 64, 2), np.uint8),
    np.zeros((2, 48, 64, 3), np.uint8),
    np.zeros(10, np.uint8),
    [[0, 1], [2, 3]],
])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        validate_image(bad)
    with pytest.raises(ValueError):
        create_detector("default").detect(bad)


def test_validate_image_gray_to_bgr():
    out = validate_image(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    assert validate_image(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)


def test_detection_is_frozen():
    d = Detection((0.0, 0.0, 1.0, 1.0), 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.score = 1.0  # type: ignore[misc]


def test_nms_and_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    dets = [Detection((0, 0, 10, 10), 0.5), Detection((1, 1, 11, 11), 0.9),
            Detection((50, 50, 60, 60), 0.7)]
    kept = non_max_suppression(dets, 0.3)
    assert [d.score for d in kept] == [0.9, 0.7]


def test_create_detector_unknown_name():
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("no_such_detector")
    assert "cascade" in available_detectors()


def test_import_is_cheap():
    code = ("import sys, face_alignment_ros.core.face_detector; "
            "print(any(m in sys.modules for m in ('mediapipe', 'dlib', 'torch', 'skimage')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not glob.glob(os.path.join(AFW, "*.pts")),
                    reason=f"300-W AFW data absent ({AFW}); set FACE_DATA_DIR")
def test_default_detector_recall_on_afw_sample(detectors):
    import cv2

    from face_alignment_ros.evaluation.pts_io import read_pts

    det = detectors("default", {})
    paths = sorted(glob.glob(os.path.join(AFW, "*.jpg")))[:20]
    hits = 0
    for p in paths:
        pts = read_pts(p[:-4] + ".pts")
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        gt = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
        found = det.detect(cv2.imread(p))
        hits += any(box_iou(d.box, gt) >= 0.3 for d in found)
    assert hits >= 17, f"default detector found {hits}/20 AFW faces"


def test_pts_round_trip(tmp_path):
    from face_alignment_ros.evaluation.pts_io import read_pts, write_pts

    pts = np.random.default_rng(0).uniform(0, 500, (68, 2)).astype(np.float32)
    write_pts(tmp_path / "a.pts", pts)
    back = read_pts(tmp_path / "a.pts")
    assert back.shape == (68, 2) and back.dtype == np.float32
    np.testing.assert_allclose(back, pts, atol=1e-3)
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
    with pytest.raises(ValueError):
        read_pts(tmp_path / "bad.pts")
