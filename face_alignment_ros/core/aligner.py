"""``FaceAligner``: the package's one facade (detector + descriptor + cascade) and ``FaceResult``."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core import threads as thread_policy
from face_alignment_ros.core.cascade import Cascade, CascadeState
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.descriptors import DescriptorBackend, create_backend
from face_alignment_ros.core.face_crop import crop_image, validate_image
from face_alignment_ros.core.face_detector import Detection, FaceDetector, create_detector
from face_alignment_ros.core.landmark_stages import (
    fine_crop,
    fitted_convention,
    mirror_fine_crop,
    output_convention,
    refine_fine,
    refine_landmarks,
)
from face_alignment_ros.core.morphable_model import IBUG68_MIRROR, N_LANDMARKS, ModelFileError, MorphableModel
from face_alignment_ros.core.pose_refinement import PoseRefiner

BOX_KINDS = ("detector", "landmarks", "landmarks_3d")


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
        return cam.transform(self.camera, self.model.decimated_mesh.vertices(self.params))

    @cached_property
    def landmarks_3d(self) -> np.ndarray:
        """(68, 3) float32, iBUG order: the fitted model's 68 fixed landmark vertices (the jaw
        stays on its vertices, it does not slide to the silhouette), image x, y in pixels and
        depth in pixels as in ``vertices``. This is the AFLW2000-3D / 3DDFA point convention
        (their ``pt3d_68``; their z points towards the viewer, ours away from it). ``landmarks``
        is the 300-W convention instead: the jaw on the visible outline."""
        return cam.transform(self.camera, self.model.vertices(self.params, self.model.landmarks)).astype(np.float32)

    @property
    def triangles(self) -> np.ndarray:
        """(m, 3) int32 triangles indexing ``vertices``."""
        return self.model.decimated_triangles

    def vertices_mm(self, vertex_ids: np.ndarray | None = None) -> np.ndarray:
        """Model-frame shape in millimetres (decimated mesh by default)."""
        if vertex_ids is None:
            return self.model.decimated_mesh.vertices(self.params)
        return self.model.vertices(self.params, vertex_ids)

    def to_dict(self) -> dict:
        pitch, yaw, roll = (float(np.degrees(a)) for a in self.camera[cam.PITCH:cam.ROLL + 1])
        return {
            "box": [float(v) for v in self.box], "score": float(self.score), "confidence": float(self.confidence),
            "landmarks": self.landmarks.round(2).tolist(), "landmarks_3d": self.landmarks_3d.round(2).tolist(),
            "visible": self.visible.astype(bool).tolist(),
            "camera": {"scale": float(self.camera[cam.S]), "pitch_deg": pitch, "yaw_deg": yaw, "roll_deg": roll,
                       "tx": float(self.camera[cam.TX]), "ty": float(self.camera[cam.TY])},
            "rotation": self.rotation.round(6).tolist(),
            "shape_params": self.shape_params.round(5).tolist(),
            "expression_params": self.expression_params.round(5).tolist(),
        }


@dataclass
class AlignRequest:
    """One face for ``FaceAligner.align_many``: the arguments of ``align``."""
    box: object
    box_kind: str = "detector"
    score: float = 1.0
    previous: FaceResult | None = None
    keypoints: object = None  # the detector's keypoints, for a keypoint box prior

    @classmethod
    def from_detection(cls, detection: Detection) -> AlignRequest:
        return cls(detection.box, "detector", detection.score, keypoints=detection.keypoints)


# A face whose first fit turns further than this is aligned again from its own (300-W) landmark
# box, per kind of the box it started from: the detector's (docs/training.md, round 7) and the box
# of the 68 fixed 3D landmarks, AFLW2000-3D's given box (round 8); both chosen on the validation
# identities.
REFRAME_YAW_DEG = {"detector": 40.0, "landmarks_3d": 60.0}
# A detector box without keypoints (another detector's: OpenCV's cascade, dlib's HOG, a user's)
# may follow another convention, padded or shifted. When the crop of the fit's own landmark box
# differs from the crop the box gave by more than this (|log| of the side ratio, centre shift in
# crop sides), the face is aligned again from that landmark box. Chosen on the validation photos
# over seven kinds of box (docs/training.md, round 10): a box 1.5x the landmarks' 9.8 -> 5.3% NME.
REFRAME_CROP_MISMATCH = (0.05, 0.05)


def crop_mismatch(crop_box, other) -> tuple[float, float]:
    """(|log| of the side ratio, centre distance in sides of ``other``) of two square crops."""
    a, b = np.asarray(crop_box, np.float64), np.asarray(other, np.float64)
    side = b[2] - b[0]
    shift = np.hypot(a[0] + a[2] - b[0] - b[2], a[1] + a[3] - b[1] - b[3]) / (2.0 * side)
    return abs(float(np.log((a[2] - a[0]) / side))), float(shift)


class FaceAligner:
    """Detect faces and fit the 3DMM with the DFF (or SIFT) cascade.

    >>> aligner = FaceAligner.from_default()
    >>> faces = aligner.detect_and_align(image_bgr)
    """

    def __init__(self, descent: DescentModel, backend: DescriptorBackend, model: MorphableModel | None = None,
                 detector: FaceDetector | str | None = "default", output: str = "regressed",
                 detector_threads: int | None = None, refine_pose: bool | None = None, flip_average: bool = False,
                 reframe: bool | None = None, second_pass: bool = False):
        """``flip_average``: also align the mirrored crop and average the two sets of output
        landmarks (about twice the time; pose, shape and mesh stay the unmirrored fit's).
        ``reframe``: a face aligned from a detector box (or from the box of its 68 fixed 3D
        landmarks, ``box_kind="landmarks_3d"``) whose fit turns more than ``REFRAME_YAW_DEG`` of
        that kind, or from a detector box without keypoints that framed it otherwise than its own
        landmarks do (``REFRAME_CROP_MISMATCH``), is aligned a second time from that fit's
        landmark box (None: on for the DFF, where validation chose it, off for the SIFT ablation).
        ``second_pass``: every face from a detector box is aligned that second time, turned or not
        (about twice the alignment time; docs/training.md, round 13)."""
        if output not in ("regressed", "model"):
            raise ValueError("output must be 'regressed' (the cascade's 68 targets) or 'model' (the fitted 3DMM)")
        self.model = model or MorphableModel.load()
        self.cascade = Cascade(self.model)
        # After the cascade, camera and shape are refitted jointly to the 68 output landmarks,
        # those of the final 2D stages (core.pose_refinement; docs/training.md, round 8); False
        # keeps the cascade's regressed camera. By default on for the
        # DFF, where it lowers the head-pose error on held-out renders, off for the SIFT ablation,
        # where it does not (BENCHMARKS.md).
        if refine_pose is None:
            refine_pose = descent.descriptor == "dff"
        self.pose_refiner: PoseRefiner | None = PoseRefiner(self.model) if refine_pose else None
        self.backend = backend
        self.output = output
        self.flip_average = bool(flip_average)
        self.reframe = descent.descriptor == "dff" if reframe is None else bool(reframe)
        self.second_pass = bool(second_pass)
        self._detector_spec = detector
        self._detector: FaceDetector | None = detector if isinstance(detector, FaceDetector) else None
        self._detector_threads = detector_threads
        self._lock = threading.Lock()
        self._descent = None
        self.set_descent_model(descent)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_default(cls, descriptor: str = "dff", device=None, detector: FaceDetector | str | None = "default",
                     threads: int | None = None, **kwargs) -> FaceAligner:
        """The shipped trained models (CPU, or CUDA when available). ``threads``: CPU threads
        of the DFF network under the package's thread policy (``core.threads``; None: the
        default, all cores up to 2), applied to the whole process."""
        shipped = resources.shipped_models(descriptor)
        missing = shipped.missing()
        if missing:
            raise ModelNotTrainedError(
                f"no trained {descriptor.upper()} model in the package "
                f"(missing: {', '.join(str(p) for p in missing)}). "
                + resources.TRAIN_HINT)
        return cls.from_files(shipped.descent, shipped.dff_weights, device=device,
                              detector=detector, threads=threads, **kwargs)

    @classmethod
    def from_files(cls, descent_path: str | Path, dff_weights: str | Path | None = None, device=None,
                   detector: FaceDetector | str | None = "default", threads: int | None = None,
                   runtime: str = "auto", **kwargs) -> FaceAligner:
        """``threads`` as in ``from_default``; ``runtime``: the DFF network's ("auto": ONNX
        Runtime on the graph beside the weights, else torch; ``core.dff_runtime``)."""
        policy = thread_policy.apply(threads)
        descent = DescentModel.load(descent_path)
        backend = create_backend(descent, dff_weights=dff_weights, device=device, threads=policy.network,
                                 runtime=runtime)
        return cls(descent, backend, detector=detector, detector_threads=policy.detector, **kwargs)

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
            raise ModelFileError(f"descent model crop_size {descent.crop_size} "
                                 f"!= descriptor input {self.backend.crop_size}")
        with self._lock:
            self._descent = descent

    def set_detector(self, detector: FaceDetector | str | None) -> None:
        """Detect with another detector from now on: a name of ``available_detectors()`` (built
        when first used), an instance, or None (boxes only)."""
        self._detector_spec = detector
        self._detector = detector if isinstance(detector, FaceDetector) else None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            if self._detector_spec is None:
                raise RuntimeError("this aligner was built without a detector; pass boxes to align()")
            self._detector = create_detector(self._detector_spec, threads=self._detector_threads)
        return self._detector

    # --- alignment ------------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Detections that a face can be aligned from (``align`` would refuse the others)."""
        return [d for d in self.detector.detect(image_bgr) if face_crop.box_problem(d.box, image_bgr.shape) is None]

    def detect_and_align(self, image_bgr: np.ndarray) -> list[FaceResult]:
        """Every detected face, aligned, in detector-score order."""
        return self.align_many(image_bgr, [AlignRequest.from_detection(d) for d in self.detect(image_bgr)])

    def crop_box(self, box, box_kind: str = "detector", keypoints=None) -> np.ndarray:
        """The canonical crop predicted from a box of the given kind (and, for a detector box,
        the detector's keypoints, which the prior may read: ``face_crop.BoxPrior``)."""
        if box_kind not in BOX_KINDS:
            raise ValueError(f"box_kind must be one of {BOX_KINDS}, not {box_kind!r}")
        box = np.asarray(box, np.float32).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"box must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box.tolist()}")
        priors = self._descent.box_priors
        # the box of the fixed 3D landmarks starts through the 300-W landmark box's prior: a prior
        # of its own gained 0.05 deg on validation (docs/training.md, round 8)
        kind = "landmarks" if box_kind == "landmarks_3d" and box_kind not in priors else box_kind
        prior = priors.get(kind) or priors.get("detector") or priors["landmarks"]
        return prior.crop_box(box, keypoints)

    def align(self, image_bgr: np.ndarray, box, box_kind: str = "detector", score: float = 1.0,
              previous: FaceResult | None = None, keypoints=None) -> FaceResult:
        """Fit one face inside ``box``, a box of ``box_kind``: "detector" (``detect``'s),
        "landmarks" (of 300-W's 68 points) or "landmarks_3d" (of the 68 fixed 3D landmarks, as
        AFLW2000-3D gives it). With ``previous`` (video), start from that result's pose and shape
        instead of the mean face: the crop follows the previous camera. ``keypoints``: the
        detector's, with a detector box (``Detection.keypoints``)."""
        return self.align_many(image_bgr, [AlignRequest(box, box_kind, score, previous, keypoints)])[0]

    def align_many(self, image_bgr: np.ndarray, requests: list[AlignRequest]) -> list[FaceResult]:
        """Fit several faces of one image: their crops go through the descriptor network as one
        batch, then each face runs its own cascade. Same results as ``align`` one by one."""
        image_bgr = validate_image(image_bgr)
        descent = self._descent  # one model for the whole frame, even if swapped meanwhile
        results = self._align_batch(image_bgr, requests, descent)
        if self.reframe or self.second_pass:
            # The detector's box frames a profile worse than the face's own fit does
            # (docs/training.md, round 7): such faces start again from their landmark box (with
            # second_pass, every face from a detector box).
            boxes = {i: face_crop.landmark_box(f.landmarks) for i, (r, f) in enumerate(zip(requests, results))
                     if r.previous is None and self._reframe_wanted(r, f)}
            turned = [i for i, box in boxes.items() if face_crop.box_problem(box, image_bgr.shape) is None]
            again = self._align_batch(image_bgr, [AlignRequest(boxes[i], "landmarks", requests[i].score)
                                                  for i in turned], descent)
            for i, face in zip(turned, again):
                results[i] = replace(face, box=np.asarray(requests[i].box, np.float32))
        return results

    def _reframe_wanted(self, request: AlignRequest, face: FaceResult) -> bool:
        """Whether ``face`` should be aligned again from its own landmark box: it turned beyond its
        box kind's ``REFRAME_YAW_DEG``, or its box, not the detector's own, framed it otherwise
        than its landmarks do (``REFRAME_CROP_MISMATCH``); or ``second_pass`` asks for every
        detector box."""
        if self.second_pass and request.box_kind == "detector":
            return True
        if not self.reframe:
            return False
        limit = REFRAME_YAW_DEG.get(request.box_kind)
        if limit is not None and abs(np.degrees(face.camera[cam.YAW])) > limit:
            return True
        # Only a detector box without keypoints is of unknown convention. BlazeFace's box comes with
        # keypoints that its prior reads; a landmark box means what it says, and on the validation
        # identities' renders this rule cost head pose: 4.77 -> 5.04 deg from their 300-W landmark
        # box, 5.26 -> 5.40 deg from AFLW2000-3D's.
        if request.box_kind != "detector" or request.keypoints is not None:
            return False
        own = self.crop_box(face_crop.landmark_box(face.landmarks), "landmarks")
        scale, shift = crop_mismatch(face.crop_box, own)
        return scale > REFRAME_CROP_MISMATCH[0] or shift > REFRAME_CROP_MISMATCH[1]

    def _align_batch(self, image_bgr: np.ndarray, requests: list[AlignRequest],
                     descent: DescentModel) -> list[FaceResult]:
        if not requests:
            return []
        n = descent.crop_size
        crop_boxes = [face_crop.canonical_crop_box(r.previous.camera) if r.previous is not None
                      else self.crop_box(face_crop.check_box(r.box, image_bgr.shape), r.box_kind, r.keypoints)
                      for r in requests]
        crops = [crop_image(image_bgr, b, n)[0] for b in crop_boxes]
        samplers = self.backend.prepare_many(crops)
        results = []
        for r, crop_box, crop, sampler in zip(requests, crop_boxes, crops, samplers):
            if r.previous is not None:
                init = self.cascade.initial_state(n, face_crop.camera_image_to_crop(r.previous.camera, crop_box, n),
                                                  r.previous.params)
            else:
                init = self.cascade.initial_state(n)
            state = self.cascade.run(descent, sampler, init)
            fine = fine_crop(image_bgr, crop_box, descent.fine_layout, crop) if descent.uses_fine_crop else None
            refined = refine_fine(descent, fine, refine_landmarks(descent, sampler, state))
            if self.flip_average:
                mirrored = self._mirrored_landmarks(descent, crop, fine)
                refined = replace(refined, landmarks=0.5 * (refined.landmarks + mirrored))
            results.append(self._result(state, refined, crop_box, n, r.box, r.score, descent))
        return results

    def _mirrored_landmarks(self, descent: DescentModel, crop: np.ndarray, fine: np.ndarray | None) -> np.ndarray:
        """The output landmarks of the mirrored crop (and fine crop), mapped back
        (x -> n - 1 - x, left <-> right)."""
        n = descent.crop_size
        sampler = self.backend.prepare(np.ascontiguousarray(crop[:, ::-1]))
        state = self.cascade.run(descent, sampler, self.cascade.initial_state(n))
        mirrored_fine = None if fine is None else mirror_fine_crop(fine, n)
        refined = refine_fine(descent, mirrored_fine, refine_landmarks(descent, sampler, state))
        x = refined.landmarks[IBUG68_MIRROR].copy()
        x[:, 0] = n - 1.0 - x[:, 0]
        return x

    def _result(self, state: CascadeState, refined: CascadeState, crop_box: np.ndarray, n: int, box, score: float,
                descent: DescentModel) -> FaceResult:
        """``state``: the cascade's fit (pose, shape, confidence); ``refined``: its landmarks after
        the descent model's final 2D stages (core/landmark_stages.py), the regressed output."""
        confidence = self.cascade.confidence(state)  # the cascade's own self-consistency
        refiner = self.pose_refiner
        if refiner is not None:
            # the 2D stages' landmarks are the best 2D estimate: on the validation identities'
            # profiled views the head pose error fell 5.02 -> 4.53 deg against the cascade's;
            # the fitted shape stage puts them in the model's convention (round 14)
            camera, params = refiner.refine(fitted_convention(descent, refined.landmarks), state.camera,
                                            state.shape_params,
                                            state.dense_visible[:N_LANDMARKS],  # the 68 come first
                                            descent.regularisation)
            state = replace(state, camera=camera, shape_params=params)
        camera = face_crop.camera_crop_to_image(state.camera, crop_box, n)
        # The dense vertices start with the 68 fixed landmarks; the cascade's last step tested
        # them under its own camera and shape (before any pose refinement), the fit whose
        # regressed landmarks are the output.
        visible = state.dense_visible[:len(self.model.landmarks)].copy()
        history = refined.history
        if self.output == "regressed":  # the pose above was fitted to the points before the offset
            crop_landmarks = output_convention(descent, refined.landmarks, state.camera[cam.YAW])
            if descent.has_output_stages:
                history = history + [crop_landmarks]
        else:
            crop_landmarks = self.cascade.model_landmarks(state.camera, state.shape_params)
        n_id = self.model.n_id
        return FaceResult(
            landmarks=face_crop.crop_to_image(crop_landmarks, crop_box, n).astype(np.float32),
            visible=visible, camera=camera.astype(np.float32),
            shape_params=state.shape_params[:n_id].copy(), expression_params=state.shape_params[n_id:].copy(),
            box=np.asarray(box, np.float32), score=float(score), confidence=confidence,
            crop_box=crop_box, model=self.model,
            landmarks_per_iteration=[face_crop.crop_to_image(x, crop_box, n) for x in history])
