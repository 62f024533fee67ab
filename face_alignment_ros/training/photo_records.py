"""Training photos for the descent stages: each photo's annotation, fitted camera and matching
detector box; the validation part of the training identities (lambda and stage choices); the
box priors; perturbed crop boxes and mirror images (the starts a descent learns to correct)."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.photo_split import hashed_percentile, source_id
from face_alignment_ros.common.render_format import FIT_STAGE, FITS_FILE
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_detector import BLAZEFACE_KEYPOINT_MIRROR, create_detector, matched_detection
from face_alignment_ros.core.morphable_model import IBUG68_MIRROR
from face_alignment_ros.training.stage_io import Stage

VALIDATION_PERCENT = 10  # of the training identities, for choosing lambda
KEYPOINT_PRIOR_STAGE = "box-prior"          # training.keypoint_box_prior
KEYPOINT_PRIOR_FILE = "detector_prior.json"  # its keypoint terms of the detector prior


def is_validation(subset: str, name: str) -> bool:
    return hashed_percentile(f"validation/{subset}/{source_id(name)}") < VALIDATION_PERCENT


@dataclass
class PhotoRecord:
    image_path: str
    subset: str
    name: str
    split: str
    landmarks: np.ndarray   # (68, 2) annotated
    camera: np.ndarray      # (6,) fitted, image px
    detector_box: np.ndarray | None
    detector_keypoints: np.ndarray | None = None  # (6, 2) BlazeFace's, with its box


def validation_identities(stage: Stage) -> np.ndarray:
    """(n,) bool per fitted photo (the identity index of renders and profiled views): whether it
    belongs to the validation part of the training identities."""
    fits = np.load(stage.input(FIT_STAGE, FITS_FILE), allow_pickle=False)
    return np.array([is_validation(str(a), str(b)) for a, b in zip(fits["subset"], fits["name"])])


def load_photo_records(stage: Stage, detector_name: str) -> list[PhotoRecord]:
    """Fitted photos with the detector's matching box and keypoints (cached: the detector runs
    once; a cache from before keypoints is redone)."""
    import cv2

    fits = np.load(stage.input(FIT_STAGE, FITS_FILE), allow_pickle=False)
    cache = stage.path(f"detections_{detector_name}.npz")
    cached = np.load(cache) if cache.exists() else {}
    if "keypoints" in cached and len(cached["boxes"]) == len(fits["name"]):
        boxes, keypoints = cached["boxes"], cached["keypoints"]
    else:
        detector = create_detector(detector_name)
        boxes = np.full((len(fits["name"]), 4), np.nan, np.float32)
        keypoints = np.full((len(fits["name"]), 6, 2), np.nan, np.float32)
        for i, path in enumerate(tqdm(fits["image_path"], desc=f"detector {detector_name}", unit="img")):
            found = matched_detection(detector.detect(cv2.imread(str(path))),
                                      face_crop.landmark_box(fits["landmarks"][i]))
            if found is not None:
                boxes[i] = found.box
                if found.keypoints is not None and len(found.keypoints) == 6:
                    keypoints[i] = found.keypoints
        np.savez(cache, boxes=boxes, keypoints=keypoints)
    records = []
    for i in range(len(fits["name"])):
        box = boxes[i] if np.all(np.isfinite(boxes[i])) else None
        kp = keypoints[i] if box is not None and np.all(np.isfinite(keypoints[i])) else None
        records.append(PhotoRecord(str(fits["image_path"][i]), str(fits["subset"][i]), str(fits["name"][i]),
                                   str(fits["split"][i]), fits["landmarks"][i].astype(np.float32),
                                   fits["camera"][i].astype(np.float32), box, kp))
    return records


def fit_box_priors(records: list[PhotoRecord]) -> dict[str, face_crop.BoxPrior]:
    train = [r for r in records if r.split == "train"]
    with_det = [r for r in train if r.detector_box is not None]
    return {
        "detector": face_crop.BoxPrior.fit(np.stack([r.detector_box for r in with_det]),
                                           np.stack([r.camera for r in with_det])),
        "landmarks": face_crop.BoxPrior.fit(np.stack([face_crop.landmark_box(r.landmarks) for r in train]),
                                            np.stack([r.camera for r in train])),
    }


def keypoint_terms(work_root) -> dict | None:
    """The detector prior's keypoint terms that stage box-prior wrote into the work folder; None
    where it has not run."""
    path = Path(work_root) / KEYPOINT_PRIOR_STAGE / KEYPOINT_PRIOR_FILE
    return json.loads(path.read_text()) if path.exists() else None


def with_keypoint_terms(prior: face_crop.BoxPrior, terms: dict) -> face_crop.BoxPrior:
    return replace(prior, keypoint_intercept=tuple(terms["keypoint_intercept"]),
                   keypoint_coef=tuple(map(tuple, terms["keypoint_coef"])))


def perturbed_crop_box(prior: face_crop.BoxPrior, box: np.ndarray, rng: np.random.Generator,
                       amount: float, keypoints=None) -> np.ndarray:
    """The prior's crop box of ``box`` (and the detector's keypoints), moved and scaled by normal
    draws of ``amount`` times the prior's spread over training photos (initialisations a descent
    learns to correct)."""
    crop = prior.crop_box(box, keypoints)
    side = float(crop[2] - crop[0])
    centre = 0.5 * (crop[:2] + crop[2:]) + amount * side * rng.normal(0, 1, 2) * [prior.std_dx, prior.std_dy]
    half = 0.5 * side * np.exp(amount * prior.std_log_scale * rng.normal())
    return np.array([*(centre - half), *(centre + half)], np.float32)


def mirror_record(record: PhotoRecord, image: np.ndarray) -> tuple[PhotoRecord, np.ndarray]:
    """The left-right mirror of a photo and its annotation (landmarks reordered, camera mirrored)."""
    width = image.shape[1]
    landmarks = record.landmarks[IBUG68_MIRROR].copy()
    landmarks[:, 0] = width - 1.0 - landmarks[:, 0]
    box = keypoints = None
    if record.detector_box is not None:
        x0, y0, x1, y1 = record.detector_box
        box = np.array([width - 1.0 - x1, y0, width - 1.0 - x0, y1], np.float32)
    if record.detector_keypoints is not None:
        keypoints = record.detector_keypoints[list(BLAZEFACE_KEYPOINT_MIRROR)].copy()
        keypoints[:, 0] = width - 1.0 - keypoints[:, 0]
    mirrored = replace(record, landmarks=landmarks, camera=cam.mirror_camera(record.camera, width), detector_box=box,
                       detector_keypoints=keypoints)
    return mirrored, np.ascontiguousarray(image[:, ::-1])


def record_crop_box(record: PhotoRecord, prior: face_crop.BoxPrior, kind: str) -> np.ndarray | None:
    """The prior's crop of a photo from its detector box (with its keypoints) or its landmark
    box; None where the detector missed it."""
    if kind == "detector":
        return None if record.detector_box is None else prior.crop_box(record.detector_box, record.detector_keypoints)
    return prior.crop_box(face_crop.landmark_box(record.landmarks))


def perturbed_start(record: PhotoRecord, k: int, priors: dict[str, face_crop.BoxPrior], rng: np.random.Generator,
                    jitter: float) -> np.ndarray:
    """The crop box of start ``k`` of a photo: detector and landmark boxes alternate (the
    landmark box where the detector missed), through the box priors, jittered."""
    use_detector = record.detector_box is not None and k % 2 == 0
    kind = "detector" if use_detector else "landmarks"
    if use_detector:
        return perturbed_crop_box(priors[kind], record.detector_box, rng, jitter, record.detector_keypoints)
    return perturbed_crop_box(priors[kind], face_crop.landmark_box(record.landmarks), rng, jitter)
