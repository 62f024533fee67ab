"""Landmark accuracy of several methods on one data set, same images, same run.

Protocols:
- ``given_box``: every method starts from the ground-truth landmark box (AFLW2000-3D protocol);
- ``detector``: every method runs its own detector; the face counts as found when a detection
  (or, for methods without a box, the predicted landmarks' box) has IoU >= 0.3 with the
  ground-truth landmark box. Misses are reported apart and left out of the NME figures.

Where the data gives them (AFLW2000-3D folders, the project's renders), each row also scores the
3D-convention points (``nme3d_box``, x and y of ``landmarks_3d``, box of the true points) and
the head pose (``head_pose.pose_errors``: signed yaw, pitch, roll errors in the AFLW2000-3D Euler
convention and the geodesic error), summarised per |yaw| bin.

Outputs (``write_outputs``): ``results.json`` (summaries), ``per_image.csv`` (one row per image,
method and protocol), ``ced_<data>_<protocol>.png`` and ``nme_vs_yaw_<data>.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common import metrics
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import box_iou
from face_alignment_ros.evaluation import head_pose
from face_alignment_ros.evaluation.datasets import Dataset
from face_alignment_ros.evaluation.peers import Method

PROTOCOLS = ("given_box", "detector")
MATCH_IOU = 0.3


def _match(preds, gt_box):
    best, best_iou = None, 0.0
    for p in preds:
        box = p.box if p.box is not None else landmark_box(p.landmarks)
        iou = box_iou(box, gt_box)
        if iou > best_iou:
            best, best_iou = p, iou
    return (best, best_iou) if best_iou >= MATCH_IOU else (None, best_iou)


def _errors(pred, sample) -> dict:
    """NME of ``landmarks`` (300-W convention); where the data gives them, box NME of the 3D
    convention points (``nme3d_box``: x, y of the fixed model landmarks, AFLW2000-3D protocol)
    and head-pose errors (``head_pose.pose_errors``)."""
    lm = None if pred is None else pred.landmarks
    row = {f"nme_{k}": metrics.nme(lm, sample.landmarks, k) for k in metrics.NORMALISATIONS}
    row.update({f"nme_inter_pupil_{g}": metrics.nme(lm, sample.landmarks, "inter_pupil", points=points)
                for g, points in metrics.REGIONS.items()})
    if sample.visible is not None:
        row["nme_visible_inner_box"] = metrics.nme_visible_inner(lm, sample.landmarks, sample.visible, "box")
    if sample.landmarks_3d is not None:
        lm3 = None if pred is None or pred.landmarks_3d is None else np.asarray(pred.landmarks_3d)[:, :2]
        row["nme3d_box"] = metrics.nme(lm3, sample.landmarks_3d, "box")
    if sample.rotation is not None:
        row.update(head_pose.pose_errors(None if pred is None else pred.head_rotation(), sample.rotation))
    return row


def run_methods(dataset: Dataset, methods: list[Method], protocols=PROTOCOLS, progress: bool = True) -> list[dict]:
    """Per-image rows for every (sample, method, protocol)."""
    rows = []
    for sample in tqdm(dataset, total=len(dataset), desc=dataset.name, unit="img", disable=not progress,
                       mininterval=5):
        gt_box = landmark_box(sample.landmarks)
        # AFLW2000-3D's given box bounds its fixed 3D landmarks, not 300-W's
        box_kind = "landmarks_3d" if dataset.kind == "aflw2000" else "landmarks"
        base = {"data": dataset.name, "image": sample.name,
                "yaw_deg": float(sample.yaw_deg) if sample.yaw_deg is not None else "",
                "yaw_bin": metrics.yaw_bin(sample.yaw_deg)}
        for m in methods:
            for protocol in protocols:
                t = time.perf_counter()
                error = ""
                try:
                    if protocol == "given_box":
                        pred, found, iou = m.align_box(sample.image, gt_box, box_kind), True, 1.0
                    else:
                        pred, iou = _match(m.detect_and_align(sample.image), gt_box)
                        found = pred is not None
                except Exception as exc:  # a peer crashing on one image must not stop the run
                    pred, found, iou, error = None, protocol == "given_box", 0.0, f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - t) * 1000
                row = {**base, "method": m.name, "protocol": protocol, "found": int(found),
                       "output": int(pred is not None), "iou": round(float(iou), 4), "ms": round(ms, 2),
                       **_errors(pred, sample)}
                if error:
                    row["error"] = error
                rows.append(row)
    return rows


def summarise_rows(rows: list[dict]) -> dict:
    """{method: {protocol: summary}} over the rows of one data set."""
    out: dict = {}
    for (method, protocol) in dict.fromkeys((r["method"], r["protocol"]) for r in rows):
        sel = [r for r in rows if r["method"] == method and r["protocol"] == protocol]
        found = [r for r in sel if r["found"]]
        s = {"images": len(sel), "found": len(found), "missed": len(sel) - len(found),
             "median_ms": float(np.median([r["ms"] for r in sel])) if sel else float("nan")}
        for k in metrics.NORMALISATIONS:
            s[k] = metrics.summarise([r[f"nme_{k}"] for r in found])
        if found:  # every row carries them (_errors)
            s["inter_pupil_groups"] = {g: metrics.summarise([r[f"nme_inter_pupil_{g}"] for r in found])["mean"]
                                       for g in metrics.REGIONS}
        yaws = [r["yaw_deg"] for r in found]
        if found and all(y != "" for y in yaws):
            s["yaw_bins_box"] = metrics.yaw_bin_summary([r["nme_box"] for r in found], yaws)
            if "nme_visible_inner_box" in found[0]:
                s["yaw_bins_visible_inner_box"] = metrics.yaw_bin_summary(
                    [r["nme_visible_inner_box"] for r in found], yaws)
        if found and "nme_visible_inner_box" in found[0]:
            s["visible_inner_box"] = metrics.summarise([r["nme_visible_inner_box"] for r in found])
        if found and "nme3d_box" in found[0] and any(np.isfinite(r["nme3d_box"]) for r in found):
            s["nme3d_box"] = metrics.summarise([r["nme3d_box"] for r in found])
            if all(y != "" for y in yaws):
                s["yaw_bins_nme3d_box"] = metrics.yaw_bin_summary([r["nme3d_box"] for r in found], yaws)
        if found and "geodesic_deg" in found[0] and any(np.isfinite(r["geodesic_deg"]) for r in found):
            s["pose"] = head_pose.summarise_pose(found)
            if all(y != "" for y in yaws):
                s["yaw_bins_pose"] = {name: head_pose.summarise_pose(
                    [r for r in found if metrics.yaw_bin(r["yaw_deg"]) == b])
                    for b, name in enumerate(metrics.YAW_BIN_NAMES)}
        out.setdefault(method, {})[protocol] = s
    return out


def evaluate(dataset: Dataset, methods: list[Method], protocols=PROTOCOLS, progress: bool = True) -> dict:
    rows = run_methods(dataset, methods, protocols, progress)
    return {"data": dataset.name, "kind": dataset.kind, "images": len(dataset),
            "methods": {m.name: {"label": m.label, "trained": m.trained} for m in methods},
            "protocols": list(protocols), "summary": summarise_rows(rows), "rows": rows}


# --- outputs ------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def plot_ced(result: dict, protocol: str, path: Path, normalisation: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = normalisation or ("box" if result["kind"] != "300w" else "inter_ocular")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, info in result["methods"].items():
        errs = [r[f"nme_{norm}"] for r in result["rows"]
                if r["method"] == method and r["protocol"] == protocol and r["found"]]
        if not errs:
            continue
        x, y = metrics.ced_curve(errs)
        ax.plot(x * 100, y, label=f"{info['label']} (AUC {metrics.auc(errs):.3f})")
    ax.set_xlabel(f"NME, {norm.replace('_', '-')} normalised (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title(f"CED, {result['data']}, {protocol.replace('_', ' ')}", fontsize=9)
    ax.set_xlim(0, metrics.CED_THRESHOLD * 100)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_nme_vs_yaw(result: dict, path: Path, protocol: str = "given_box") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    if not any("yaw_bins_box" in p.get(protocol, {}) for p in summ.values()):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, per in summ.items():
        s = per.get(protocol, {}).get("yaw_bins_box")
        if s:
            ax.plot(metrics.YAW_BIN_NAMES, [100 * s["bins"][b]["mean"] for b in metrics.YAW_BIN_NAMES], marker="o",
                    label=result["methods"][method]["label"])
    ax.set_xlabel("|yaw| bin (degrees)")
    ax.set_ylabel("NME, box normalised (%)")
    ax.set_title(f"NME against yaw, {result['data']}, {protocol.replace('_', ' ')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: list[dict], out_dir: str | Path, meta: dict | None = None) -> dict:
    """results.json, per_image.csv and the plots; returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": metrics.write_per_image_csv(out_dir / "per_image.csv", [r for res in results for r in res["rows"]])}
    for res in results:
        for protocol in res["protocols"]:
            p = plot_ced(res, protocol, out_dir / f"ced_{_slug(res['data'])}_{protocol}.png")
            files[f"ced/{res['data']}/{protocol}"] = p
        p = plot_nme_vs_yaw(res, out_dir / f"nme_vs_yaw_{_slug(res['data'])}.png")
        if p:
            files[f"yaw/{res['data']}"] = p
    slim = [{k: v for k, v in res.items() if k != "rows"} for res in results]
    files["json"] = out_dir / "results.json"
    files["json"].write_text(json.dumps({"meta": meta or {}, "results": slim}, indent=1, default=float))
    return files


