"""Face detector recall, false positives, speed and box convention on 300-W style folders.

Each folder holds ``NAME.jpg`` + ``NAME.pts`` (68 points). The ground truth is the tight box of
the 68 landmarks. Two matching rules are reported:

- ``iou``: a detection matches if its IoU with the landmark box is at least 0.3 (main figure);
- ``centre``: a detection matches if the landmark-box centre lies inside it.

False positives per image are the detections that do not match (rule ``iou``); the crops can
hold other, unannotated faces, so this is an upper bound.

Conditions:

- ``crop``: the image as stored (a 2.2x landmark-box crop, at most 512 px: faces are large);
- ``canvas``: the crop scaled so its longer side is ``--canvas-long`` px (default 240) and
  pasted at a seeded random place into a 640x480 gray, lightly noisy canvas (a robot camera
  view with a smaller face). Times are measured on these 640x480 images.

Usage::

    python -m face_alignment_ros.evaluation.detector_recall --data ../shared/data/300w/afw \
        --data ../shared/data/300w/helen_train --limit 300 --out detector_recall.json

``--limit`` samples that many images per folder (seeded). Detector specs are
``name[:key=value[:key=value]]`` for ``create_detector``, e.g. ``cascade:backend=skimage``.
"""
from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from face_alignment_ros.common.pts_io import read_pts
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import box_iou, create_detector

CANVAS_W, CANVAS_H = 640, 480
YAW_BINS = (0.0, 0.25, 0.5, 0.75, 1.01)  # bins of |yaw proxy|, see yaw_proxy()
# The slow cascades (0.3-1.4 s a frame) only when asked: --detectors cascade,...
DEFAULT_DETECTORS = "blazeface,blazeface_short,blazeface_full,dlib"


def yaw_proxy(pts: np.ndarray) -> float:
    """Signed jaw asymmetry about the nose tip in [-1, 1]; 0 frontal, |r| -> 1 profile.

    Along the eye axis (roll invariant): r = (dl - dr) / (|dl| + |dr|), with dl, dr the
    distances from jaw ends 0 and 16 to nose tip 30. For a cylinder-like head r ~ sin(yaw), so
    |r| = 0.25, 0.5, 0.75 are roughly 15, 30, 50 degrees; the nose's protrusion makes the proxy
    saturate early on profiles.
    """
    axis = pts[42:48].mean(0) - pts[36:42].mean(0)
    axis = axis / (np.linalg.norm(axis) + 1e-9)
    dl = float((pts[30] - pts[0]) @ axis)
    dr = float((pts[16] - pts[30]) @ axis)
    return float(np.clip((dl - dr) / (abs(dl) + abs(dr) + 1e-9), -1.0, 1.0))


def load_folder(folder: str, limit: int | None, seed: int) -> list[tuple[str, np.ndarray]]:
    jpgs = sorted(p for p in glob.glob(os.path.join(folder, "*.jpg"))
                  if os.path.isfile(p[:-4] + ".pts"))
    if not jpgs:
        raise FileNotFoundError(f"no NAME.jpg + NAME.pts pairs in {folder}")
    if limit is not None and limit < len(jpgs):
        idx = np.random.default_rng(seed).choice(len(jpgs), size=limit, replace=False)
        jpgs = [jpgs[i] for i in sorted(idx)]
    return [(p, read_pts(p[:-4] + ".pts")) for p in jpgs]


