"""Video mode: follow faces from frame to frame with stable ids, re-detecting when needed.

Each frame a followed face is aligned from a box, as a single photo is (mean face, the box
prior's crop), never from its previous pose and shape: chaining fits that way let the result
wander by pixels on a still scene. While a face moves, the box is its previous landmark box.
Once it holds still (its landmark box stays within ``still_box_fraction`` of its side), the
detector runs and, from the next frame on, the face starts from its detection, and that start is
kept while it stays still: identical frames then give identical results, equal to the
single-photo result, whatever the frames before. (The frame in which it comes to rest keeps its
followed fit: aligning it a second time there doubled that frame's cost, and a slowly drifting
face comes to rest every few frames.)

The detector also runs every ``redetect_every`` frames and, in the same frame, whenever a
followed face's confidence falls below ``min_confidence``: a face the detector does not
confirm ends there and is not returned. A change of image size restarts tracking, and a face
whose landmarks lie mostly outside the image is never returned.

With ``smoothing`` (``OneEuroSettings``) the returned faces are filtered over time
(``core.smoothing``); the tracker itself follows the unfiltered fits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from face_alignment_ros.core.aligner import AlignRequest, FaceAligner, FaceResult
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import Detection, box_iou
from face_alignment_ros.core.smoothing import FaceSmoother, OneEuroSettings

# Motion (fraction of the box side) below which a face counts as still: above the fit's
# frame-to-frame noise on a still face, within the cascade's trained start spread (~4%).
STILL_BOX_FRACTION = 0.04
# A face with fewer of its 68 landmarks inside the image than this fraction is not a face there.
MIN_LANDMARKS_INSIDE = 0.5
# Frame period assumed for smoothing when frames come without time stamps.
NOMINAL_FRAME_PERIOD_S = 1.0 / 30.0


@dataclass
class TrackedFace:
    face_id: int
    face: FaceResult
    age: int = 0  # frames since the track started
    box_kind: str = "detector"  # kind of face.box, the box this frame's fit started from
    rest_box: np.ndarray | None = None  # landmark box the face's motion is measured from
    detection: Detection | None = None  # came to rest: its detection, next frame's start while still
    keypoints: object = None  # a detector start's keypoints (Detection.keypoints), kept with its box


def landmarks_inside(face: FaceResult, image_shape: tuple) -> float:
    """Fraction of the face's landmarks inside an image of this shape."""
    h, w = image_shape[:2]
    x, y = face.landmarks[:, 0], face.landmarks[:, 1]
    return float(np.mean((x >= 0) & (x < w) & (y >= 0) & (y < h)))


def is_still(box: np.ndarray, rest_box: np.ndarray | None, fraction: float = STILL_BOX_FRACTION) -> bool:
    """Whether ``box`` lies within ``fraction`` of ``rest_box``'s side of it."""
    if rest_box is None:
        return False
    side = float(np.sqrt(max(rest_box[2] - rest_box[0], 1e-6) * max(rest_box[3] - rest_box[1], 1e-6)))
    return float(np.abs(np.asarray(box) - rest_box).max()) <= fraction * side


