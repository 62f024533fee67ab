"""Feature matching, DFF against SIFT (paper Sec. IV-A, Figs. 8-9).

1. Views of one synthetic face (held-out identities' renders, ground-truth correspondence from
   the per-pixel vertex ids): for a pair of views of one identity, query pixels of view A whose
   surface vertex is also seen in view B are matched to the nearest descriptor among all face
   pixels of B; a match is correct when the two surface points lie within 5 mm on the mean face
   (``metrics.MATCH_THRESHOLD_MM``, the rule of the DFF training validation). Correct-match rate
   by view difference |yaw_A - yaw_B| in [0,30], (30,60], (60,90] degrees.
2. Landmark transfer between real photos of different people (held-out 300-W split, ground-truth
   landmarks): each of A's 68 landmarks goes to the pixel of B's face crop with the nearest
   descriptor; error = distance to B's landmark / B's inter-ocular distance.

Descriptors: the DFF network's per-pixel map of the canonical crop (the crop the aligner makes
from the landmark box); SIFT (OpenCV, upright) at every pixel of the same crop, keypoint size
``SIFT_PATCH_MM`` times the crop's pixels per millimetre, as the SIFT aligner samples it.
"""
from __future__ import annotations

import numpy as np

from face_alignment_ros.common import metrics
from face_alignment_ros.common.render_format import BACKGROUND_ID, load_outputs
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.descriptors import SIFT_PATCH_MM
from face_alignment_ros.core.face_crop import FACE_SPAN_MM, apply_affine, crop_image, invert_affine, landmark_box
from face_alignment_ros.core.sift_descriptor import SiftDescriptor

VIEW_BINS = metrics.YAW_BINS_DEG
VIEW_BIN_NAMES = ("0-30", "30-60", "60-90")
DESCRIPTORS = ("dff", "sift")


class Describer:
    """Dense descriptors of a square crop, for the DFF network and SIFT."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.sift = SiftDescriptor()

    def describe(self, kind: str, crop: np.ndarray, points_xy: np.ndarray, px_per_mm: float) -> np.ndarray:
        """(n, D) descriptors of ``crop`` (N x N BGR) at (n, 2) crop-pixel points (x, y)."""
        if kind == "dff":
            return self.extractor.descriptor_map(crop).sample(points_xy)
        return self.sift.compute(crop, points_xy, SIFT_PATCH_MM * px_per_mm)


def _grid(n: int) -> np.ndarray:
    ys, xs = np.mgrid[0:n, 0:n]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)


# --- 1. synthetic views ---------------------------------------------------------------------
def view_pairs(data: dict, pairs_per_bin: int, rng: np.random.Generator) -> dict[int, list[tuple[int, int]]]:
    """Pairs of renders of one identity, grouped by view-difference bin."""
    ident = np.asarray(data["identity"])
    yaw = np.degrees(np.asarray(data["camera"])[:, cam.YAW])
    by_bin: dict[int, list] = {0: [], 1: [], 2: []}
    for i in np.unique(ident):
        rows = np.flatnonzero(ident == i)
        for a in rows:
            for b in rows:
                if a < b:
                    k = metrics.yaw_bin(yaw[a] - yaw[b])
                    if k >= 0:
                        by_bin[k].append((int(a), int(b)))
    return {k: [v[j] for j in rng.permutation(len(v))[:pairs_per_bin]] for k, v in by_bin.items()}


def match_views(describer: Describer, data: dict, a: int, b: int, mean_shape: np.ndarray, rng, queries: int = 200,
                kinds=DESCRIPTORS) -> dict | None:
    """Correct-match rates of one pair of views, per descriptor, plus the matches for drawing."""
    va, vb = np.asarray(data["vertex_ids"][a]).reshape(-1), np.asarray(data["vertex_ids"][b]).reshape(-1)
    n = int(np.sqrt(va.size))
    fa, fb = np.flatnonzero(va != BACKGROUND_ID), np.flatnonzero(vb != BACKGROUND_ID)
    common = fa[np.isin(va[fa], vb[fb])]
    if len(common) < 20:
        return None
    q = np.sort(rng.choice(common, min(queries, len(common)), replace=False))
    grid = _grid(n)
    out = {"a": a, "b": b, "query": grid[q]}
    for kind in kinds:
        crops = [np.ascontiguousarray(data["images"][i]) for i in (a, b)]
        px_mm = [float(data["camera"][i][cam.S]) for i in (a, b)]
        da = describer.describe(kind, crops[0], grid[q], px_mm[0])
        db = describer.describe(kind, crops[1], grid[fb], px_mm[1])
        nearest = fb[metrics.nearest_neighbours(da, db)]
        correct = np.linalg.norm(mean_shape[va[q]] - mean_shape[vb[nearest]], axis=1) < metrics.MATCH_THRESHOLD_MM
        out[kind] = {"rate": float(correct.mean()), "match": grid[nearest], "correct": correct}
    return out


def synthetic_matching(describer: Describer, data: dict, mean_shape: np.ndarray, pairs_per_bin: int = 40,
                       seed: int = 0, queries: int = 200) -> tuple[dict, list]:
    """({descriptor: {bin: mean rate, ...}}, one example pair per bin for the figure)."""
    rng = np.random.default_rng(seed)
    pairs = view_pairs(data, pairs_per_bin, rng)
    rates = {k: {name: [] for name in VIEW_BIN_NAMES} for k in DESCRIPTORS}
    examples = []
    for b, name in enumerate(VIEW_BIN_NAMES):
        for ia, ib in pairs[b]:
            r = match_views(describer, data, ia, ib, mean_shape, rng, queries)
            if r is None:
                continue
            for k in DESCRIPTORS:
                rates[k][name].append(r[k]["rate"])
            if len(examples) <= b:
                r["bin"] = name
                examples.append(r)
    summary = {k: {name: {"pairs": len(v), "correct_match_rate": float(np.mean(v)) if v else float("nan")}
                   for name, v in per.items()} for k, per in rates.items()}
    return summary, examples


# --- 2. landmark transfer between photos ----------------------------------------------------
def photo_pairs(samples: list, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Ordered pairs of photos of different source photos (so, different people, as far as the
    data tells)."""
    from face_alignment_ros.common.photo_split import source_id

    ids = [source_id(s.name.split("/")[-1]) for s in samples]
    cand = [(i, j) for i in range(len(samples)) for j in range(len(samples)) if i != j and ids[i] != ids[j]]
    return [cand[k] for k in rng.permutation(len(cand))[:count]]


