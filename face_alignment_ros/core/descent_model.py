"""The learned generic descent directions of the cascade, and their file format.

Per iteration k the model holds (paper eq. 4, 5)

    Delta X = R_X[k] phi + b_X[k]     (68 landmark targets, crop pixels, 136 values)
    Delta w = R_w[k] phi + b_w[k]     (weak-perspective camera, 6 values)

where phi is the concatenation of the descriptors at the 160 dense landmark vertices.

File: one ``.npz`` holding the arrays ``R_X`` (K, 136, D), ``b_X`` (K, 136), ``R_w`` (K, 6, D),
``b_w`` (K, 6) and ``metadata_json``: schema version, descriptor kind and dimension, landmark
counts, iteration count, crop size, shape regularisation, box priors per box kind and the
training provenance.
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
from face_alignment_ros.core.morphable_model import N_DENSE, N_LANDMARKS, ModelFileError

SCHEMA_VERSION = 1
DESCRIPTOR_KINDS = ("dff", "sift")
ARRAYS = ("R_X", "b_X", "R_w", "b_w")
REQUIRED_METADATA = ("schema_version", "descriptor", "descriptor_dim", "n_landmarks", "n_dense",
                     "iterations", "crop_size", "regularisation", "box_priors", "provenance")


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

    @property
    def iterations(self) -> int:
        return self.R_X.shape[0]

    @property
    def feature_dim(self) -> int:
        return N_DENSE * self.descriptor_dim

    def step(self, k: int, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply eq. 4 and 5 of iteration k: returns (Delta X (68, 2), Delta w (6,))."""
        phi = np.asarray(features, np.float32).reshape(-1)
        dx = self.R_X[k] @ phi + self.b_X[k]
        dw = self.R_w[k] @ phi + self.b_w[k]
        return dx.reshape(N_LANDMARKS, 2), dw

    def first(self, iterations: int) -> "DescentModel":
        """The cascade cut after ``iterations`` steps: each step's regressor was learned on the
        states the earlier steps produce, so the first k of a longer cascade are exactly a k-step one."""
        if not 1 <= iterations <= self.iterations:
            raise ValueError(f"iterations must be in 1..{self.iterations}, got {iterations}")
        if iterations == self.iterations:
            return self
        return replace(self, R_X=self.R_X[:iterations], b_X=self.b_X[:iterations], R_w=self.R_w[:iterations],
                       b_w=self.b_w[:iterations],
                       provenance=dict(self.provenance, truncated_from_iterations=int(self.iterations)))

    def metadata(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "descriptor": self.descriptor,
            "descriptor_dim": int(self.descriptor_dim),
            "n_landmarks": N_LANDMARKS,
            "n_dense": N_DENSE,
            "iterations": int(self.iterations),
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
        np.savez_compressed(buf, metadata_json=np.array(json.dumps(self.metadata())),
                            R_X=self.R_X.astype(dtype), b_X=self.b_X.astype(np.float32),
                            R_w=self.R_w.astype(dtype), b_w=self.b_w.astype(np.float32))
        return buf.getvalue()

    def save(self, path: str | Path, dtype=np.float16) -> str:
        """Write the file; returns its sha256."""
        data = self.to_bytes(dtype)
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, expect_descriptor: str | None = None) -> "DescentModel":
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"descent model not found: {path}")
        return cls.from_bytes(path.read_bytes(), source=str(path), expect_descriptor=expect_descriptor)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", expect_descriptor: str | None = None) -> "DescentModel":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelFileError(f"descent model {source} is unreadable or truncated: {exc}") from exc
        if "metadata_json" not in arrays:
            raise ModelFileError(f"descent model {source} lacks field 'metadata_json'")
        try:
            meta = json.loads(str(arrays["metadata_json"]))
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"descent model {source}: field 'metadata_json' is not JSON: {exc}") from exc
        missing = [k for k in REQUIRED_METADATA if k not in meta] + [k for k in ARRAYS if k not in arrays]
        if missing:
            raise ModelFileError(f"descent model {source} lacks fields {missing}")
        if meta["schema_version"] != SCHEMA_VERSION:
            raise ModelFileError(f"descent model {source}: field 'schema_version' is {meta['schema_version']}, "
                                 f"this package reads {SCHEMA_VERSION}")
        if expect_descriptor is not None and meta["descriptor"] != expect_descriptor:
            raise ModelFileError(f"descent model {source}: field 'descriptor' is {meta['descriptor']!r}, "
                                 f"expected {expect_descriptor!r}")
        for key in ("n_landmarks", "n_dense"):
            expected = {"n_landmarks": N_LANDMARKS, "n_dense": N_DENSE}[key]
            if meta[key] != expected:
                raise ModelFileError(f"descent model {source}: field '{key}' is {meta[key]}, expected {expected}")
        try:
            priors = {k: BoxPrior(**v) for k, v in meta["box_priors"].items()}
        except TypeError as exc:
            raise ModelFileError(f"descent model {source}: field 'box_priors' is malformed: {exc}") from exc
        model = cls(R_X=arrays["R_X"].astype(np.float32), b_X=arrays["b_X"].astype(np.float32),
                    R_w=arrays["R_w"].astype(np.float32), b_w=arrays["b_w"].astype(np.float32),
                    descriptor=meta["descriptor"], descriptor_dim=int(meta["descriptor_dim"]),
                    crop_size=int(meta["crop_size"]), regularisation=float(meta["regularisation"]),
                    box_priors=priors, provenance=meta["provenance"], extra=meta.get("extra", {}))
        if model.iterations != int(meta["iterations"]):
            raise ModelFileError(f"descent model {source}: field 'iterations' says {meta['iterations']} "
                                 f"but 'R_X' holds {model.iterations}")
        model.validate(source)
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
        if "detector" not in self.box_priors and "landmarks" not in self.box_priors:
            raise ModelFileError(f"{source}: field 'box_priors' names neither 'detector' nor 'landmarks'")
        if self.crop_size < 16:
            raise ModelFileError(f"{source}: field 'crop_size' is {self.crop_size}")
