"""The learned generic descent directions of the cascade, and their file format.

Per iteration k the model holds (paper eq. 4, 5)

    Delta X = R_X[k] phi + b_X[k]     (68 landmark targets, crop pixels, 136 values)
    Delta w = R_w[k] phi + b_w[k]     (weak-perspective camera, 6 values)

where phi is the concatenation of the descriptors at the 160 dense landmark vertices.

Optional final 2D stages (``landmark_iterations`` L >= 0), applied after the K iterations and
free of the shape model:

    Delta X = R_L[l] psi + b_L[l]      (psi: the descriptors at the 68 current 2D landmarks)

They move only the 68 output landmarks; the 3DMM fit (pose, shape, mesh) stays the cascade's.

Optional fine 2D stages come last and read gradient-orientation histograms from the image at a
finer crop (``fine_layout``, core/gradient_histograms.py). First the local ones
(``local_iterations`` P >= 0): each landmark moves by its own ridge regression from the
histograms at its K nearest landmarks (``local_neighbours``, (68, K), itself first), which
generalises better than one regression from all 68 (docs/training.md, round 9):

    Delta x_l = W_P[p, l] h[neighbours[l]] + b_P[p, l]

Then the global ones (``fine_iterations`` M >= 0), the regression above on all 68:

    Delta X = U_F[m] (V_F[m] h) + b_F[m]   (h: the histograms at the 68 current landmarks)

stored as a rank-r product (``fine_rank``): the truncated SVD of the learned regressor keeps
its accuracy at a fraction of the size.

File: one ``.npz`` holding the arrays ``R_X`` (K, 136, D), ``b_X`` (K, 136), ``R_w`` (K, 6, D),
``b_w`` (K, 6), when L > 0 ``R_L`` (L, 136, 68 D) and ``b_L`` (L, 136), and ``metadata_json``:
schema version, descriptor kind and dimension, landmark counts, iteration count, landmark-stage
count (optional, default 0), crop size, shape regularisation, box priors per box kind and the
training provenance. When M > 0 it also holds ``U_F`` (M, 136, r), ``V_F`` (M, r, 68 H) and
``b_F`` (M, 136), with ``fine_iterations``, ``fine_rank`` and ``fine_layout`` in the metadata,
and when P > 0 ``W_P`` (P, 68, 2, K H) and ``b_P`` (P, 136), with ``local_iterations``,
``local_neighbours`` and ``fine_layout``.

Optionally last, ``o_A`` (136,): the annotation offset, crop pixels added to the output landmarks
after everything else (and after the pose refit, which fits the points before it). Every stage
learns on the training photos and their mirror images, so it lands halfway between the
annotators' convention and its mirror image; 300-W's is not symmetric, and this offset, the mean
remaining error of the training photos as annotated, restores it (docs/training.md, round 9).

Optionally after it, the annotation shape stage: ``R_A`` (136, 136), ``b_A`` (136,) and its
reference shape ``m_A`` (136,). Where annotators put a point depends on the face's shape, and
the regressions above pull every shape towards the mean; one ridge regression from the landmarks,
turned, scaled and centred onto the reference (``similarity_frames``), to the training photos'
remaining error as annotated, in that frame, corrects both (docs/training.md, round 14):

    Delta X = M^-1 (R_A (x_n - m_A) + b_A)    (x_n = M (X - mean(X)), the landmarks in the frame)

Optionally, the fitted shape stage: ``R_G``, ``b_G``, ``m_G``, the same regression learned on the
3DMM's fitted labels of the training renders and profiled views. It moves the points that the
pose refit fits into the model's own convention, and the output landmarks beyond the yaw the
annotated photos cover (core/landmark_stages.output_convention).
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from face_alignment_ros.core.camera import CAMERA_SIZE
from face_alignment_ros.core.face_crop import BoxPrior
from face_alignment_ros.core.gradient_histograms import HistogramLayout
from face_alignment_ros.core.morphable_model import N_DENSE, N_LANDMARKS, ModelFileError

SCHEMA_VERSION = 1
DESCRIPTOR_KINDS = ("dff", "sift")
ARRAYS = ("R_X", "b_X", "R_w", "b_w")
REQUIRED_METADATA = ("schema_version", "descriptor", "descriptor_dim", "n_landmarks", "n_dense",
                     "iterations", "crop_size", "regularisation", "box_priors", "provenance")
# Sanity bounds on what a file may ask for (SIFT is 128-d, the DFF 32-d; 2-3 iterations, 128 px
# crops ship): a file beyond them is refused before its matrices are read.
MAX_DESCRIPTOR_DIM = 512
MAX_ITERATIONS = 16
CROP_SIZE_RANGE = (16, 1024)
# shape stages (weights, bias, reference shape) by name, as flagged in the metadata
SHAPE_STAGES = {"annotation_shape": ("R_A", "b_A", "m_A"), "fitted_shape": ("R_G", "b_G", "m_G")}
SHAPE_ARRAYS = {"R": (2 * N_LANDMARKS, 2 * N_LANDMARKS), "b": (2 * N_LANDMARKS,), "m": (2 * N_LANDMARKS,)}
# the offset and shape stages are measured after everything else: a model that changes drops them
NO_LAST_STAGES = {"o_A": None, **{name: None for fields in SHAPE_STAGES.values() for name in fields}}
FINE_LAYOUT_RANGES = {"crop_size": CROP_SIZE_RANGE, "cell": (1, 64), "grid": (1, 8), "bins": (1, 16)}


@dataclass
class DescentModel:
    R_X: np.ndarray
    b_X: np.ndarray
    R_w: np.ndarray
    b_w: np.ndarray
    descriptor: str
    descriptor_dim: int
    crop_size: int
    regularisation: float
    box_priors: dict[str, BoxPrior]
    provenance: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. descriptor settings (SIFT patch size)
    R_L: np.ndarray | None = None  # (L, 136, 68 D) final 2D stages; None: none
    b_L: np.ndarray | None = None  # (L, 136)
    U_F: np.ndarray | None = None  # (M, 136, r) fine 2D stages, R_F = U_F V_F; None: none
    V_F: np.ndarray | None = None  # (M, r, 68 H)
    b_F: np.ndarray | None = None  # (M, 136)
    fine_layout: HistogramLayout | None = None
    W_P: np.ndarray | None = None  # (P, 68, 2, K H) local fine stages, before the global ones
    b_P: np.ndarray | None = None  # (P, 136)
    local_neighbours: np.ndarray | None = None  # (68, K) int: landmark l reads these landmarks
    o_A: np.ndarray | None = None  # (136,) annotation offset, crop px; None: none
    R_A: np.ndarray | None = None  # (136, 136) annotation shape stage; None: none
    b_A: np.ndarray | None = None  # (136,)
    m_A: np.ndarray | None = None  # (136,) its reference shape, centred
    R_G: np.ndarray | None = None  # (136, 136) fitted shape stage; None: none
    b_G: np.ndarray | None = None  # (136,)
    m_G: np.ndarray | None = None  # (136,)

    def __post_init__(self):
        if self.R_L is None and self.b_L is None:
            self.R_L = np.zeros((0, 2 * N_LANDMARKS, N_LANDMARKS * self.descriptor_dim), np.float32)
            self.b_L = np.zeros((0, 2 * N_LANDMARKS), np.float32)
        if self.U_F is None and self.V_F is None and self.b_F is None:
            layout = self.fine_layout or HistogramLayout()
            self.U_F = np.zeros((0, 2 * N_LANDMARKS, 1), np.float32)
            self.V_F = np.zeros((0, 1, N_LANDMARKS * layout.dim), np.float32)
            self.b_F = np.zeros((0, 2 * N_LANDMARKS), np.float32)
        if self.local_neighbours is None:
            self.local_neighbours = np.arange(N_LANDMARKS).reshape(-1, 1)
        if self.W_P is None and self.b_P is None:
            layout = self.fine_layout or HistogramLayout()
            width = np.shape(self.local_neighbours)[-1] * layout.dim
            self.W_P = np.zeros((0, N_LANDMARKS, 2, width), np.float32)
            self.b_P = np.zeros((0, 2 * N_LANDMARKS), np.float32)

    @property
    def iterations(self) -> int:
        return self.R_X.shape[0]

    @property
    def feature_dim(self) -> int:
        return N_DENSE * self.descriptor_dim

    @property
    def landmark_iterations(self) -> int:
        return self.R_L.shape[0] if self.R_L is not None and self.R_L.ndim == 3 else 0

    @property
    def landmark_feature_dim(self) -> int:
        return N_LANDMARKS * self.descriptor_dim

    @property
    def fine_iterations(self) -> int:
        return self.U_F.shape[0] if self.U_F is not None and self.U_F.ndim == 3 else 0

    @property
    def fine_rank(self) -> int:
        return self.U_F.shape[2] if self.U_F is not None and self.U_F.ndim == 3 else 0

    @property
    def local_iterations(self) -> int:
        return self.W_P.shape[0] if self.W_P is not None and self.W_P.ndim == 4 else 0

    @property
    def annotation_offset(self) -> np.ndarray | None:
        """(68, 2) crop pixels, or None."""
        return None if self.o_A is None else self.o_A.reshape(N_LANDMARKS, 2)

    def with_annotation_offset(self, offset: np.ndarray | None, provenance: dict | None = None) -> DescentModel:
        # the shape stage learned on what this offset left: a new offset drops it
        model = replace(self, o_A=None if offset is None else np.asarray(offset, np.float32).reshape(-1),
                        **dict.fromkeys(SHAPE_STAGES["annotation_shape"]),
                        provenance=dict(self.provenance, **(provenance or {})))
        model.validate()
        return model

    def has_shape_stage(self, name: str) -> bool:
        return getattr(self, SHAPE_STAGES[name][0]) is not None

    @property
    def has_output_stages(self) -> bool:
        """Whether the output landmarks move last (annotation offset or a shape stage)."""
        return self.o_A is not None or any(self.has_shape_stage(name) for name in SHAPE_STAGES)

    def with_shape_stage(self, name: str, weights: np.ndarray, bias: np.ndarray, reference: np.ndarray,
                         provenance: dict | None = None) -> DescentModel:
        """This model with the shape stage ``name`` (``SHAPE_STAGES``) replaced by the given one."""
        w, b, m = SHAPE_STAGES[name]
        model = replace(self, **{w: np.asarray(weights, np.float32), b: np.asarray(bias, np.float32).reshape(-1),
                                 m: np.asarray(reference, np.float32).reshape(-1)},
                        provenance=dict(self.provenance, **(provenance or {})))
        model.validate()
        return model

    def shape_step(self, name: str, landmarks: np.ndarray) -> np.ndarray:
        """Shape stage ``name``'s Delta X (68, 2) crop px at ``landmarks`` (68, 2)."""
        weights, bias, reference = (getattr(self, f) for f in SHAPE_STAGES[name])
        normalised, frame = similarity_frames(np.asarray(landmarks)[None], reference.reshape(N_LANDMARKS, 2))
        moves = (weights @ (normalised.reshape(-1) - reference) + bias).reshape(N_LANDMARKS, 2)
        return (moves @ np.linalg.inv(frame[0]).T).astype(np.float32)

    @property
    def uses_fine_crop(self) -> bool:
        return self.fine_iterations + self.local_iterations > 0

    def local_step(self, k: int, histograms: np.ndarray) -> np.ndarray:
        """Local fine stage k: Delta X (68, 2) from the histograms (68, H) at the 68 current
        landmarks, each landmark's from those at its neighbours."""
        h = np.asarray(histograms, np.float32).reshape(1, N_LANDMARKS, -1)
        return local_moves(self.W_P[k], self.b_P[k], h, self.local_neighbours)[0]

    def fine_step(self, k: int, histograms: np.ndarray) -> np.ndarray:
        """Fine 2D stage k: Delta X (68, 2) from the histograms at the 68 current landmarks."""
        h = np.asarray(histograms, np.float32).reshape(-1)
        return (self.U_F[k] @ (self.V_F[k] @ h) + self.b_F[k]).reshape(N_LANDMARKS, 2)

    def with_fine_stages(self, R_F: np.ndarray, b_F: np.ndarray, layout: HistogramLayout, rank: int,
                         provenance: dict | None = None) -> DescentModel:
        """This model followed by the given fine 2D stages (replacing any it had), their
        regressors ``R_F`` (M, 136, 68 H) cut to ``rank`` by truncated SVD. They follow its local
        fine stages, if any, and read the same ``layout``."""
        if self.local_iterations and layout != self.fine_layout:
            raise ValueError(f"the fine stages must read the local stages' layout {self.fine_layout}, got {layout}")
        u, v = low_rank_factors(R_F, rank)
        model = replace(self, U_F=u, V_F=v, b_F=np.asarray(b_F, np.float32), fine_layout=layout, **NO_LAST_STAGES,
                        provenance=dict(self.provenance, **(provenance or {})))
        model.validate()
        return model

    def landmark_step(self, k: int, features: np.ndarray) -> np.ndarray:
        """Final 2D stage k: Delta X (68, 2) from the descriptors at the 68 current landmarks."""
        psi = np.asarray(features, np.float32).reshape(-1)
        return (self.R_L[k] @ psi + self.b_L[k]).reshape(N_LANDMARKS, 2)

    def with_landmark_stages(self, R_L: np.ndarray, b_L: np.ndarray, provenance: dict | None = None) -> DescentModel:
        """This cascade followed by the given final 2D stages (replacing any it had)."""
        model = replace(self, R_L=np.asarray(R_L, np.float32), b_L=np.asarray(b_L, np.float32),
                        provenance=dict(self.provenance, **(provenance or {})))
        model.validate()
        return model

    def with_local_stages(self, W_P: np.ndarray, b_P: np.ndarray, neighbours: np.ndarray, layout: HistogramLayout,
                          provenance: dict | None = None) -> DescentModel:
        """This model with the given local fine stages (replacing any it had) and no global fine
        stages: those are learned on what the local ones leave (``with_fine_stages`` next)."""
        model = replace(self, W_P=np.asarray(W_P, np.float32), b_P=np.asarray(b_P, np.float32),
                        local_neighbours=np.asarray(neighbours, np.int64), fine_layout=layout,
                        U_F=None, V_F=None, b_F=None, **NO_LAST_STAGES,
                        provenance=dict(self.provenance, **(provenance or {})))
        model.validate()
        return model

    def step(self, k: int, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply eq. 4 and 5 of iteration k: returns (Delta X (68, 2), Delta w (6,))."""
        phi = np.asarray(features, np.float32).reshape(-1)
        dx = self.R_X[k] @ phi + self.b_X[k]
        dw = self.R_w[k] @ phi + self.b_w[k]
        return dx.reshape(N_LANDMARKS, 2), dw

    def first(self, iterations: int, landmark_iterations: int | None = None,
              fine_iterations: int | None = None, local_iterations: int | None = None) -> DescentModel:
        """The cascade cut after ``iterations`` steps: each step's regressor was learned on the
        states the earlier steps produce, so the first k of a longer cascade are exactly a k-step one.
        The final 2D stages were learned after all iterations: a cut cascade drops them, and
        ``landmark_iterations`` keeps the first few of them (default: all, or none when cut), and
        ``local_iterations`` likewise the local fine stages, learned after all of those, and
        ``fine_iterations`` the global fine stages, learned after all local ones."""
        if not 1 <= iterations <= self.iterations:
            raise ValueError(f"iterations must be in 1..{self.iterations}, got {iterations}")
        keep_l = (self.landmark_iterations if iterations == self.iterations else 0) \
            if landmark_iterations is None else landmark_iterations
        if not 0 <= keep_l <= (self.landmark_iterations if iterations == self.iterations else 0):
            raise ValueError(f"landmark_iterations must be in 0..{self.landmark_iterations} "
                             f"(and 0 for a cut cascade), got {landmark_iterations}")
        whole = iterations == self.iterations and keep_l == self.landmark_iterations
        keep_p = (self.local_iterations if whole else 0) if local_iterations is None else local_iterations
        if not 0 <= keep_p <= (self.local_iterations if whole else 0):
            raise ValueError(f"local_iterations must be in 0..{self.local_iterations} "
                             f"(and 0 when anything before them is cut), got {local_iterations}")
        whole = whole and keep_p == self.local_iterations
        keep_f = (self.fine_iterations if whole else 0) if fine_iterations is None else fine_iterations
        if not 0 <= keep_f <= (self.fine_iterations if whole else 0):
            raise ValueError(f"fine_iterations must be in 0..{self.fine_iterations} "
                             f"(and 0 when anything before them is cut), got {fine_iterations}")
        if whole and keep_f == self.fine_iterations:
            return self  # the annotation offset was measured after all of it: kept only here
        provenance = dict(self.provenance)
        if iterations < self.iterations:
            provenance["truncated_from_iterations"] = int(self.iterations)
        if keep_l < self.landmark_iterations:
            provenance["truncated_from_landmark_iterations"] = int(self.landmark_iterations)
        if keep_f < self.fine_iterations:
            provenance["truncated_from_fine_iterations"] = int(self.fine_iterations)
        if keep_p < self.local_iterations:
            provenance["truncated_from_local_iterations"] = int(self.local_iterations)
        return replace(self, R_X=self.R_X[:iterations], b_X=self.b_X[:iterations], R_w=self.R_w[:iterations],
                       b_w=self.b_w[:iterations], R_L=self.R_L[:keep_l], b_L=self.b_L[:keep_l],
                       U_F=self.U_F[:keep_f], V_F=self.V_F[:keep_f], b_F=self.b_F[:keep_f],
                       W_P=self.W_P[:keep_p], b_P=self.b_P[:keep_p], **NO_LAST_STAGES, provenance=provenance)

    def metadata(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "descriptor": self.descriptor,
            "descriptor_dim": int(self.descriptor_dim),
            "n_landmarks": N_LANDMARKS,
            "n_dense": N_DENSE,
            "iterations": int(self.iterations),
            "landmark_iterations": int(self.landmark_iterations),
            **({"fine_iterations": int(self.fine_iterations), "fine_rank": int(self.fine_rank)}
               if self.fine_iterations else {}),
            **({"local_iterations": int(self.local_iterations),
                "local_neighbours": np.asarray(self.local_neighbours).tolist()} if self.local_iterations else {}),
            **({"fine_layout": self.fine_layout.to_dict()} if self.uses_fine_crop else {}),
            **({"annotation_offset": True} if self.o_A is not None else {}),
            **{name: True for name in SHAPE_STAGES if self.has_shape_stage(name)},
            "crop_size": int(self.crop_size),
            "regularisation": float(self.regularisation),
            "box_priors": {k: v.to_dict() for k, v in self.box_priors.items()},
            "provenance": self.provenance,
            "extra": self.extra,
        }

    def to_bytes(self, dtype=np.float16) -> bytes:
        """Serialised file content; matrices stored as ``dtype`` (float16 halves the size)."""
        self.validate()
        buf = io.BytesIO()
        stages = {"R_L": self.R_L.astype(dtype), "b_L": self.b_L.astype(np.float32)} if self.landmark_iterations else {}
        if self.fine_iterations:
            stages.update(U_F=self.U_F.astype(dtype), V_F=self.V_F.astype(dtype), b_F=self.b_F.astype(np.float32))
        if self.local_iterations:
            stages.update(W_P=self.W_P.astype(dtype), b_P=self.b_P.astype(np.float32))
        if self.o_A is not None:
            stages.update(o_A=self.o_A.astype(np.float32))
        for name, fields in SHAPE_STAGES.items():  # small: kept in float32
            if self.has_shape_stage(name):
                stages.update({f: getattr(self, f).astype(np.float32) for f in fields})
        np.savez_compressed(buf, metadata_json=np.array(json.dumps(self.metadata())),
                            R_X=self.R_X.astype(dtype), b_X=self.b_X.astype(np.float32),
                            R_w=self.R_w.astype(dtype), b_w=self.b_w.astype(np.float32), **stages)
        return buf.getvalue()

    def save(self, path: str | Path, dtype=np.float16) -> str:
        """Write the file; returns its sha256."""
        data = self.to_bytes(dtype)
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, expect_descriptor: str | None = None) -> DescentModel:
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"descent model not found: {path}")
        try:
            data = path.read_bytes()
        except OSError as exc:  # a folder, no permission, an I/O error
            raise ModelFileError(f"descent model {path} cannot be read: {exc.strerror or exc}") from exc
        return cls.from_bytes(data, source=str(path), expect_descriptor=expect_descriptor)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", expect_descriptor: str | None = None) -> DescentModel:
        """Parse and validate a file's content. Every failure is a ``ModelFileError`` naming the
        field: callers (the ROS nodes) catch that one type, and a bad file must not kill them."""
        try:
            return cls._parse(data, source, expect_descriptor)
        except ModelFileError:
            raise
        except Exception as exc:  # whatever zip/npy parsing throws on hostile bytes
            raise ModelFileError(f"descent model {source} is unreadable or malformed: "
                                 f"{type(exc).__name__}: {exc}") from exc

    @classmethod
    def _parse(cls, data: bytes, source: str, expect_descriptor: str | None) -> DescentModel:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ModelFileError(f"descent model {source} is unreadable or truncated: {exc}") from exc
        with archive:
            meta = _read_metadata(archive, source)
            if expect_descriptor is not None and meta["descriptor"] != expect_descriptor:
                raise ModelFileError(f"descent model {source}: field 'descriptor' is {meta['descriptor']!r}, "
                                     f"expected {expect_descriptor!r}")
            k, d = meta["iterations"], N_DENSE * meta["descriptor_dim"]
            # shapes follow from the metadata and are checked in each array's header, before
            # its data is read: a small file cannot make the loader allocate much
            shapes = {"R_X": (k, 2 * N_LANDMARKS, d), "b_X": (k, 2 * N_LANDMARKS),
                      "R_w": (k, CAMERA_SIZE, d), "b_w": (k, CAMERA_SIZE)}
            n_l = meta["landmark_iterations"]
            if n_l:
                shapes.update(R_L=(n_l, 2 * N_LANDMARKS, N_LANDMARKS * meta["descriptor_dim"]),
                              b_L=(n_l, 2 * N_LANDMARKS))
            n_f, n_p = meta["fine_iterations"], meta["local_iterations"]
            layout = HistogramLayout(**meta["fine_layout"]) if n_f or n_p else None
            if n_f:
                rank = meta["fine_rank"]
                shapes.update(U_F=(n_f, 2 * N_LANDMARKS, rank), V_F=(n_f, rank, N_LANDMARKS * layout.dim),
                              b_F=(n_f, 2 * N_LANDMARKS))
            neighbours = np.asarray(meta["local_neighbours"], np.int64) if n_p else None
            if n_p:
                shapes.update(W_P=(n_p, N_LANDMARKS, 2, neighbours.shape[1] * layout.dim), b_P=(n_p, 2 * N_LANDMARKS))
            if meta["annotation_offset"]:
                shapes.update(o_A=(2 * N_LANDMARKS,))
            for name, fields in SHAPE_STAGES.items():
                if meta[name]:
                    shapes.update(zip(fields, SHAPE_ARRAYS.values()))
            arrays = {name: _read_array(archive, name, source, shape, meta)
                      for name, shape in shapes.items()}
        model = cls(R_X=arrays["R_X"].astype(np.float32), b_X=arrays["b_X"].astype(np.float32),
                    R_w=arrays["R_w"].astype(np.float32), b_w=arrays["b_w"].astype(np.float32),
                    descriptor=meta["descriptor"], descriptor_dim=meta["descriptor_dim"],
                    crop_size=meta["crop_size"], regularisation=float(meta["regularisation"]),
                    box_priors={kind: BoxPrior(**v) for kind, v in meta["box_priors"].items()},
                    provenance=meta["provenance"], extra=meta.get("extra", {}),
                    R_L=arrays["R_L"].astype(np.float32) if "R_L" in arrays else None,
                    b_L=arrays["b_L"].astype(np.float32) if "b_L" in arrays else None,
                    U_F=arrays["U_F"].astype(np.float32) if "U_F" in arrays else None,
                    V_F=arrays["V_F"].astype(np.float32) if "V_F" in arrays else None,
                    b_F=arrays["b_F"].astype(np.float32) if "b_F" in arrays else None, fine_layout=layout,
                    W_P=arrays["W_P"].astype(np.float32) if "W_P" in arrays else None,
                    b_P=arrays["b_P"].astype(np.float32) if "b_P" in arrays else None, local_neighbours=neighbours,
                    o_A=arrays["o_A"].astype(np.float32) if "o_A" in arrays else None,
                    **{f: arrays[f].astype(np.float32) for fields in SHAPE_STAGES.values() for f in fields
                       if f in arrays})
        model.validate(f"descent model {source}")
        return model

    def validate(self, source: str = "descent model") -> None:
        if self.descriptor not in DESCRIPTOR_KINDS:
            raise ModelFileError(f"{source}: field 'descriptor' is {self.descriptor!r}, not one of {DESCRIPTOR_KINDS}")
        k, d = self.R_X.shape[0] if self.R_X.ndim == 3 else -1, self.feature_dim
        expected = {"R_X": (k, 2 * N_LANDMARKS, d), "b_X": (k, 2 * N_LANDMARKS),
                    "R_w": (k, CAMERA_SIZE, d), "b_w": (k, CAMERA_SIZE)}
        for name, shape in expected.items():
            arr = getattr(self, name)
            if k < 1 or arr.shape != shape:
                raise ModelFileError(f"{source}: field '{name}' has shape {arr.shape}, expected {shape} "
                                     f"(descriptor_dim {self.descriptor_dim} x {N_DENSE} points)")
            if arr.dtype.kind != "f":
                raise ModelFileError(f"{source}: field '{name}' has dtype {arr.dtype}, expected floating point")
            if not np.all(np.isfinite(arr)):
                raise ModelFileError(f"{source}: field '{name}' holds NaN or inf")
        n_l = self.R_L.shape[0] if isinstance(self.R_L, np.ndarray) and self.R_L.ndim == 3 else -1
        n_f = self.U_F.shape[0] if isinstance(self.U_F, np.ndarray) and self.U_F.ndim == 3 else -1
        rank = self.U_F.shape[2] if n_f >= 0 else -1
        fine_dim = N_LANDMARKS * (self.fine_layout or HistogramLayout()).dim
        _check_neighbours(source, self.local_neighbours)
        n_p = self.W_P.shape[0] if isinstance(self.W_P, np.ndarray) and self.W_P.ndim == 4 else -1
        local_dim = np.shape(self.local_neighbours)[1] * (self.fine_layout or HistogramLayout()).dim
        if n_p == 0:  # no local stages: their empty array's width does not matter
            local_dim = self.W_P.shape[3]
        stages = {"W_P": (n_p, N_LANDMARKS, 2, local_dim), "b_P": (n_p, 2 * N_LANDMARKS),
                  "R_L": (n_l, 2 * N_LANDMARKS, self.landmark_feature_dim), "b_L": (n_l, 2 * N_LANDMARKS),
                  "U_F": (n_f, 2 * N_LANDMARKS, rank), "V_F": (n_f, rank, fine_dim), "b_F": (n_f, 2 * N_LANDMARKS)}
        for name, shape in stages.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape or shape[0] > MAX_ITERATIONS:
                raise ModelFileError(f"{source}: field '{name}' has shape {getattr(arr, 'shape', None)}, expected "
                                     f"{shape} (descriptor_dim {self.descriptor_dim} x {N_LANDMARKS} landmarks, "
                                     f"at most {MAX_ITERATIONS} stages)")
            if arr.dtype.kind != "f":
                raise ModelFileError(f"{source}: field '{name}' has dtype {arr.dtype}, expected floating point")
            if not np.all(np.isfinite(arr)):
                raise ModelFileError(f"{source}: field '{name}' holds NaN or inf")
        if self.o_A is not None and (not isinstance(self.o_A, np.ndarray) or self.o_A.shape != (2 * N_LANDMARKS,)
                                     or self.o_A.dtype.kind != "f" or not np.all(np.abs(self.o_A) <= self.crop_size)):
            raise ModelFileError(f"{source}: field 'o_A' must be {2 * N_LANDMARKS} finite floats within the crop "
                                 f"size {self.crop_size}, got {_describe(self.o_A)}")
        for fields in SHAPE_STAGES.values():
            _check_shape_stage(source, self, fields)
        if (n_f > 0 or n_p > 0) and self.fine_layout is None:
            raise ModelFileError(f"{source}: fine 2D stages without a 'fine_layout'")
        _check_number(source, "regularisation", self.regularisation, low=0.0)
        _check_int(source, "crop_size", self.crop_size, *CROP_SIZE_RANGE)
        if "detector" not in self.box_priors and "landmarks" not in self.box_priors:
            raise ModelFileError(f"{source}: field 'box_priors' names neither 'detector' nor 'landmarks'")
        for kind, prior in self.box_priors.items():
            _check_box_prior(source, kind, prior.to_dict())


def similarity_frames(shapes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``shapes`` (n, 68, 2) centred, turned and scaled onto ``reference`` (68, 2, centred) by
    least squares: returns them (n, 68, 2) and each one's 2 x 2 matrix M, so that the normalised
    shape is M (X - mean(X)) and a move d in that frame is M^-1 d in the shape's own."""
    x = np.asarray(shapes, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    ref = np.asarray(reference, np.float64)
    size = (x ** 2).sum(axis=(1, 2))
    degenerate = size < 1e-9  # every point in one place: no frame to read, the identity serves
    size = np.where(degenerate, 1.0, size)
    a = np.where(degenerate, 1.0, (x * ref).sum(axis=(1, 2)) / size)
    b = np.where(degenerate, 0.0, (x[..., 0] * ref[..., 1] - x[..., 1] * ref[..., 0]).sum(axis=1) / size)
    frames = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], axis=1)
    return np.einsum("npk,njk->npj", x, frames), frames