def transfer_landmarks(describer: Describer, crop_box_fn, a, b, crop_size: int, kinds=DESCRIPTORS) -> dict:
    """A's landmarks carried to B's image by nearest descriptor within B's face crop."""
    out = {}
    grid = _grid(crop_size)
    px_mm = crop_size / FACE_SPAN_MM  # the canonical crop spans FACE_SPAN_MM of face
    crops = []
    for s in (a, b):
        box = crop_box_fn(landmark_box(s.landmarks))
        crops.append(crop_image(s.image, box, crop_size))
    (crop_a, aff_a), (crop_b, aff_b) = crops
    qa = apply_affine(aff_a, a.landmarks)
    back = invert_affine(aff_b)
    for kind in kinds:
        da = describer.describe(kind, crop_a, qa, px_mm)
        db = describer.describe(kind, crop_b, grid, px_mm)
        moved = apply_affine(back, grid[metrics.nearest_neighbours(da, db)]).astype(np.float32)
        err = metrics.point_errors(moved, b.landmarks) / metrics.inter_ocular(b.landmarks)
        out[kind] = {"landmarks": moved, "errors": err}
    return out


def photo_transfer(describer: Describer, samples: list, crop_box_fn, crop_size: int, pairs: int = 100,
                   seed: int = 0) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    errs = {k: [] for k in DESCRIPTORS}
    examples = []
    for ia, ib in photo_pairs(samples, pairs, rng):
        r = transfer_landmarks(describer, crop_box_fn, samples[ia], samples[ib], crop_size)
        for k in DESCRIPTORS:
            errs[k].append(r[k]["errors"])
        if len(examples) < 3:
            examples.append((samples[ia], samples[ib], r))
    summary = {}
    for k, e in errs.items():
        e = np.array(e)
        summary[k] = {"pairs": len(e), "mean_inter_ocular_nme": float(e.mean()) if len(e) else float("nan"),
                      "regions": {name: float(e[:, sl].mean()) if len(e) else float("nan")
                                  for name, sl in metrics.REGIONS.items()}}
    return summary, examples


