"""``FaceAligner``: the package's one facade (detector + descriptor + cascade) and ``FaceResult``."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core.cascade import Cascade, CascadeState
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.descriptors import DescriptorBackend, create_backend
from face_alignment_ros.core.dff_extractor import crop_image
from face_alignment_ros.core.face_detector import Detection, FaceDetector, create_detector, validate_image
from face_alignment_ros.core.landmark_stages import refine_landmarks
from face_alignment_ros.core.morphable_model import IBUG68_MIRROR, ModelFileError, MorphableModel

BOX_KINDS = ("detector", "landmarks")


class ModelNotTrainedError(FileNotFoundError):
    """The shipped trained models are missing."""


@dataclass
class FaceResult:
    """One aligned face. Image quantities are in pixels of the input image."""
    landmarks: np.ndarray          # (68, 2) float32, iBUG order
    visible: np.ndarray            # (68,) bool
    camera: np.ndarray             # (s, pitch, yaw, roll, tx, ty), image px, radians
    shape_params: np.ndarray       # (40,) identity
    expression_params: np.ndarray  # (10,)
    box: np.ndarray                # (x0, y0, x1, y1) the box the face was aligned from
    score: float                   # detector score (1.0 for a given box)
    confidence: float              # fit self-consistency in [0, 1]: re-detect when low
    crop_box: np.ndarray           # canonical crop used by the cascade
    model: MorphableModel = field(repr=False)
    landmarks_per_iteration: list = field(default_factory=list, repr=False)

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) head rotation in the camera optical frame (model frame -> camera)."""
        return cam.rotation_matrix(*self.camera[cam.PITCH:cam.ROLL + 1])

    @property
    def params(self) -> np.ndarray:
        return np.concatenate([self.shape_params, self.expression_params])

    @cached_property
    def vertices(self) -> np.ndarray:
        """(n, 3) decimated mesh: image x, y in pixels and depth s (R X)_z in pixels."""
        return cam.transform(self.camera, self.model.vertices(self.params, self.model.decimated))

    @property
    def triangles(self) -> np.ndarray:
        """(m, 3) int32 triangles indexing ``vertices``."""
        return self.model.decimated_triangles

    def dense_vertices(self) -> np.ndarray:
        """The full-resolution mesh (53k vertices), same coordinates as ``vertices``."""
        return cam.transform(self.camera, self.model.vertices(self.params))

    def vertices_mm(self, vertex_ids: np.ndarray | None = None) -> np.ndarray:
        """Model-frame shape in millimetres (decimated mesh by default)."""
        return self.model.vertices(self.params, self.model.decimated if vertex_ids is None else vertex_ids)

    def to_dict(self) -> dict:
        pitch, yaw, roll = (float(np.degrees(a)) for a in self.camera[cam.PITCH:cam.ROLL + 1])
        return {
            "box": [float(v) for v in self.box], "score": float(self.score), "confidence": float(self.confidence),
            "landmarks": self.landmarks.round(2).tolist(), "visible": self.visible.astype(bool).tolist(),
            "camera": {"scale": float(self.camera[cam.S]), "pitch_deg": pitch, "yaw_deg": yaw, "roll_deg": roll,
                       "tx": float(self.camera[cam.TX]), "ty": float(self.camera[cam.TY])},
            "rotation": self.rotation.round(6).tolist(),
            "shape_params": self.shape_params.round(5).tolist(),
            "expression_params": self.expression_params.round(5).tolist(),
        }