def to_canvas(image: np.ndarray, pts: np.ndarray, long_side: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scale the crop to ``long_side`` px and paste it at a random place in a 640x480 canvas."""
    import cv2

    h, w = image.shape[:2]
    s = long_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.clip(rng.normal(114.0, 8.0, (CANVAS_H, CANVAS_W, 3)), 0, 255).astype(np.uint8)
    ox = int(rng.integers(0, CANVAS_W - nw + 1))
    oy = int(rng.integers(0, CANVAS_H - nh + 1))
    canvas[oy:oy + nh, ox:ox + nw] = small
    # Pixel centres at integer coordinates: x' = (x + 0.5) * s - 0.5 + offset.
    new_pts = (pts + 0.5) * np.float32(s) - 0.5 + np.array([ox, oy], np.float32)
    return canvas, new_pts.astype(np.float32)


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    name, *parts = spec.split(":")
    kwargs: dict[str, object] = {}
    for part in parts:
        key, _, value = part.partition("=")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name, kwargs


def _match(det_box, gt_box) -> tuple[bool, bool, float]:
    iou = box_iou(det_box, gt_box)
    cx, cy = (gt_box[0] + gt_box[2]) / 2, (gt_box[1] + gt_box[3]) / 2
    inside = det_box[0] <= cx <= det_box[2] and det_box[1] <= cy <= det_box[3]
    return iou >= 0.3, inside, iou


def box_relation(det_box, gt_box) -> dict[str, float]:
    """Detection box relative to the landmark box, and the inverse (for initialisation)."""
    dw, dh = det_box[2] - det_box[0], det_box[3] - det_box[1]
    gw, gh = gt_box[2] - gt_box[0], gt_box[3] - gt_box[1]
    dcx, dcy = (det_box[0] + det_box[2]) / 2, (det_box[1] + det_box[3]) / 2
    gcx, gcy = (gt_box[0] + gt_box[2]) / 2, (gt_box[1] + gt_box[3]) / 2
    return {
        # detection relative to the landmark box
        "dx_over_lmw": (dcx - gcx) / gw, "dy_over_lmh": (dcy - gcy) / gh,
        "detw_over_lmw": dw / gw, "deth_over_lmh": dh / gh,
        "detsize_over_lmsize": float(np.sqrt(dw * dh / (gw * gh))),
        # landmark box relative to the detection (what an aligner knows at run time)
        "lmdx_over_detw": (gcx - dcx) / dw, "lmdy_over_deth": (gcy - dcy) / dh,
        "lmw_over_detw": gw / dw, "lmh_over_deth": gh / dh,
    }


def evaluate(data_dirs: Sequence[str], detector_specs: Sequence[str],
             conditions: Sequence[str] = ("crop", "canvas"), limit: int | None = None,
             seed: int = 0, canvas_long: int = 240, threads: int = 2,
             progress: bool = True) -> dict[str, object]:
    """Run every detector on every image and condition; return per-image records and summary.

    The summary is keyed ``"{folder}/{condition}/{detector}"`` (plus ``"all/..."`` pooling the
    folders) and holds recall under both rules, recall per yaw bin, false positives per image,
    timing and box-relation statistics (mean, std over matched faces, rule ``iou``).
    """
    import cv2

    cv2.setNumThreads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    samples = []
    for folder in data_dirs:
        tag = os.path.basename(os.path.normpath(folder))
        for path, pts in load_folder(folder, limit, seed):
            samples.append((tag, path, pts))
    detectors = []
    for spec in detector_specs:
        name, kwargs = parse_spec(spec)
        try:
            detectors.append((spec, create_detector(name, **kwargs)))
        except (ImportError, RuntimeError) as exc:  # optional package or model file absent
            print(f"skipping detector {spec!r}: {exc}", file=sys.stderr)
    if not detectors:
        raise RuntimeError("no detector could be built")

    records = []
    total = len(samples) * len(conditions) * len(detectors)
    bar = tqdm(total=total, disable=not progress, file=sys.stderr) if tqdm else None
    for i, (tag, path, pts) in enumerate(samples):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read {path}")
        yaw = yaw_proxy(pts)
        for cond in conditions:
            if cond == "crop":
                img, p = image, pts
            elif cond == "canvas":
                img, p = to_canvas(image, pts, canvas_long, np.random.default_rng([seed, i]))
            else:
                raise ValueError(f"unknown condition {cond!r}")
            gt = tuple(float(v) for v in landmark_box(p))  # plain floats: the records go to JSON
            for spec, det in detectors:
                t0 = time.perf_counter()
                dets = det.detect(img)
                dt = time.perf_counter() - t0
                matches = [_match(d.box, gt) for d in dets]
                best = max(range(len(dets)), key=lambda k: matches[k][2], default=None)
                rec = {
                    "folder": tag, "image": os.path.basename(path), "condition": cond,
                    "detector": spec, "yaw_proxy": yaw, "time_s": dt,
                    "image_shape": list(img.shape[:2]), "n_det": len(dets),
                    "hit_iou": any(m[0] for m in matches),
                    "hit_centre": any(m[1] for m in matches),
                    "fp_iou": sum(not m[0] for m in matches),
                    "fp_centre": sum(not m[1] for m in matches),
                    "best_iou": matches[best][2] if best is not None else 0.0,
                }
                if best is not None and matches[best][0]:
                    rec["relation"] = box_relation(dets[best].box, gt)
                records.append(rec)
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    return {"records": records, "summary": summarize(records),
            "settings": {"data": list(data_dirs), "detectors": list(detector_specs),
                         "conditions": list(conditions), "limit": limit, "seed": seed,
                         "canvas_long": canvas_long, "threads": threads}}


def summarize(records: Sequence[dict[str, object]]) -> dict[str, dict[str, object]]:
    groups: dict[str, list[dict[str, object]]] = {}
    for r in records:
        for folder in (r["folder"], "all"):
            groups.setdefault(f"{folder}/{r['condition']}/{r['detector']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        yaws = np.abs([r["yaw_proxy"] for r in rs])
        bins = {}
        for lo, hi in zip(YAW_BINS[:-1], YAW_BINS[1:]):
            sel = [r for r, y in zip(rs, yaws) if lo <= y < hi]
            bins[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = {
                "n": len(sel),
                "recall_iou": float(np.mean([r["hit_iou"] for r in sel])) if sel else None}
        rel = [r["relation"] for r in rs if "relation" in r]
        relation = {k: {"mean": float(np.mean([x[k] for x in rel])),
                        "std": float(np.std([x[k] for x in rel]))}
                    for k in (rel[0] if rel else {})}
        times = np.array([r["time_s"] for r in rs])
        out[key] = {
            "n": len(rs),
            "recall_iou": float(np.mean([r["hit_iou"] for r in rs])),
            "recall_centre": float(np.mean([r["hit_centre"] for r in rs])),
            "fp_per_image": float(np.mean([r["fp_iou"] for r in rs])),
            "time_ms_median": float(np.median(times) * 1e3),
            "time_ms_mean": float(np.mean(times) * 1e3),
            "recall_by_abs_yaw_proxy": bins,
            "relation": relation,
        }
    return out


def format_table(summary: dict[str, dict[str, object]]) -> str:
    bin_keys = None
    lines = []
    for key in sorted(summary):
        s = summary[key]
        if bin_keys is None:
            bin_keys = list(s["recall_by_abs_yaw_proxy"])
            lines.append("| set / condition / detector | n | recall IoU>=0.3 | recall centre-in "
                         "| FP/img | ms median | " + " | ".join(
                             f"recall |yaw|{b}" for b in bin_keys) + " |")
            lines.append("|" + "---|" * (6 + len(bin_keys)))
        cells = []
        for b in bin_keys:
            v = s["recall_by_abs_yaw_proxy"][b]
            cells.append("-" if v["recall_iou"] is None else f"{v['recall_iou']:.3f} ({v['n']})")
        lines.append(f"| {key} | {s['n']} | {s['recall_iou']:.3f} | {s['recall_centre']:.3f} "
                     f"| {s['fp_per_image']:.3f} | {s['time_ms_median']:.1f} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| set / condition / detector | det cx-lm cx / lm w | det cy-lm cy / lm h "
                 "| det w / lm w | det h / lm h | lm w / det w | lm h / det h "
                 "| lm cx-det cx / det w | lm cy-det cy / det h |")
    lines.append("|" + "---|" * 9)
    for key in sorted(summary):
        rel = summary[key]["relation"]
        if not rel:
            continue
        f = lambda k, rel=rel: f"{rel[k]['mean']:+.3f} ± {rel[k]['std']:.3f}"  # noqa: E731
        lines.append(f"| {key} | " + " | ".join(f(k) for k in (
            "dx_over_lmw", "dy_over_lmh", "detw_over_lmw", "deth_over_lmh", "lmw_over_detw",
            "lmh_over_deth", "lmdx_over_detw", "lmdy_over_deth")) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True,
                    help="folder of NAME.jpg + NAME.pts (repeatable)")
    ap.add_argument("--detectors", default=DEFAULT_DETECTORS,
                    help=f"comma-separated detector specs (default {DEFAULT_DETECTORS})")
    ap.add_argument("--conditions", default="crop,canvas")
    ap.add_argument("--limit", type=int, default=None, help="images sampled per folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--canvas-long", type=int, default=240)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write records and summary as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    result = evaluate(args.data, [s for s in args.detectors.split(",") if s],
                      conditions=[c for c in args.conditions.split(",") if c],
                      limit=args.limit, seed=args.seed, canvas_long=args.canvas_long,
                      threads=args.threads, progress=not args.no_progress)
    print(format_table(result["summary"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