# --- tables -------------------------------------------------------------------------------
def _pct(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def format_tables(result: dict) -> str:
    """Markdown tables of one data set's summary."""
    lines = [f"#### {result['data']} ({result['images']} images)", ""]
    summ = result["summary"]
    for protocol in result["protocols"]:
        lines += [f"Protocol: {protocol.replace('_', ' ')}. NME in %.", "",
                  "| method | found | inter-pupil NME | inter-ocular NME | box NME | AUC@0.08 (inter-ocular) "
                  "| failure @0.08 (inter-ocular) | median ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method, per in summ.items():
            s = per.get(protocol)
            if not s:
                continue
            lines.append(f"| {result['methods'][method]['label']} | {s['found']}/{s['images']} | "
                         f"{_pct(s['inter_pupil']['mean'])} | {_pct(s['inter_ocular']['mean'])} | "
                         f"{_pct(s['box']['mean'])} | {s['inter_ocular']['auc@0.08']:.3f} | "
                         f"{s['inter_ocular']['failure@0.08']:.3f} | {s['median_ms']:.1f} |")
        lines.append("")
        if any("yaw_bins_box" in per.get(protocol, {}) for per in summ.values()):
            lines += ["Box-normalised NME (%) by |yaw| bin:", "",
                      "| method | [0,30] | [30,60] | [60,90] | mean | std | visible inner, box NME |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for method, per in summ.items():
                s = per.get(protocol, {})
                y = s.get("yaw_bins_box")
                if not y:
                    continue
                vis = s.get("visible_inner_box", {}).get("mean")
                lines.append(f"| {result['methods'][method]['label']} | "
                             + " | ".join(f"{_pct(y['bins'][b]['mean'])} (n={y['bins'][b]['count']})"
                                          for b in metrics.YAW_BIN_NAMES)
                             + f" | {_pct(y['mean'])} | {_pct(y['std'])} | {_pct(vis)} |")
            lines.append("")
        if result.get("kind") == "300w":
            lines += ["Inter-pupil NME (%) per landmark group:", "", *format_group_table(result, [protocol]), ""]
        lines += format_3d_tables(result, protocol)
    return "\n".join(lines)


def format_group_table(result: dict, protocols: list[str]) -> list[str]:
    """Markdown table: each method's inter-pupil NME per landmark group (``metrics.REGIONS``), a
    row per protocol (named in the row when there are several)."""
    lines = ["| method | " + " | ".join(metrics.REGIONS) + " |", "|---|" + "---:|" * len(metrics.REGIONS)]
    for protocol in protocols:
        suffix = f" — {protocol.replace('_', ' ')}" if len(protocols) > 1 else ""
        for method, per in result["summary"].items():
            groups = per.get(protocol, {}).get("inter_pupil_groups")
            if groups:
                lines.append(f"| {result['methods'][method]['label']}{suffix} | "
                             + " | ".join(_pct(groups[g]) for g in metrics.REGIONS) + " |")
    return lines


def _deg(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.2f}"


def format_3d_tables(result: dict, protocol: str) -> list[str]:
    """Box NME of the 3D-convention points and head-pose errors by |yaw| bin (markdown lines),
    for the methods that give them."""
    summ = result["summary"]
    lines = []
    rows3 = [(m, per[protocol]) for m, per in summ.items() if "yaw_bins_nme3d_box" in per.get(protocol, {})]
    if rows3:
        lines += ["3D-convention landmarks (the 68 fixed model vertices, AFLW2000-3D protocol), "
                  "box-normalised NME (%) by |yaw| bin:", "",
                  "| method | [0,30] | [30,60] | [60,90] | mean of bins | all images |",
                  "|---|---:|---:|---:|---:|---:|"]
        for method, s in rows3:
            y = s["yaw_bins_nme3d_box"]
            lines.append(f"| {result['methods'][method]['label']} | "
                         + " | ".join(_pct(y["bins"][b]["mean"]) for b in metrics.YAW_BIN_NAMES)
                         + f" | {_pct(y['mean'])} | {_pct(s['nme3d_box']['mean'])} |")
        lines.append("")
    rows_pose = [(m, per[protocol]) for m, per in summ.items() if "yaw_bins_pose" in per.get(protocol, {})]
    if rows_pose:
        lines += ["Head pose, degrees, by |yaw| bin: mean geodesic error (angle of R_pred^T R_true); yaw, "
                  "pitch, roll MAE in the AFLW2000-3D Euler convention; yaw shrink = mean of sign(true yaw) x yaw "
                  "error (negative: yaw underestimated towards frontal):", "",
                  "| method | bin | n | geodesic mean | geodesic median | yaw MAE | pitch MAE | roll MAE "
                  "| yaw shrink |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method, s in rows_pose:
            for name, p in [*s["yaw_bins_pose"].items(), ("all", s["pose"])]:
                lines.append(f"| {result['methods'][method]['label']} | {name} | {p['count'] - p['missing']} | "
                             f"{_deg(p['geodesic_mean'])} | {_deg(p['geodesic_median'])} | {_deg(p['yaw_mae'])} | "
                             f"{_deg(p['pitch_mae'])} | {_deg(p['roll_mae'])} | {_deg(p['yaw_shrink'])} |")
        lines.append("")
    return lines