class FaceAligner:
    """Detect faces and fit the 3DMM with the DFF (or SIFT) cascade.

    >>> aligner = FaceAligner.from_default()
    >>> faces = aligner.detect_and_align(image_bgr)
    """

    def __init__(self, descent: DescentModel, backend: DescriptorBackend, model: MorphableModel | None = None,
                 detector: FaceDetector | str | None = "default", output: str = "regressed",
                 flip_average: bool = False):
        """``flip_average``: also align the mirrored crop and average the two sets of output
        landmarks (about twice the time; pose, shape and mesh stay the unmirrored fit's)."""
        if output not in ("regressed", "model"):
            raise ValueError("output must be 'regressed' (the cascade's 68 targets) or 'model' (the fitted 3DMM)")
        self.model = model or MorphableModel.load()
        self.cascade = Cascade(self.model)
        self.backend = backend
        self.output = output
        self.flip_average = bool(flip_average)
        self._detector_spec = detector
        self._detector: FaceDetector | None = detector if isinstance(detector, FaceDetector) else None
        self._lock = threading.Lock()
        self._descent = None
        self.set_descent_model(descent)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_default(cls, descriptor: str = "dff", device=None, detector: FaceDetector | str | None = "default",
                     **kwargs) -> "FaceAligner":
        """The shipped trained models (CPU, or CUDA when available)."""
        descent_path = resources.ASSETS_DIR / resources.DESCENT_MODEL_FILES.get(descriptor, "")
        weights = resources.ASSETS_DIR / resources.DFF_WEIGHTS_FILE
        if descriptor not in resources.DESCENT_MODEL_FILES:
            raise ValueError(f"descriptor must be one of {sorted(resources.DESCENT_MODEL_FILES)}, not {descriptor!r}")
        missing = [p for p in (descent_path, weights if descriptor == "dff" else None) if p is not None and not p.exists()]
        if missing:
            raise ModelNotTrainedError(
                f"no trained {descriptor.upper()} model in the package (missing: {', '.join(str(p) for p in missing)}). "
                + resources.TRAIN_HINT)
        return cls.from_files(descent_path, weights if descriptor == "dff" else None, device=device,
                              detector=detector, **kwargs)

    @classmethod
    def from_files(cls, descent_path: str | Path, dff_weights: str | Path | None = None, device=None,
                   detector: FaceDetector | str | None = "default", **kwargs) -> "FaceAligner":
        descent = DescentModel.load(descent_path)
        backend = create_backend(descent, dff_weights=dff_weights, device=device)
        return cls(descent, backend, detector=detector, **kwargs)

    @property
    def descent(self) -> DescentModel:
        return self._descent

    @property
    def descriptor(self) -> str:
        return self._descent.descriptor

    def set_descent_model(self, descent: DescentModel) -> None:
        """Swap the descent model; a frame in progress finishes with the old one."""
        if descent.descriptor != self.backend.kind or descent.descriptor_dim != self.backend.dim:
            raise ModelFileError(f"descent model is for {descent.descriptor} ({descent.descriptor_dim}-d) "
                                 f"but the aligner computes {self.backend.kind} ({self.backend.dim}-d)")
        if descent.crop_size != self.backend.crop_size:
            raise ModelFileError(f"descent model crop_size {descent.crop_size} != descriptor input {self.backend.crop_size}")
        with self._lock:
            self._descent = descent

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            if self._detector_spec is None:
                raise RuntimeError("this aligner was built without a detector; pass boxes to align()")
            self._detector = create_detector(self._detector_spec)
        return self._detector

    # --- alignment ------------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Detections that a face can be aligned from (``align`` would refuse the others)."""
        return [d for d in self.detector.detect(image_bgr) if face_crop.box_problem(d.box, image_bgr.shape) is None]

    def detect_and_align(self, image_bgr: np.ndarray) -> list[FaceResult]:
        """Every detected face, aligned, in detector-score order."""
        return [self.align(image_bgr, d.box, box_kind="detector", score=d.score) for d in self.detect(image_bgr)]

    def crop_box(self, box, box_kind: str = "detector") -> np.ndarray:
        """The canonical crop predicted from a box of the given kind."""
        if box_kind not in BOX_KINDS:
            raise ValueError(f"box_kind must be one of {BOX_KINDS}, not {box_kind!r}")
        box = np.asarray(box, np.float32).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"box must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box.tolist()}")
        priors = self._descent.box_priors
        prior = priors.get(box_kind) or priors.get("detector") or priors["landmarks"]
        return prior.crop_box(box)

    def align(self, image_bgr: np.ndarray, box, box_kind: str = "detector", score: float = 1.0,
              previous: FaceResult | None = None) -> FaceResult:
        """Fit one face inside ``box``. With ``previous`` (video), start from that result's
        pose and shape instead of the mean face: the crop follows the previous camera."""
        image_bgr = validate_image(image_bgr)
        descent = self._descent  # one model for the whole frame, even if swapped meanwhile
        n = descent.crop_size
        if previous is not None:
            crop_box = face_crop.canonical_crop_box(previous.camera)
        else:
            crop_box = self.crop_box(face_crop.check_box(box, image_bgr.shape), box_kind)
        crop = crop_image(image_bgr, crop_box, n)[0]
        sampler = self.backend.prepare(crop)
        if previous is not None:
            init = self.cascade.initial_state(n, face_crop.camera_image_to_crop(previous.camera, crop_box, n),
                                              previous.params)
        else:
            init = self.cascade.initial_state(n)
        state = self.cascade.run(descent, sampler, init)
        refined = refine_landmarks(descent, sampler, state)
        if self.flip_average:
            mirrored = self._mirrored_landmarks(descent, crop)
            refined = replace(refined, landmarks=0.5 * (refined.landmarks + mirrored))
        return self._result(state, refined, crop_box, n, box, score)

    def _mirrored_landmarks(self, descent: DescentModel, crop: np.ndarray) -> np.ndarray:
        """The output landmarks of the mirrored crop, mapped back (x -> n - 1 - x, left <-> right)."""
        n = descent.crop_size
        sampler = self.backend.prepare(np.ascontiguousarray(crop[:, ::-1]))
        state = self.cascade.run(descent, sampler, self.cascade.initial_state(n))
        x = refine_landmarks(descent, sampler, state).landmarks[IBUG68_MIRROR].copy()
        x[:, 0] = n - 1.0 - x[:, 0]
        return x

    def _result(self, state: CascadeState, refined: CascadeState, crop_box: np.ndarray, n: int, box,
                score: float) -> FaceResult:
        """``state``: the cascade's fit (pose, shape, confidence); ``refined``: the same after the
        descent model's final 2D stages (the regressed output landmarks)."""
        camera = face_crop.camera_crop_to_image(state.camera, crop_box, n)
        fixed_ids = self.model.landmarks
        visible = self.cascade.visibility.visible(state.camera, state.shape_params,
                                                  self.model.vertices(state.shape_params, fixed_ids))
        crop_landmarks = refined.landmarks if self.output == "regressed" else \
            self.cascade.model_landmarks(state.camera, state.shape_params)
        n_id = self.model.n_id
        return FaceResult(
            landmarks=face_crop.crop_to_image(crop_landmarks, crop_box, n).astype(np.float32),
            visible=visible, camera=camera.astype(np.float32),
            shape_params=state.shape_params[:n_id].copy(), expression_params=state.shape_params[n_id:].copy(),
            box=np.asarray(box, np.float32), score=float(score), confidence=self.cascade.confidence(state),
            crop_box=crop_box, model=self.model,
            landmarks_per_iteration=[face_crop.crop_to_image(x, crop_box, n) for x in refined.history])
