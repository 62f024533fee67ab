"""Stage ``box-prior``: the detector's box prior read from its keypoints (``face_crop.BoxPrior``).

A turned face's BlazeFace box is smaller, higher and off-centre on it (docs/training.md, round
6), so the constant prior frames a profile too tight and the cascade starts far off. The
detector's six keypoints show how far, and which way, the face turns. This stage runs the
detector on the training photos (and their mirror images) and on the renders and profiled views
of the training identities, and fits (dx, dy, log_scale) of the canonical crop linearly on
``face_crop.keypoint_features`` by ridge regression, each source weighted as a whole (the
photos, what users' cameras see, ``--photo-weight`` times the renders or the profiled views,
which stand for the large poses the photos lack); lambda is chosen on the validation
identities. It writes the keypoint terms to ``box-prior/detector_prior.json``, which stage
``descent`` puts into the detector prior of the models it learns (the constant offsets stay, for
detections without keypoints; ``--write-into`` puts them into existing models). It reports the
offset errors per source and yaw bin, constant against keypoint prior, and, given a descent
model, the DFF cascade's NME from the detector's box on the validation photos and profiled views
with each prior.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.render_format import (
    DESCENT_STAGE,
    PROFILE_STAGE,
    SYNTHESIZE_STAGE,
    TRAIN_DFF_STAGE,
    YAW_BIN_NAMES,
    descent_float32_file,
    load_outputs,
    split_file_name,
    yaw_bin,
)
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.training.detector_starts import cached_detections
from face_alignment_ros.training.photo_records import (
    KEYPOINT_PRIOR_FILE,
    KEYPOINT_PRIOR_STAGE,
    fit_box_priors,
    is_validation,
    load_photo_records,
    mirror_record,
    validation_identities,
    with_keypoint_terms,
)
from face_alignment_ros.training.stage_io import Stage

STAGE = KEYPOINT_PRIOR_STAGE
LAMBDAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
SOURCES = ("photos", "renders", "profiled")


@dataclasses.dataclass
class OffsetRows:
    """Detector boxes with keypoints and their true canonical-crop offsets, one row per face."""
    features: np.ndarray   # (n, 18) face_crop.keypoint_features
    targets: np.ndarray    # (n, 3) true (dx, dy, log_scale)
    source: np.ndarray     # (n,) index into SOURCES
    yaw_bin: np.ndarray    # (n,) 0..2
    part: np.ndarray       # (n,) "train", "validation" or "heldout"

    @classmethod
    def concat(cls, rows: list[OffsetRows]) -> OffsetRows:
        return cls(*(np.concatenate([getattr(r, f.name) for r in rows]) for f in dataclasses.fields(cls)))


def _rows(boxes, keypoints, cameras, source: int, bins, parts) -> OffsetRows:
    keep = np.all(np.isfinite(boxes), axis=1) & np.all(np.isfinite(keypoints), axis=(1, 2))
    feats = np.array([face_crop.keypoint_features(b, k) for b, k in zip(boxes[keep], keypoints[keep])])
    return OffsetRows(feats.reshape(-1, 3 * keypoints.shape[1]), face_crop.box_offsets(boxes[keep], cameras[keep]),
                      np.full(int(keep.sum()), source), np.asarray(bins)[keep], np.asarray(parts)[keep])


def photo_rows(records) -> OffsetRows:
    """Every fitted photo with a detection, and the mirror image of each training photo."""
    import cv2

    boxes, keypoints, cameras, bins, parts = [], [], [], [], []
    for r in tqdm(records, desc="photos", unit="photo", mininterval=5):
        if r.detector_box is None or r.detector_keypoints is None:
            continue
        part = "heldout" if r.split == "heldout" else "validation" if is_validation(r.subset, r.name) else "train"
        views = [r]
        if part != "heldout":
            views.append(mirror_record(r, cv2.imread(r.image_path))[0])
        for v in views:
            boxes.append(v.detector_box)
            keypoints.append(v.detector_keypoints)
            cameras.append(v.camera)
            bins.append(max(yaw_bin(np.degrees(v.camera[cam.YAW])), 0))
            parts.append(part)
    return _rows(np.array(boxes), np.array(keypoints), np.array(cameras), 0, bins, parts)


def crop_rows(stage: Stage, work, detector: str, name: str, source: int, val_identity: np.ndarray) -> OffsetRows:
    """The rendered (``synthesize``) or profiled (``profile``) crops of both splits."""
    out = []
    for split in ("train", "heldout"):
        data = load_outputs(work, split, name)
        found = cached_detections(stage.path(f"detections_{detector}_{name}_{split}.npz"), data, detector)
        identity = np.asarray(data["identity"])
        parts = (np.where(val_identity[identity], "validation", "train") if split == "train"
                 else np.full(len(identity), "heldout"))
        out.append(_rows(found.boxes, found.keypoints, np.asarray(data["camera"]), source,
                         np.asarray(data["yaw_bin"]), parts))
    return OffsetRows.concat(out)


def fit_ridge(features: np.ndarray, targets: np.ndarray, weights: np.ndarray, lam: float):
    """Weighted ridge regression with an unpenalised intercept: (intercept (3,), coef (3, d))."""
    w = weights / weights.sum()
    mean_x, mean_y = w @ features, w @ targets
    x, y = features - mean_x, targets - mean_y
    coef = np.linalg.solve((x * w[:, None]).T @ x + lam * np.eye(x.shape[1]), (x * w[:, None]).T @ y).T
    return mean_y - coef @ mean_x, coef


def source_weights(rows: OffsetRows, photo_weight: float) -> np.ndarray:
    """Each source weighs as a whole, whatever its count: the photos ``photo_weight``, the
    others 1."""
    counts = np.maximum(np.bincount(rows.source, minlength=len(SOURCES)), 1).astype(float)
    return np.where(rows.source == 0, photo_weight, 1.0) / counts[rows.source]


def offset_errors(rows: OffsetRows, predicted: np.ndarray) -> dict:
    """RMS error of the crop centre (box sides) and of the log scale, per source and yaw bin."""
    err = predicted - rows.targets
    out = {}
    for s, name in enumerate(SOURCES):
        for b, bin_name in enumerate(YAW_BIN_NAMES):
            m = (rows.source == s) & (rows.yaw_bin == b)
            if m.sum() >= 5:
                out[f"{name} {bin_name}"] = {
                    "count": int(m.sum()),
                    "centre_rms": round(float(np.sqrt((err[m, :2] ** 2).sum(1).mean())), 4),
                    "log_scale_rms": round(float(np.sqrt((err[m, 2] ** 2).mean())), 4),
                    "log_scale_bias": round(float(err[m, 2].mean()), 4)}
    return out


def with_keypoint_prior(descent: DescentModel, terms: dict) -> DescentModel:
    """The descent model with the keypoint terms in its detector prior (constant offsets kept)."""
    priors = dict(descent.box_priors)
    priors["detector"] = with_keypoint_terms(priors["detector"], terms)
    provenance = dict(descent.provenance, keypoint_box_prior=STAGE)
    return dataclasses.replace(descent, box_priors=priors, provenance=provenance)


def cascade_validation(stage: Stage, work, descent_paths: dict, detector: str, records: list,
                       val_identity: np.ndarray) -> dict:
    """The DFF cascade's NME from the detector's box on the validation photos (inter-pupil) and
    the validation identities' profiled views (box NME per yaw bin), for each descent model."""
    from face_alignment_ros.core.cascade import Cascade
    from face_alignment_ros.core.descriptors import DffBackend
    from face_alignment_ros.core.morphable_model import MorphableModel
    from face_alignment_ros.training.detector_starts import recrop_from_detector
    from face_alignment_ros.training.learn_descent import evaluate_large_pose, evaluate_split

    cascade = Cascade(MorphableModel.load())
    backend = DffBackend.from_file(stage.input(TRAIN_DFF_STAGE, resources.DFF_WEIGHTS_FILE))
    records = [r for r in records if r.split == "train" and is_validation(r.subset, r.name)]
    profiled = load_outputs(work, "train", PROFILE_STAGE)
    found = cached_detections(stage.path(f"detections_{detector}_{PROFILE_STAGE}_train.npz"), profiled, detector)
    val_rows = np.flatnonzero(val_identity[np.asarray(profiled["identity"])])
    out = {}
    for label, descent in descent_paths.items():
        views = recrop_from_detector(profiled, val_rows, found, descent.box_priors["detector"], None, 0.0)
        out[label] = {"validation_photos_detector": evaluate_split(cascade, backend, descent, records, "detector"),
                      "validation_profiled_detector": evaluate_large_pose(cascade, backend, descent, views)}
        stage.log.info("%s: %s", label, out[label])
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", default="default")
    parser.add_argument("--photo-weight", type=float, default=3.0,
                        help="weight of the photos against the renders and against the profiled views, each as a whole")
    parser.add_argument("--validate-with", default=None,
                        help="DFF descent model whose cascade is run from the detector's box with either prior on the "
                             "validation identities (default: the work folder's descent/descent_dff.npz, if any)")
    parser.add_argument("--write-into", nargs="*", default=[],
                        help="descent model files to put the keypoint terms into (their float32 twins beside them "
                             "too); stage descent picks the terms up by itself")


