"""Detector-box starts on rendered and profiled crops (stages ``synthesize`` / ``profile``).

Those crops come framed by the landmark box (canonical crop with box-like jitter), but users run
the shipped detector, whose box sits differently on a turned face: at yaw 60-90 degrees BlazeFace's
box is about 15 % smaller than the detector prior expects and twice as spread (docs/training.md,
round 6). The descent must learn to recover from such starts, so a share of those crops is
re-cropped from the detector's box on the crop, through the ``detector`` box prior, jittered the
way photos' detector starts are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_detector import FaceDetector, matched_detection
from face_alignment_ros.training.photo_records import perturbed_crop_box

MATCH_IOU = 0.3  # as for the photos' detections (photo_records.load_photo_records)
KEYPOINTS = 6    # BlazeFace's


@dataclass
class CropDetections:
    """The detector's matching box per crop, NaN where it found none, and its keypoints, NaN
    where it gave none."""
    boxes: np.ndarray      # (n, 4)
    keypoints: np.ndarray  # (n, KEYPOINTS, 2)

    def __len__(self) -> int:
        return len(self.boxes)

    def found(self, i: int) -> bool:
        return bool(np.all(np.isfinite(self.boxes[i])))

    def keypoints_of(self, i: int) -> np.ndarray | None:
        return self.keypoints[i] if np.all(np.isfinite(self.keypoints[i])) else None


def detect_crops(images, landmarks, detector: FaceDetector) -> CropDetections:
    """The detection that best overlaps each crop's landmark box (IoU at least ``MATCH_IOU``)."""
    out = CropDetections(np.full((len(images), 4), np.nan, np.float32),
                         np.full((len(images), KEYPOINTS, 2), np.nan, np.float32))
    for i in tqdm(range(len(images)), desc="detector on crops", unit="crop", mininterval=5):
        found = matched_detection(detector.detect(np.ascontiguousarray(images[i])),
                                  face_crop.landmark_box(np.asarray(landmarks[i])), MATCH_IOU)
        if found is not None:
            out.boxes[i] = found.box
            if found.keypoints is not None and len(found.keypoints) == KEYPOINTS:
                out.keypoints[i] = found.keypoints
    return out


def cached_detections(cache: Path, data: dict, detector_name: str) -> CropDetections:
    """``detect_crops`` on all of ``data``'s crops, run once and kept in ``cache`` (.npz; one
    from before keypoints is redone)."""
    if cache.exists():
        saved = np.load(cache)
        if "keypoints" in saved and len(saved["boxes"]) == len(data["images"]):
            return CropDetections(saved["boxes"], saved["keypoints"])
    from face_alignment_ros.core.face_detector import create_detector

    found = detect_crops(data["images"], data["landmarks"], create_detector(detector_name))
    np.savez(cache, boxes=found.boxes, keypoints=found.keypoints)
    return found


def recrop_from_detector(data: dict, rows, detections: CropDetections, prior: face_crop.BoxPrior,
                         rng: np.random.Generator | None, jitter: float) -> dict:
    """The crops of ``rows`` re-cropped (same size) from their detector box (and keypoints)
    through ``prior``, jittered by ``jitter`` times its spread (none without ``rng``), with
    landmarks and camera carried into the new crop (and their yaw bin and identity); rows
    without a detection are left out."""
    rows = [int(i) for i in rows if detections.found(i)]
    size = int(np.asarray(data["images"][0]).shape[0]) if len(data["images"]) else 0
    images = np.zeros((len(rows), size, size, 3), np.uint8)
    landmarks = np.zeros((len(rows), 68, 2), np.float32)
    cameras = np.zeros((len(rows), 6), np.float32)
    for j, i in enumerate(rows):
        box, keypoints = detections.boxes[i], detections.keypoints_of(i)
        box = (perturbed_crop_box(prior, box, rng, jitter, keypoints) if rng is not None and jitter > 0
               else prior.crop_box(box, keypoints))
        images[j] = face_crop.crop_image(np.asarray(data["images"][i]), box, size)[0]
        landmarks[j] = face_crop.image_to_crop(np.asarray(data["landmarks"][i]), box, size)
        cameras[j] = face_crop.camera_image_to_crop(np.asarray(data["camera"][i], np.float32), box, size)
    return {"images": images, "landmarks": landmarks, "camera": cameras,
            "yaw_bin": np.asarray(data["yaw_bin"])[rows], "identity": np.asarray(data["identity"])[rows]}