# --- figures --------------------------------------------------------------------------------
def draw_view_matches(data: dict, examples: list, path, scale: int = 3, lines: int = 40) -> None:
    """Fig. 8 style: each row one view pair and descriptor; green correct, red wrong."""
    import cv2

    rows = []
    for ex in examples:
        for kind in DESCRIPTORS:
            a = cv2.resize(np.ascontiguousarray(data["images"][ex["a"]]), None, fx=scale, fy=scale)
            b = cv2.resize(np.ascontiguousarray(data["images"][ex["b"]]), None, fx=scale, fy=scale)
            w = a.shape[1]
            canvas = np.concatenate([a, b], 1)
            idx = np.linspace(0, len(ex["query"]) - 1, min(lines, len(ex["query"]))).astype(int)
            for i in idx:
                p = tuple(int(v) for v in (ex["query"][i] * scale + scale / 2))
                q = tuple(int(v) for v in (ex[kind]["match"][i] * scale + scale / 2 + [w, 0]))
                color = (0, 200, 0) if ex[kind]["correct"][i] else (0, 0, 230)
                cv2.line(canvas, p, q, color, 1, cv2.LINE_AA)
                cv2.circle(canvas, p, 2, color, -1)
                cv2.circle(canvas, q, 2, color, -1)
            cv2.putText(canvas, f"{kind.upper()} view diff {ex['bin']}: {100 * ex[kind]['rate']:.0f}% correct",
                        (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(canvas)
    if rows:
        cv2.imwrite(str(path), np.concatenate(rows, 0))


def draw_transfers(examples: list, path, height: int = 256) -> None:
    """Fig. 9 style: photo A with its landmarks, then B with DFF- and SIFT-transferred ones."""
    import cv2

    def panel(sample, pts, label, color):
        x0, y0, x1, y1 = landmark_box(sample.landmarks)
        m = max(x1 - x0, y1 - y0) * 0.7
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - m, cy - m, cx + m, cy + m)
        crop, aff = crop_image(sample.image, box, height)
        crop = crop.copy()
        for p in apply_affine(aff, pts):
            cv2.circle(crop, (int(p[0]), int(p[1])), 2, color, -1, cv2.LINE_AA)
        cv2.putText(crop, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        return crop

    rows = []
    for a, b, r in examples:
        rows.append(np.concatenate([
            panel(a, a.landmarks, "A: ground truth", (0, 255, 255)),
            panel(b, r["dff"]["landmarks"], f"B: DFF {100 * r['dff']['errors'].mean():.1f}%", (0, 200, 0)),
            panel(b, r["sift"]["landmarks"], f"B: SIFT {100 * r['sift']['errors'].mean():.1f}%", (0, 0, 230)),
            panel(b, b.landmarks, "B: ground truth", (0, 255, 255))], 1))
    if rows:
        cv2.imwrite(str(path), np.concatenate(rows, 0))


def run_matching(aligner, out_dir, pairs_per_bin: int = 40, photo_pairs_count: int = 100, work_dir=None,
                 data_dir=None, seed: int = 0) -> dict:
    """Both experiments with the DFF network of ``aligner`` (a DFF FaceAligner); figures to out_dir."""
    from pathlib import Path

    from face_alignment_ros.evaluation.datasets import heldout_300w

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    describer = Describer(aligner.backend.extractor)
    result: dict = {}
    try:

        data = load_outputs(work_dir, "heldout")
        result["synthetic_views"], ex = synthetic_matching(describer, data, aligner.model.mean, pairs_per_bin, seed)
        draw_view_matches(data, ex, out_dir / "matching_views.png")
        result["synthetic_views_figure"] = "matching_views.png"
    except FileNotFoundError as exc:
        result["synthetic_views"] = {"skipped": str(exc)}
    try:
        samples = list(heldout_300w(data_dir))
        n = aligner.backend.crop_size
        result["photo_transfer"], ex = photo_transfer(
            describer, samples, lambda box: aligner.crop_box(box, "landmarks"), n, photo_pairs_count, seed)
        draw_transfers(ex, out_dir / "matching_transfer.png")
        result["photo_transfer_figure"] = "matching_transfer.png"
    except FileNotFoundError as exc:
        result["photo_transfer"] = {"skipped": str(exc)}
    return result
