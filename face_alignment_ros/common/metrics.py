"""Accuracy metrics shared by evaluation and training: NME, yaw bins, CED, AUC, failure rate,
correct-match rate, and the per-image CSV.

Conventions (iBUG 68-point order, 0-based indices):
- inter-pupil: distance between the eye centres, the means of points 36-41 and 42-47;
- inter-ocular: distance between the outer eye corners 36 and 45;
- box: sqrt(w h) of the ground-truth landmark box (AFLW2000-3D protocol of 3DDFA and the paper).
NME is the mean point-to-point error divided by the normaliser; the functions return fractions,
reports multiply by 100.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# the yaw bins are part of the render format; re-exported for the reports
from face_alignment_ros.common.render_format import YAW_BIN_NAMES, YAW_BINS_DEG, yaw_bin  # noqa: F401

NORMALISATIONS = ("inter_pupil", "inter_ocular", "box")
INNER = slice(17, 68)           # brows, nose, eyes, mouth: no jaw line
REGIONS = {"jaw": slice(0, 17), "brows": slice(17, 27), "nose": slice(27, 36), "eyes": slice(36, 48),
           "mouth": slice(48, 68)}
CED_THRESHOLD = 0.08            # DAN's AUC@0.08 and failure rate @0.08
MATCH_THRESHOLD_MM = 5.0        # a descriptor match is correct within this on the mean face


def inter_pupil(landmarks: np.ndarray) -> float:
    """Distance between the eye centres (mean of landmarks 36-41 and 42-47)."""
    lm = np.asarray(landmarks, np.float64)
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners (landmarks 36 and 45)."""
    lm = np.asarray(landmarks, np.float64)
    return float(np.linalg.norm(lm[36] - lm[45]))


def box_size(landmarks: np.ndarray) -> float:
    """sqrt(w h) of the landmark box: the normaliser for large poses (AFLW2000-3D protocol)."""
    lm = np.asarray(landmarks, np.float64)
    w, h = lm.max(0) - lm.min(0)
    return float(np.sqrt(max(w, 1e-6) * max(h, 1e-6)))


NORMALISERS = {"inter_pupil": inter_pupil, "inter_ocular": inter_ocular, "box": box_size}


def normaliser(landmarks: np.ndarray, kind: str) -> float:
    if kind not in NORMALISERS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, not {kind!r}")
    return NORMALISERS[kind](landmarks)


def point_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(n,) Euclidean error per point, pixels."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return np.linalg.norm(pred - gt, axis=1)


def nme(pred: np.ndarray, gt: np.ndarray, kind: str = "inter_ocular", points=None,
        visible: np.ndarray | None = None) -> float:
    """Normalised mean error (a fraction) over ``points`` (index array or slice, default all),
    restricted to ``visible`` ones when given. The normaliser always uses all of ``gt``.
    NaN when the prediction is missing or no point is left."""
    if pred is None:
        return float("nan")
    err = point_errors(pred, gt)
    mask = np.zeros(len(err), bool)
    mask[points if points is not None else slice(None)] = True
    if visible is not None:
        mask &= np.asarray(visible, bool)
    if not mask.any():
        return float("nan")
    return float(err[mask].mean() / normaliser(gt, kind))


def nme_visible_inner(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, kind: str = "box") -> float:
    """NME on the inner landmarks 17-67 that are visible (paper Table III)."""
    return nme(pred, gt, kind, points=INNER, visible=visible)