def local_moves(weights: np.ndarray, offsets: np.ndarray, histograms: np.ndarray, neighbours: np.ndarray,
                chunk: int = 1024) -> np.ndarray:
    """(n, 68, 2): one local fine stage's moves, ``weights`` (68, 2, K H) and ``offsets`` (136,),
    for n samples' histograms (n, 68, H) at their landmarks; landmark l reads ``neighbours[l]``.
    ``chunk`` samples at a time: the gathered neighbours are K times the histograms, which for a
    training set is gigabytes."""
    moves = np.empty((len(histograms), N_LANDMARKS, 2), np.result_type(weights, histograms))
    for start in range(0, len(histograms), chunk):
        part = histograms[start:start + chunk]
        gathered = part[:, neighbours].reshape(len(part), N_LANDMARKS, -1)
        moves[start:start + chunk] = np.einsum("lck,nlk->nlc", weights, gathered)
    return moves + offsets.reshape(N_LANDMARKS, 2)


def low_rank_factors(matrices: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., m, n) matrices -> (..., m, rank) and (..., rank, n) float32 factors whose product is
    their best rank-``rank`` approximation (truncated SVD)."""
    u, sv, vt = np.linalg.svd(np.asarray(matrices, np.float64), full_matrices=False)
    return (u[..., :rank] * sv[..., None, :rank]).astype(np.float32), vt[..., :rank, :].astype(np.float32)


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_number(source: str, name: str, value, low: float | None = None) -> None:
    """A finite real (JSON int or float, never bool), at least ``low`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ModelFileError(f"{source}: field '{name}' is {_describe(value)}, expected a number")
    if not np.isfinite(value):
        raise ModelFileError(f"{source}: field '{name}' is {value}, expected a finite number")
    if low is not None and value < low:
        raise ModelFileError(f"{source}: field '{name}' is {value}, expected at least {low}")


def _check_box_prior(source: str, kind: str, prior: dict) -> None:
    """A box prior's numbers; its keypoint term, where present, 3 intercepts and 3 rows of 3k
    coefficients (``face_crop.keypoint_features`` of k keypoints)."""
    for name, value in prior.items():
        if name.startswith("keypoint_"):
            continue
        _check_number(source, f"box_priors.{kind}.{name}", value, low=0.0 if name.startswith("std_") else None)
    intercept, coef = prior.get("keypoint_intercept", ()), prior.get("keypoint_coef", ())
    _check_type(source, f"box_priors.{kind}.keypoint_intercept", intercept, (list, tuple), "a list")
    _check_type(source, f"box_priors.{kind}.keypoint_coef", coef, (list, tuple), "a list")
    rows = [row for row in coef if isinstance(row, (list, tuple))]
    width = len(rows[0]) if rows else 0
    if (intercept or coef) and (len(intercept) != 3 or len(rows) != 3 or len(coef) != 3 or width == 0
                                or width % 3 or any(len(r) != width for r in rows)):
        raise ModelFileError(f"{source}: field 'box_priors.{kind}' has a keypoint term of shapes "
                             f"{len(intercept)} and {[len(r) if isinstance(r, (list, tuple)) else r for r in coef]}, "
                             "expected 3 intercepts and 3 rows of 3k coefficients")
    for i, value in enumerate(intercept):
        _check_number(source, f"box_priors.{kind}.keypoint_intercept[{i}]", value)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            _check_number(source, f"box_priors.{kind}.keypoint_coef[{i}][{j}]", value)


def _check_fine_layout(source: str, layout) -> None:
    _check_type(source, "fine_layout", layout, dict, "a JSON object")
    fields = set(HistogramLayout.__dataclass_fields__)
    if set(layout) != fields:
        raise ModelFileError(f"{source}: field 'fine_layout' has entries {sorted(layout)}, expected {sorted(fields)}")
    for name, (low, high) in FINE_LAYOUT_RANGES.items():
        _check_int(source, f"fine_layout.{name}", layout[name], low, high)


def _check_shape_stage(source: str, model: DescentModel, fields: tuple[str, str, str]) -> None:
    """A shape stage's three arrays come together, finite, of their shapes, with a reference shape."""
    present = [getattr(model, name) is not None for name in fields]
    if not any(present):
        return
    if not all(present):
        raise ModelFileError(f"{source}: a shape stage needs all of {list(fields)}")
    for name, shape in zip(fields, SHAPE_ARRAYS.values()):
        arr = getattr(model, name)
        if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype.kind != "f" \
                or not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{source}: field '{name}' must be finite floats of shape {shape}, "
                                 f"got {_describe(arr)}")
    if not np.any(getattr(model, fields[2])):
        raise ModelFileError(f"{source}: field '{fields[2]}' (the reference shape) is all zeros")


def _check_neighbours(source: str, neighbours) -> None:
    """(68, K) landmark indices, each row starting with its own landmark."""
    table = np.asarray(neighbours)
    if table.ndim != 2 or table.shape[0] != N_LANDMARKS or not 1 <= table.shape[1] <= N_LANDMARKS \
            or table.dtype.kind not in "iu":
        raise ModelFileError(f"{source}: field 'local_neighbours' is a {table.dtype} table of shape {table.shape}, "
                             f"expected ({N_LANDMARKS}, K) integers with 1 <= K <= {N_LANDMARKS}")
    if table.min() < 0 or table.max() >= N_LANDMARKS or np.any(table[:, 0] != np.arange(N_LANDMARKS)):
        raise ModelFileError(f"{source}: field 'local_neighbours' must hold landmark indices 0..{N_LANDMARKS - 1}, "
                             "each row starting with its own landmark")


def _check_int(source: str, name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ModelFileError(f"{source}: field '{name}' is {_describe(value)}, expected an integer")
    if not low <= value <= high:
        raise ModelFileError(f"{source}: field '{name}' is {value}, expected {low}..{high}")


def _check_type(source: str, name: str, value, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise ModelFileError(f"{source}: field '{name}' is {_describe(value)}, expected {what}")


def _open_member(archive: zipfile.ZipFile, name: str, source: str):
    member = f"{name}.npy"
    if member not in archive.namelist():
        raise ModelFileError(f"descent model {source} lacks field '{name}'")
    return archive.open(member)


def _array_header(archive: zipfile.ZipFile, name: str, source: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from the .npy header, without reading the data."""
    with _open_member(archive, name, source) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ModelFileError(f"descent model {source}: field '{name}' has npy format {version}")
    return shape, dtype


def _read_array(archive: zipfile.ZipFile, name: str, source: str, shape: tuple, meta: dict) -> np.ndarray:
    """One array, after its header shows the expected shape and a real floating dtype."""
    got, dtype = _array_header(archive, name, source)
    if dtype.kind != "f":  # integer, bool, complex, string or object arrays are not weights
        raise ModelFileError(f"descent model {source}: field '{name}' has dtype {dtype}, expected floating point")
    if len(got) == len(shape) and got[0] != shape[0]:
        count = {"R_L": "landmark_iterations", "b_L": "landmark_iterations", "U_F": "fine_iterations",
                 "V_F": "fine_iterations", "b_F": "fine_iterations", "W_P": "local_iterations",
                 "b_P": "local_iterations", "o_A": "annotation_offset",
                 **{f: stage for stage, fields in SHAPE_STAGES.items() for f in fields}}.get(name, "iterations")
        raise ModelFileError(f"descent model {source}: field '{count}' says {shape[0]} "
                             f"but '{name}' holds {got[0]}")
    if got != shape:
        raise ModelFileError(f"descent model {source}: field '{name}' has shape {got}, expected {shape} "
                             f"(descriptor_dim {meta['descriptor_dim']} x "
                             f"{N_DENSE if name in ARRAYS else N_LANDMARKS} points)")
    with _open_member(archive, name, source) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_metadata(archive: zipfile.ZipFile, source: str) -> dict:
    """The ``metadata_json`` field, every entry checked for its JSON type and bounds."""
    src = f"descent model {source}"
    shape, dtype = _array_header(archive, "metadata_json", source)
    if shape != () or dtype.kind != "U":
        raise ModelFileError(f"{src}: field 'metadata_json' is a {dtype} array of shape {shape}, expected one string")
    with _open_member(archive, "metadata_json", source) as f:
        text = str(np.lib.format.read_array(f, allow_pickle=False)[()])
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{src}: field 'metadata_json' is not JSON: {exc}") from exc
    _check_type(src, "metadata_json", meta, dict, "a JSON object")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelFileError(f"{src} lacks fields {missing}")
    _check_int(src, "schema_version", meta["schema_version"], -2**31, 2**31)
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ModelFileError(f"{src}: field 'schema_version' is {meta['schema_version']}, "
                             f"this package reads {SCHEMA_VERSION}")
    _check_type(src, "descriptor", meta["descriptor"], str, "a string")
    if meta["descriptor"] not in DESCRIPTOR_KINDS:
        raise ModelFileError(f"{src}: field 'descriptor' is {meta['descriptor']!r}, not one of {DESCRIPTOR_KINDS}")
    for key, expected in (("n_landmarks", N_LANDMARKS), ("n_dense", N_DENSE)):
        _check_int(src, key, meta[key], expected, expected)
    _check_int(src, "descriptor_dim", meta["descriptor_dim"], 1, MAX_DESCRIPTOR_DIM)
    _check_int(src, "iterations", meta["iterations"], 1, MAX_ITERATIONS)
    _check_int(src, "landmark_iterations", meta.setdefault("landmark_iterations", 0), 0, MAX_ITERATIONS)
    _check_int(src, "crop_size", meta["crop_size"], *CROP_SIZE_RANGE)
    _check_int(src, "fine_iterations", meta.setdefault("fine_iterations", 0), 0, MAX_ITERATIONS)
    _check_int(src, "local_iterations", meta.setdefault("local_iterations", 0), 0, MAX_ITERATIONS)
    _check_type(src, "annotation_offset", meta.setdefault("annotation_offset", False), bool, "true or false")
    for name in SHAPE_STAGES:
        _check_type(src, name, meta.setdefault(name, False), bool, "true or false")
    if meta["fine_iterations"] or meta["local_iterations"]:
        _check_fine_layout(src, meta.get("fine_layout"))
    if meta["fine_iterations"]:
        _check_int(src, "fine_rank", meta.get("fine_rank"), 1, 2 * N_LANDMARKS)
    if meta["local_iterations"]:
        table = meta.get("local_neighbours")
        _check_type(src, "local_neighbours", table, list, "a list of lists")
        if not all(isinstance(row, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in row)
                   and len(row) == len(table[0]) for row in table):
            raise ModelFileError(f"{src}: field 'local_neighbours' must be a table of integers, rows of equal length")
        _check_neighbours(src, np.asarray(table, np.int64))
    _check_number(src, "regularisation", meta["regularisation"], low=0.0)
    _check_type(src, "provenance", meta["provenance"], dict, "a JSON object")
    _check_type(src, "extra", meta.setdefault("extra", {}), dict, "a JSON object")
    extra = meta["extra"]
    if "sift_patch_mm" in extra:
        _check_number(src, "extra.sift_patch_mm", extra["sift_patch_mm"], low=1e-3)
    if "dff_weights_sha256" in extra:
        _check_type(src, "extra.dff_weights_sha256", extra["dff_weights_sha256"], str, "a string")
    _check_type(src, "box_priors", meta["box_priors"], dict, "a JSON object")
    known = set(BoxPrior.__dataclass_fields__)
    for kind, prior in meta["box_priors"].items():
        _check_type(src, f"box_priors.{kind}", prior, dict, "a JSON object")
        unknown = sorted(set(prior) - known)
        if unknown:
            raise ModelFileError(f"{src}: field 'box_priors.{kind}' has unknown entries {unknown}")
        _check_box_prior(src, kind, prior)
    return meta
