"""Tracking figures of docs/ros.md (Tracks): a still scene's stability, and accuracy, steadiness
and cost on moving pseudo-videos made from the held-out 300-W photos.

    python -m face_alignment_ros.evaluation.tracking [--photos 20] [--noise 3] [--smoothing]

- Still scene: the demo photo (and four downsized copies of it tiled 2 x 2) given 10 times,
  after no history or after a shifted or zoomed copy. Reported: the largest landmark motion,
  rotation change and depth range over frames 4-10, and the largest difference of frame 10
  from the run without history.
- Pseudo-video: each photo moved along a smooth path (shift, zoom, roll; up to about 2.7 face
  spans per second at 30 Hz) with two still stretches (frames 10-17 and 26-29), the ground
  truth moved with it, optionally with camera noise. Reported: NME (inter-ocular, %) of the
  tracker and of the single-photo aligner on every frame, the median frame-to-frame landmark
  motion on the still stretches once settled, and aligns and detector runs per frame.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from face_alignment_ros.common.metrics import nme
from face_alignment_ros.common.samples import demo_image
from face_alignment_ros.core.aligner import FaceAligner
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import box_iou
from face_alignment_ros.core.head_frame import Intrinsics, metric_pose
from face_alignment_ros.core.smoothing import OneEuroSettings
from face_alignment_ros.core.tracker import FaceTracker
from face_alignment_ros.evaluation.head_pose import geodesic_deg

HISTORIES = {"none": [], "shifted": [(12, -8, 1.0)], "zoomed": [(0, 0, 1.15)],
             "moving": [(-15, 10, 0.9), (-8, 5, 0.95)]}
VIDEO_FRAMES = 30
VIDEO_RATE_HZ = 30.0
SETTLED = [k for k in range(VIDEO_FRAMES) if 14 <= k < 18 or k >= 29]  # still, 4+ frames after motion


class CountingAligner:
    """The aligner's align_many and detect, counted (what a tracker calls)."""

    def __init__(self, aligner: FaceAligner):
        self.aligner, self.aligns, self.detections = aligner, 0, 0

    def align_many(self, image, requests):
        self.aligns += len(requests)
        return self.aligner.align_many(image, requests)

    def detect(self, *args, **kwargs):
        self.detections += 1
        return self.aligner.detect(*args, **kwargs)


def moved(image: np.ndarray, dx=0.0, dy=0.0, zoom=1.0) -> np.ndarray:
    h, w = image.shape[:2]
    m = np.float32([[zoom, 0, dx + (1 - zoom) * w / 2], [0, zoom, dy + (1 - zoom) * h / 2]])
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def tiled(image: np.ndarray) -> np.ndarray:
    tile = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    return np.vstack([np.hstack([tile, tile])] * 2)


def _match(faces: list, landmarks: np.ndarray):
    """The face whose landmark box overlaps that of ``landmarks`` most (IoU > 0.5), or None."""
    box = landmark_box(landmarks)
    best = max(faces, key=lambda f: box_iou(landmark_box(f.landmarks), box), default=None)
    return best if best is not None and box_iou(landmark_box(best.landmarks), box) > 0.5 else None


def still_scene(aligner: FaceAligner, image: np.ndarray, smoothing: OneEuroSettings | None = None) -> dict:
    intrinsics = Intrinsics.assumed(image.shape[1], image.shape[0])
    refs = aligner.detect_and_align(image)
    worst = {"motion_px": 0.0, "rotation_deg": 0.0, "depth_range_mm": 0.0, "vs_no_history_px": 0.0,
             "vs_no_history_deg": 0.0, "faces": len(refs)}
    last_without_history = None
    for history in HISTORIES.values():
        tracker = FaceTracker(aligner, smoothing=smoothing)
        for dx, dy, zoom in history:
            tracker.process(moved(image, dx, dy, zoom))
        frames = [[t.face for t in tracker.process(image)] for _ in range(10)]
        for ref in refs:
            fits = [_match(faces, ref.landmarks) for faces in frames[3:]]
            if any(f is None for f in fits):
                worst["lost"] = True
                continue
            worst["motion_px"] = max(worst["motion_px"], max(
                float(np.linalg.norm(f.landmarks - fits[0].landmarks, axis=1).max()) for f in fits))
            worst["rotation_deg"] = max(worst["rotation_deg"],
                                        max(geodesic_deg(f.rotation, fits[0].rotation) for f in fits))
            depth = [metric_pose(f, intrinsics).translation_mm[2] for f in fits]
            worst["depth_range_mm"] = max(worst["depth_range_mm"], float(np.ptp(depth)))
        if last_without_history is None:
            last_without_history = frames[-1]
            continue
        for f in frames[-1]:
            g = _match(last_without_history, f.landmarks)
            if g is not None:
                worst["vs_no_history_px"] = max(worst["vs_no_history_px"],
                                                float(np.linalg.norm(f.landmarks - g.landmarks, axis=1).max()))
                worst["vs_no_history_deg"] = max(worst["vs_no_history_deg"], geodesic_deg(f.rotation, g.rotation))
    return worst