def run(args: argparse.Namespace) -> int:
    stage = Stage(STAGE, args.work, args.seed)
    records = load_photo_records(stage, args.detector)
    constant = fit_box_priors(records)["detector"]  # as stage descent fits it
    val_identity = validation_identities(stage)
    parts = [photo_rows(records)]
    for name, source in ((SYNTHESIZE_STAGE, 1), (PROFILE_STAGE, 2)):
        stage.input(name, split_file_name("train", "images"))
        parts.append(crop_rows(stage, args.work, args.detector, name, source, val_identity))
    rows = OffsetRows.concat(parts)
    train, val = rows.part == "train", rows.part == "validation"
    weights = source_weights(rows, args.photo_weight)
    stage.log.info("rows with keypoints: %s",
                   {p: int((rows.part == p).sum()) for p in ("train", "validation", "heldout")})

    def fitted(lam):
        return fit_ridge(rows.features[train], rows.targets[train], weights[train], lam)

    scores = {}
    for lam in LAMBDAS:
        intercept, coef = fitted(lam)
        err = intercept + rows.features[val] @ coef.T - rows.targets[val]
        scores[lam] = float((weights[val] * (err ** 2).sum(1)).sum() / weights[val].sum())
        stage.record(**{"lambda": lam, "validation_mse": scores[lam]})
    lam = min(scores, key=scores.get)
    intercept, coef = fitted(lam)
    terms = {"keypoint_intercept": intercept.tolist(), "keypoint_coef": coef.tolist(), "lambda": lam,
             "photo_weight": args.photo_weight, "detector": args.detector}
    stage.save_json(KEYPOINT_PRIOR_FILE, terms)
    predicted = {"constant": np.tile([constant.dx, constant.dy, constant.log_scale], (len(rows.targets), 1)),
                 "keypoints": intercept + rows.features @ coef.T}
    report = {"lambda": lam, "photo_weight": args.photo_weight,
              "validation_mse_per_lambda": {str(k): v for k, v in scores.items()}}
    for part in ("validation", "heldout"):
        m = rows.part == part
        sub = OffsetRows(*(getattr(rows, f.name)[m] for f in dataclasses.fields(OffsetRows)))
        report[part] = {kind: offset_errors(sub, pred[m]) for kind, pred in predicted.items()}
    stage.save_json("report.json", report)
    _plot(stage, report)
    for line in _table(report):
        stage.log.info(line)
    validate_with = args.validate_with or stage.root / DESCENT_STAGE / resources.DESCENT_MODEL_FILES["dff"]
    if args.validate_with or validate_with.exists():
        dff = DescentModel.load(validate_with)
        report["cascade"] = cascade_validation(stage, args.work, {"constant": dff,
                                                                  "keypoints": with_keypoint_prior(dff, terms)},
                                               args.detector, records, val_identity)
        stage.save_json("report.json", report)
    for path in map(Path, args.write_into):
        descent = DescentModel.load(path)
        with_keypoint_prior(descent, terms).save(path)
        twin = path.with_name(descent_float32_file(descent.descriptor))
        if twin.exists():
            with_keypoint_prior(DescentModel.load(twin), terms).save(twin, dtype=np.float32)
        stage.log.info("wrote the keypoint prior into %s", path)
    return 0


