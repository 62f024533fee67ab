"""Detector-box starts on rendered and profiled crops (stages ``synthesize`` / ``profile``).

Those crops come framed by the landmark box (canonical crop with box-like jitter), but users run
the shipped detector, whose box sits differently on a turned face: at yaw 60-90 degrees BlazeFace's
box is about 15 % smaller than the detector prior expects and twice as spread (docs/training.md,
round 6). The descent must learn to recover from such starts, so a share of those crops is
re-cropped from the detector's box on the crop, through the ``detector`` box prior, jittered the
way photos' detector starts are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_detector import FaceDetector, box_iou
from face_alignment_ros.training.photo_records import perturbed_crop_box

MATCH_IOU = 0.3  # as for the photos' detections (photo_records.load_photo_records)


def detect_crops(images, landmarks, detector: FaceDetector) -> np.ndarray:
    """(n, 4) detector box per crop: the detection that best overlaps the landmark box (IoU at
    least ``MATCH_IOU``), NaN where the detector found none."""
    boxes = np.full((len(images), 4), np.nan, np.float32)
    for i in range(len(images)):
        gt_box = face_crop.landmark_box(np.asarray(landmarks[i]))
        best = max(((box_iou(d.box, gt_box), d.box) for d in detector.detect(np.ascontiguousarray(images[i]))),
                   default=(0.0, None))
        if best[0] >= MATCH_IOU:
            boxes[i] = best[1]
    return boxes


def cached_detections(cache: Path, data: dict, detector_name: str) -> np.ndarray:
    """``detect_crops`` on all of ``data``'s crops, run once and kept in ``cache`` (.npz)."""
    if cache.exists():
        boxes = np.load(cache)["boxes"]
        if len(boxes) == len(data["images"]):
            return boxes
    from face_alignment_ros.core.face_detector import create_detector

    boxes = detect_crops(data["images"], data["landmarks"], create_detector(detector_name))
    np.savez(cache, boxes=boxes)
    return boxes


def recrop_from_detector(data: dict, rows, boxes: np.ndarray, prior: face_crop.BoxPrior,
                         rng: np.random.Generator | None, jitter: float) -> dict:
    """The crops of ``rows`` re-cropped (same size) from their detector box through ``prior``,
    jittered by ``jitter`` times its spread (none without ``rng``), with landmarks and camera
    carried into the new crop (and their yaw bin and identity); rows without a detection are left
    out."""
    rows = [int(i) for i in rows if np.all(np.isfinite(boxes[i]))]
    size = int(np.asarray(data["images"][0]).shape[0]) if len(data["images"]) else 0
    images = np.zeros((len(rows), size, size, 3), np.uint8)
    landmarks = np.zeros((len(rows), 68, 2), np.float32)
    cameras = np.zeros((len(rows), 6), np.float32)
    for j, i in enumerate(rows):
        box = (perturbed_crop_box(prior, boxes[i], rng, jitter) if rng is not None and jitter > 0
               else prior.crop_box(boxes[i]))
        images[j] = face_crop.crop_image(np.asarray(data["images"][i]), box, size)[0]
        landmarks[j] = face_crop.image_to_crop(np.asarray(data["landmarks"][i]), box, size)
        cameras[j] = face_crop.camera_image_to_crop(np.asarray(data["camera"][i], np.float32), box, size)
    return {"images": images, "landmarks": landmarks, "camera": cameras,
            "yaw_bin": np.asarray(data["yaw_bin"])[rows], "identity": np.asarray(data["identity"])[rows]}
