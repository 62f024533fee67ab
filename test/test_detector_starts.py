"""Detector-box starts on rendered crops: the re-crop carries image, landmarks and camera into the
new frame consistently, misses are left out, and a share of the drawn rows starts from the detector."""
import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_detector import Detection, FaceDetector
from face_alignment_ros.training.detector_starts import CropDetections, detect_crops, recrop_from_detector


def _crops(n=3, size=64):
    """Crops with a bright square whose corners are 4 of the 68 landmarks (the rest at its centre)."""
    images = np.zeros((n, size, size, 3), np.uint8)
    landmarks = np.zeros((n, 68, 2), np.float32)
    cameras = np.zeros((n, 6), np.float32)
    for i in range(n):
        x0, y0, x1, y1 = 16 + 2 * i, 20, 44 + 2 * i, 48
        images[i, y0:y1 + 1, x0:x1 + 1] = 255
        landmarks[i] = [(x0 + x1) / 2, (y0 + y1) / 2]
        landmarks[i, :4] = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
        cameras[i] = [0.2, 0.1, 0.3, 0.0, (x0 + x1) / 2, (y0 + y1) / 2]
    return {"images": images, "landmarks": landmarks, "camera": cameras,
            "yaw_bin": np.array([0, 1, 2][:n], np.int8), "identity": np.arange(n, dtype=np.int32)}


def _found(boxes, keypoints=None):
    """Detections with these boxes (and keypoints; none by default)."""
    boxes = np.asarray(boxes, np.float32)
    return CropDetections(boxes, np.full((len(boxes), 6, 2), np.nan, np.float32) if keypoints is None
                          else np.asarray(keypoints, np.float32))


class _FixedDetector(FaceDetector):
    """Returns the given boxes for every image."""

    def __init__(self, boxes):
        self.boxes = boxes

    def _detect(self, image_bgr):
        return [Detection(tuple(b), 0.9) for b in self.boxes]


def test_detect_crops_keeps_the_matching_box_and_marks_misses():
    data = _crops(2)
    gt = face_crop.landmark_box(data["landmarks"][0])
    far = (0.0, 0.0, 5.0, 5.0)
    found = detect_crops(data["images"], data["landmarks"], _FixedDetector([far, tuple(gt + 1)]))
    assert np.allclose(found.boxes[0], gt + 1)  # the overlapping detection, not the far one
    assert np.allclose(found.boxes[1], gt + 1)  # still IoU >= 0.3 with the shifted square
    assert np.isnan(found.keypoints).all() and found.keypoints_of(0) is None  # this detector gives none
    missed = detect_crops(data["images"], data["landmarks"], _FixedDetector([far]))
    assert np.isnan(missed.boxes).all() and not missed.found(0)


def test_recrop_moves_image_landmarks_and_camera_together():
    data = _crops(3)
    boxes = np.stack([face_crop.landmark_box(lm) for lm in data["landmarks"]]).astype(np.float32)
    boxes[1] = np.nan  # a miss: left out
    prior = face_crop.BoxPrior(dx=0.1, dy=-0.05, log_scale=0.5)
    out = recrop_from_detector(data, [0, 1, 2], _found(boxes), prior, None, 0.0)
    assert out["images"].shape == (2, 64, 64, 3) and list(out["identity"]) == [0, 2]
    assert list(out["yaw_bin"]) == [0, 2]
    for j, i in enumerate([0, 2]):
        box = prior.crop_box(boxes[i])
        scale = 64 / (box[2] - box[0])
        assert np.allclose(out["landmarks"][j], (data["landmarks"][i] - box[:2]) * scale, atol=1e-4)
        # the square's corners are still bright in the new crop, just outside them dark
        for x, y in out["landmarks"][j, :4]:
            assert out["images"][j, int(round(y)), int(round(x))].min() > 100
        cx, cy = out["landmarks"][j, 4]
        assert out["camera"][j, cam.S] == pytest.approx(data["camera"][i, cam.S] * scale, rel=1e-5)
        assert (out["camera"][j, cam.TX], out["camera"][j, cam.TY]) == pytest.approx((cx, cy), abs=1e-3)
        assert np.allclose(out["camera"][j, 1:4], data["camera"][i, 1:4])


def test_recrop_jitters_only_with_a_generator():
    data = _crops(1)
    boxes = face_crop.landmark_box(data["landmarks"][0])[None].astype(np.float32)
    prior = face_crop.BoxPrior(log_scale=0.3, std_dx=0.05, std_dy=0.05, std_log_scale=0.05)
    plain = recrop_from_detector(data, [0], _found(boxes), prior, None, 1.0)
    again = recrop_from_detector(data, [0], _found(boxes), prior, None, 1.0)
    jittered = recrop_from_detector(data, [0], _found(boxes), prior, np.random.default_rng(0), 1.0)
    assert np.array_equal(plain["landmarks"], again["landmarks"])
    assert not np.allclose(plain["landmarks"], jittered["landmarks"], atol=0.1)


def test_render_samples_start_the_given_share_from_the_detector():
    from types import SimpleNamespace

    from face_alignment_ros.training.learn_descent import render_samples

    data = _crops(3)
    boxes = np.stack([face_crop.landmark_box(lm) for lm in data["landmarks"]]).astype(np.float32)
    prior = face_crop.BoxPrior(log_scale=1.5)  # a crop 4.5 times the box: the face shrinks in the crop
    cascade = SimpleNamespace(initial_state=lambda size: None)
    backend = SimpleNamespace(prepare=lambda crop: None)
    rows = [2, 0, 1]  # drawn order: row 2 (and, with 2/3, row 0) from the detector
    plain = render_samples(cascade, backend, data, rows, _found(boxes), prior, None, 0.0, 0.0)
    one = render_samples(cascade, backend, data, rows, _found(boxes), prior, None, 1 / 3, 0.0)
    two = render_samples(cascade, backend, data, rows, _found(boxes), prior, None, 2 / 3, 0.0)

    def spans(samples):
        return sorted(round(float(np.ptp(s.target_landmarks[:, 0])), 2) for s in samples)

    assert spans(plain) == [28.0, 28.0, 28.0]
    assert len(one) == 3 and spans(one)[0] < 20 and spans(one)[1:] == [28.0, 28.0]
    assert spans(two)[:2] == [spans(one)[0]] * 2 and spans(two)[2] == 28.0
    assert len(render_samples(cascade, backend, data, rows, None, prior, None, 1.0, 0.0)) == 3  # no detections