def pseudo_video(image: np.ndarray, landmarks: np.ndarray, seed: int, noise: float = 0.0) -> list:
    """(frame, ground-truth landmarks) pairs: the photo moved along a smooth path with two still
    stretches, camera noise of ``noise`` grey levels."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    side = float(np.sqrt(np.prod(np.ptp(landmarks, axis=0))))
    centre = landmarks.mean(axis=0)
    out = []
    for k in range(VIDEO_FRAMES):
        t = min(k, 10) + max(0, min(k, 26) - 18)  # the path stands still over 10-17 and 26-29
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 8.0 * np.sin(0.2 * t),
                                    1.0 + 0.12 * np.sin(0.25 * t + phase[2]))
        m[:, 2] += (0.25 * side * np.sin(0.35 * t + phase[0]), 0.15 * side * np.sin(0.3 * t + phase[1]))
        frame = cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        out.append((frame, landmarks @ m[:, :2].T + m[:, 2]))
    return out


def video_figures(aligner: FaceAligner, photos: int, noise: float, smoothing: OneEuroSettings | None) -> dict:
    from face_alignment_ros.evaluation.datasets import heldout_300w

    counting = CountingAligner(aligner)
    errors = {"tracker": [], "single": []}
    settled_motion, frames, missed = [], 0, 0
    for i, sample in enumerate(heldout_300w(limit=photos)):
        tracker = FaceTracker(counting, smoothing=smoothing)
        previous = None
        for k, (frame, truth) in enumerate(pseudo_video(sample.image, sample.landmarks, i, noise)):
            frames += 1
            fit = _match([t.face for t in tracker.process(frame, stamp_s=k / VIDEO_RATE_HZ)], truth)
            single = _match(aligner.detect_and_align(frame), truth)
            if single is not None:
                errors["single"].append(nme(single.landmarks, truth, "inter_ocular"))
            if fit is None:
                missed, previous = missed + 1, None
                continue
            errors["tracker"].append(nme(fit.landmarks, truth, "inter_ocular"))
            if previous is not None and k in SETTLED:
                settled_motion.append(float(np.linalg.norm(fit.landmarks - previous, axis=1).max()))
            previous = fit.landmarks
    return {"nme_tracker_pct": 100 * float(np.mean(errors["tracker"])),
            "nme_single_photo_pct": 100 * float(np.mean(errors["single"])),
            "still_motion_median_px": float(np.median(settled_motion)), "missed_frames": missed,
            "aligns_per_frame": counting.aligns / frames, "detector_runs_per_frame": counting.detections / frames,
            "frames": frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m face_alignment_ros.evaluation.tracking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=20, help="held-out photos made into pseudo-videos (0: none)")
    p.add_argument("--noise", type=float, default=0.0, help="camera noise, grey levels (standard deviation)")
    p.add_argument("--smoothing", action="store_true", help="with the default One Euro smoothing")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    aligner = FaceAligner.from_default()
    smoothing = OneEuroSettings() if args.smoothing else None
    photo = demo_image()
    for name, image in (("demo photo", photo), ("demo photo tiled 2x2", tiled(photo))):
        print(name, {k: round(v, 2) if isinstance(v, float) else v
                     for k, v in still_scene(aligner, image, smoothing).items()})
    if args.photos:
        print("pseudo-videos", {k: round(v, 2) if isinstance(v, float) else v
                                for k, v in video_figures(aligner, args.photos, args.noise, smoothing).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
