"""Video mode: follow faces from frame to frame with stable ids, re-detecting when needed.

Between detections each face starts from its previous result (pose and shape), which is both
faster and steadier than a fresh start. The detector runs every ``redetect_every`` frames, when
a face's confidence drops below ``min_confidence``, or when nothing is tracked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from face_alignment_ros.core.aligner import AlignRequest, FaceAligner, FaceResult
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import box_iou


@dataclass
class TrackedFace:
    face_id: int
    face: FaceResult
    age: int = 0  # frames since the track started


class FaceTracker:
    def __init__(self, aligner: FaceAligner, redetect_every: int = 10, min_confidence: float = 0.3,
                 match_iou: float = 0.3, max_faces: int = 8):
        if redetect_every < 1:
            raise ValueError("redetect_every must be >= 1")
        self.aligner = aligner
        self.redetect_every = redetect_every
        self.min_confidence = min_confidence
        self.match_iou = match_iou
        self.max_faces = max_faces
        self.tracks: list[TrackedFace] = []
        self._next_id = 0
        self._since_detection = 0
        self.last_frame_detected = False

    def reset(self) -> None:
        self.tracks = []
        self._since_detection = 0

    def _needs_detection(self) -> bool:
        return (not self.tracks or self._since_detection >= self.redetect_every
                or any(t.face.confidence < self.min_confidence for t in self.tracks))

    def process(self, image_bgr: np.ndarray) -> list[TrackedFace]:
        """Faces of this frame, with ids stable across frames while tracked."""
        self.last_frame_detected = self._needs_detection()
        if self.last_frame_detected:
            self.tracks = self._detect_and_match(image_bgr)
            self._since_detection = 0
        else:
            # all tracked faces through the descriptor network as one batch
            faces = self.aligner.align_many(image_bgr, [
                AlignRequest(landmark_box(t.face.landmarks), "landmarks", previous=t.face) for t in self.tracks])
            self.tracks = [TrackedFace(t.face_id, face, t.age + 1) for t, face in zip(self.tracks, faces)]
        self._since_detection += 1
        return list(self.tracks)

    def _detect_and_match(self, image_bgr: np.ndarray) -> list[TrackedFace]:
        detections = self.aligner.detect(image_bgr)[: self.max_faces]
        faces = self.aligner.align_many(image_bgr, [AlignRequest(d.box, "detector", d.score) for d in detections])
        free = list(self.tracks)
        out = []
        for det, face in zip(detections, faces):
            best, best_iou = None, self.match_iou
            for track in free:
                iou = box_iou(det.box, landmark_box(track.face.landmarks))
                if iou >= best_iou:
                    best, best_iou = track, iou
            if best is not None:
                free.remove(best)
                out.append(TrackedFace(best.face_id, face, best.age + 1))
            else:
                out.append(TrackedFace(self._next_id, face))
                self._next_id += 1
        return out