def _table(report: dict) -> list[str]:
    lines = ["| rows | count | centre RMS, constant -> keypoints | log-scale RMS | log-scale bias |",
             "|---|---:|---|---|---|"]
    for part in ("validation", "heldout"):
        for key, c in report[part]["constant"].items():
            k = report[part]["keypoints"][key]
            lines.append(f"| {part} {key} | {c['count']} | {c['centre_rms']:.3f} -> {k['centre_rms']:.3f} | "
                         f"{c['log_scale_rms']:.3f} -> {k['log_scale_rms']:.3f} | "
                         f"{c['log_scale_bias']:+.3f} -> {k['log_scale_bias']:+.3f} |")
    return lines


def _plot(stage: Stage, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["validation"]["constant"]
    keys = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(keys))
    for ax, field, title in ((axes[0], "centre_rms", "crop centre error (box sides, RMS)"),
                             (axes[1], "log_scale_rms", "crop log-scale error (RMS)")):
        ax.bar(x - 0.2, [rows[k][field] for k in keys], 0.4, label="constant prior")
        ax.bar(x + 0.2, [report["validation"]["keypoints"][k][field] for k in keys], 0.4, label="keypoint prior")
        ax.set_xticks(x, keys, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Detector box -> canonical crop, validation identities")
    fig.tight_layout()
    fig.savefig(stage.path("box_prior.png"), dpi=100)
    plt.close(fig)