# --- yaw bins (render_format.yaw_bin) ---------------------------------------------------------
def yaw_bin_summary(errors: Sequence[float], yaw_deg: Sequence[float | None]) -> dict:
    """Mean NME per yaw bin, and the mean and std over the three bin means (paper Tables I-II).

    NaN errors (no output) are left out of the means and counted in ``missing``."""
    errors = np.asarray(errors, np.float64)
    bins = np.array([yaw_bin(y) for y in yaw_deg])
    out = {"bins": {}}
    means = []
    for b, name in enumerate(YAW_BIN_NAMES):
        e = errors[bins == b]
        ok = e[np.isfinite(e)]
        mean = float(ok.mean()) if len(ok) else float("nan")
        out["bins"][name] = {"count": int(len(e)), "missing": int(len(e) - len(ok)), "mean": mean}
        means.append(mean)
    means = np.array(means)
    out["mean"] = float(means.mean()) if np.all(np.isfinite(means)) else float("nan")
    out["std"] = float(means.std()) if np.all(np.isfinite(means)) else float("nan")
    return out


# --- CED, AUC, failure rate ----------------------------------------------------------------
def ced_curve(errors: Sequence[float], threshold: float = CED_THRESHOLD, steps: int = 1001
              ) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution on [0, threshold]: (x, fraction of images with NME <= x).
    Missing predictions (NaN) count as failures: they stay in the denominator."""
    e = np.asarray(errors, np.float64)
    e = np.where(np.isfinite(e), e, np.inf)
    x = np.linspace(0.0, threshold, steps)
    if len(e) == 0:
        return x, np.zeros_like(x)
    return x, (e[None, :] <= x[:, None]).mean(axis=1)


def auc(errors: Sequence[float], threshold: float = CED_THRESHOLD, steps: int = 1001) -> float:
    """Area under the CED curve up to ``threshold``, divided by ``threshold`` (in [0, 1])."""
    x, y = ced_curve(errors, threshold, steps)
    return float(np.trapezoid(y, x) / threshold)


def failure_rate(errors: Sequence[float], threshold: float = CED_THRESHOLD) -> float:
    """Fraction of images with NME above ``threshold`` (missing predictions fail)."""
    e = np.asarray(errors, np.float64)
    if len(e) == 0:
        return float("nan")
    return float(np.mean(~(np.where(np.isfinite(e), e, np.inf) <= threshold)))


def summarise(errors: Sequence[float]) -> dict:
    """Mean, median, std (over images with a prediction), AUC@0.08, failure rate @0.08."""
    e = np.asarray(errors, np.float64)
    ok = e[np.isfinite(e)]
    return {"count": int(len(e)), "missing": int(len(e) - len(ok)),
            "mean": float(ok.mean()) if len(ok) else float("nan"),
            "median": float(np.median(ok)) if len(ok) else float("nan"),
            "std": float(ok.std()) if len(ok) else float("nan"),
            "auc@0.08": auc(e) if len(e) else float("nan"),
            "failure@0.08": failure_rate(e)}


# --- descriptor matching -------------------------------------------------------------------
def nearest_neighbours(query: np.ndarray, candidates: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the nearest candidate row (Euclidean) for each query row. For unit rows this is
    the largest dot product, as the DFF validation of ``train_dff`` uses."""
    q = np.asarray(query, np.float32)
    c = np.asarray(candidates, np.float32)
    c2 = (c * c).sum(1)
    out = np.empty(len(q), np.int64)
    for i in range(0, len(q), chunk):
        out[i:i + chunk] = np.argmin(c2[None, :] - 2.0 * q[i:i + chunk] @ c.T, axis=1)
    return out


def correct_match_rate(query_points_mm: np.ndarray, matched_points_mm: np.ndarray,
                       threshold_mm: float = MATCH_THRESHOLD_MM) -> float:
    """Fraction of matches whose surface points lie within ``threshold_mm`` of the query's."""
    d = np.linalg.norm(np.asarray(query_points_mm) - np.asarray(matched_points_mm), axis=1)
    return float((d < threshold_mm).mean()) if len(d) else float("nan")


# --- per-image CSV -------------------------------------------------------------------------
def write_per_image_csv(path: str | Path, rows: Iterable[dict]) -> Path:
    """One row per (image, method, protocol); columns are the union of the rows' keys, in
    first-seen order. Floats are written with 6 significant digits."""
    rows = list(rows)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