class FaceTracker:
    def __init__(self, aligner: FaceAligner, redetect_every: int = 10, min_confidence: float = 0.3,
                 match_iou: float = 0.3, max_faces: int = 8, still_box_fraction: float = STILL_BOX_FRACTION,
                 smoothing: OneEuroSettings | None = None):
        if redetect_every < 1:
            raise ValueError("redetect_every must be >= 1")
        self.aligner = aligner
        self.redetect_every = redetect_every
        self.min_confidence = min_confidence
        self.match_iou = match_iou
        self.max_faces = max_faces
        self.still_box_fraction = still_box_fraction
        self.tracks: list[TrackedFace] = []
        self._next_id = 0
        self._since_detection = 0
        self._image_size: tuple | None = None
        self._frames = 0
        self._smoothers: dict[int, FaceSmoother] = {}
        self._smoothing = smoothing
        self.last_frame_detected = False

    @property
    def smoothing(self) -> OneEuroSettings | None:
        return self._smoothing

    @smoothing.setter
    def smoothing(self, settings: OneEuroSettings | None) -> None:
        if settings != self._smoothing:  # new settings restart the filters
            self._smoothing = settings
            self._smoothers = {}

    def reset(self) -> None:
        self.tracks = []
        self._since_detection = 0
        self._smoothers = {}

    def process(self, image_bgr: np.ndarray, stamp_s: float | None = None) -> list[TrackedFace]:
        """Faces of this frame, with ids stable across frames while tracked. ``stamp_s``: the
        frame's time in seconds, used by smoothing (default: frames at 30 Hz)."""
        size = tuple(np.shape(image_bgr)[:2])
        if size != self._image_size:  # another camera mode: old positions mean nothing here
            self.reset()
            self._image_size = size
        starts = [self._start(track) for track in self.tracks]
        # the followed faces go through the descriptor network as one batch
        faces = self.aligner.align_many(image_bgr, [AlignRequest(box, kind, score, keypoints=keypoints)
                                                    for box, kind, score, keypoints, _, _ in starts])
        followed, settling = [], set()
        for track, face, (_, kind, _, keypoints, rest_box, still) in zip(self.tracks, faces, starts):
            if track.detection is not None and kind == "detector":  # its first fit from its detection
                rest_box = landmark_box(face.landmarks)
            followed.append(TrackedFace(track.face_id, face, track.age + 1, kind, rest_box, keypoints=keypoints))
            if still and kind == "landmarks":  # came to rest, not yet started from a detection
                settling.add(track.face_id)
        self.last_frame_detected = (not followed or bool(settling) or self._since_detection >= self.redetect_every
                                    or any(t.face.confidence < self.min_confidence for t in followed))
        if self.last_frame_detected:
            followed = self._detect_and_match(image_bgr, followed, settling)
            self._since_detection = 0
        self._since_detection += 1
        self.tracks = [t for t in followed if landmarks_inside(t.face, size) >= MIN_LANDMARKS_INSIDE]
        self._frames += 1
        if self._smoothing is None:
            return list(self.tracks)
        return self._smoothed(self._frames * NOMINAL_FRAME_PERIOD_S if stamp_s is None else stamp_s)

    def _smoothed(self, stamp_s: float) -> list[TrackedFace]:
        """This frame's faces filtered over time; a track that ended loses its filter."""
        self._smoothers = {t.face_id: self._smoothers.get(t.face_id) or FaceSmoother(self._smoothing)
                           for t in self.tracks}
        return [replace(t, face=self._smoothers[t.face_id](stamp_s, t.face)) for t in self.tracks]

    def _start(self, track: TrackedFace) -> tuple[np.ndarray, str, float, object, np.ndarray, bool]:
        """Where a track's fit starts this frame: (box, its kind, its score, its detector
        keypoints, the rest box, still).
        A still face keeps its start, or takes the detection it came to rest at; a moving one
        starts from its last landmark box, its new rest box."""
        box = landmark_box(track.face.landmarks)
        if is_still(box, track.rest_box, self.still_box_fraction):
            if track.detection is not None:
                det = track.detection
                return det.box, "detector", det.score, det.keypoints, track.rest_box, True
            return track.face.box, track.box_kind, track.face.score, track.keypoints, track.rest_box, True
        return box, "landmarks", track.face.score, None, box, False

    def _detect_and_match(self, image_bgr: np.ndarray, followed: list[TrackedFace],
                          settling: set[int]) -> list[TrackedFace]:
        """Detections matched to this frame's followed faces. A matched face keeps its followed
        fit; a doubtful one (low confidence) starts again from its detection in this frame, one
        that has just come to rest from the next frame on. An unmatched detection starts a new
        track; a followed face the detector does not find ends."""
        detections = self.aligner.detect(image_bgr)[: self.max_faces]
        free = list(followed)
        out, starts = [], []  # starts: (detection, face id, age, place in out), aligned as one batch
        for det in detections:
            best, best_iou = None, self.match_iou
            for track in free:
                iou = box_iou(det.box, landmark_box(track.face.landmarks))
                if iou >= best_iou:
                    best, best_iou = track, iou
            if best is not None:
                free.remove(best)
                if best.face.confidence >= self.min_confidence:
                    if best.face_id in settling:
                        best = replace(best, detection=det)
                    out.append(best)
                    continue
            face_id, age = (best.face_id, best.age) if best is not None else (self._new_id(), 0)
            starts.append((det, face_id, age, len(out)))
            out.append(None)
        faces = self.aligner.align_many(image_bgr, [AlignRequest.from_detection(d) for d, *_ in starts])
        for (det, face_id, age, i), face in zip(starts, faces):
            out[i] = TrackedFace(face_id, face, age, "detector", landmark_box(face.landmarks), keypoints=det.keypoints)
        return out

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
