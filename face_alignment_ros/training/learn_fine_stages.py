"""Learning the fine 2D stages (core/landmark_stages.py, ``refine_fine``) on what a descent
model's cascade and DFF 2D stages leave.

Each stage is the cascade's ridge regression, from the gradient-orientation histograms at the 68
current landmarks, read in a finer crop of the same box (core/gradient_histograms.py), to the
remaining 2D error. Samples are the DFF 2D stages' (perturbed starts on the training photos and
their mirrors, plus renders and profiled views, whose fine crop is their crop enlarged); lambda
and the number of stages are chosen on the validation part of the training identities.

Unlike the DFF, these features come from no network that saw the training photos, so the
regression learns on descriptors as good as the ones it meets on new faces.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
from tqdm import tqdm

from face_alignment_ros.core.descent_model import low_rank_factors
from face_alignment_ros.core.gradient_histograms import HistogramLayout, orientation_channels
from face_alignment_ros.core.landmark_stages import fine_features, refine_landmarks
from face_alignment_ros.core.morphable_model import N_LANDMARKS
from face_alignment_ros.training.learn_landmark_stages import evaluate_groups, nme_rows, ridge_path, stage_inputs

# relative ridge lambdas: validation moves by hundredths of a point between neighbours here
FINE_LAMBDAS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 100.0)
# a further stage ships only if it lowers validation NME by this much (points of %): each costs
# 0.6 MB of the package and a millisecond a face
MIN_STAGE_GAIN = 0.01


def chosen_stage_count(validation_nme: list[float], min_gain: float = MIN_STAGE_GAIN) -> int:
    """Stages to ship: the longest prefix in which every stage gains at least ``min_gain``."""
    n = 0
    while n + 1 < len(validation_nme) and validation_nme[n] - validation_nme[n + 1] >= min_gain:
        n += 1
    return n


def cascade_outputs(backend, cascade, descent, crops) -> np.ndarray:
    """(n, 68, 2): the descent model's cascade and DFF 2D stages on each crop."""
    out = np.zeros((len(crops), N_LANDMARKS, 2), np.float32)
    for i, crop in enumerate(tqdm(crops, desc="cascade + its 2D stages", unit="crop", mininterval=30)):
        sampler = backend.prepare(crop)
        state = cascade.run(descent, sampler, cascade.initial_state(backend.crop_size))
        out[i] = refine_landmarks(descent, sampler, state).landmarks
    return out


def histogram_features(fine: list, landmarks: np.ndarray, crop_size: int, layout: HistogramLayout,
                       desc: str) -> np.ndarray:
    """(n, 68 H) histograms of each sample's fine crop at its landmarks."""
    out = np.zeros((len(fine), N_LANDMARKS * layout.dim), np.float32)
    for i, gray in enumerate(tqdm(fine, desc=desc, unit="crop", mininterval=30)):
        out[i] = fine_features(orientation_channels(gray, layout), landmarks[i], crop_size, layout)
    return out


def learn_fine_stages(fine: list, starts: np.ndarray, data: dict, crop_size: int, layout: HistogramLayout,
                      stages: int, rank: int, lambdas=FINE_LAMBDAS, report=None) -> dict:
    """Up to ``stages`` fine stages on the ``train`` rows, lambda per stage on the ``val`` rows,
    each regressor cut to ``rank`` as it ships (the next stage learns on what that one leaves).
    Returns the regressors, lambdas, validation NME at full rank, and the NME of every evaluation
    group before and after each stage."""
    groups, targets, norms = data["groups"], data["targets"], data["normalisers"]
    train, val = np.flatnonzero(groups == "train"), np.flatnonzero(groups == "val")
    eval_rows = np.flatnonzero(groups != "train")
    current = starts.copy()
    out = {"R": [], "b": [], "lambda": [], "val_full_rank": [], "nme": [evaluate_groups(current, data, eval_rows)]}
    for k in range(stages):
        h = histogram_features(fine, current, crop_size, layout, f"fine stage {k + 1} features")
        dx = (targets[train] - current[train]).reshape(len(train), -1)
        best = None
        for lam, (r, b) in zip(lambdas, ridge_path(h[train], dx, lambdas)):
            moved = current[val] + (h[val] @ r.T + b).reshape(-1, N_LANDMARKS, 2)
            err = float(nme_rows(moved, targets[val], norms[val]).mean())
            if best is None or err < best[0]:
                best = (err, lam, r, b)
        full, lam, r, b = best
        u, v = low_rank_factors(r, rank)
        r = u @ v
        current = current + (h @ r.T + b).reshape(-1, N_LANDMARKS, 2)
        out["val_full_rank"].append(round(100 * full, 3))
        out["R"].append(r)
        out["b"].append(b)
        out["lambda"].append(lam)
        out["nme"].append(evaluate_groups(current, data, eval_rows))
        if report:
            report(k + 1, lam, out["nme"][-1])
    return out


def _starts_key(descent, data: dict) -> str:
    """What the saved cascade outputs depend on: the cascade and DFF stages, and the samples."""
    digest = hashlib.sha256()
    for name in ("R_X", "b_X", "R_w", "b_w", "R_L", "b_L"):
        digest.update(np.ascontiguousarray(getattr(descent, name), np.float32).tobytes())
    digest.update(json.dumps({k: v.to_dict() for k, v in descent.box_priors.items()}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(data["targets"], np.float32).tobytes())
    return digest.hexdigest()


def run(stage, args, records, priors, start_from) -> dict:
    """Stage ``descent --fine-stages N``: learn the fine stages on top of the descent model
    ``start_from`` (its cascade and DFF 2D stages; any fine stages replaced) and write
    ``descent_<kind>.npz`` (with its float32 twin). Returns the summary."""
    from face_alignment_ros.common.render_format import descent_float32_file
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.cascade import Cascade
    from face_alignment_ros.core.morphable_model import MorphableModel

    layout = HistogramLayout(crop_size=args.fine_crop, cell=args.fine_cell, grid=args.fine_grid, bins=args.fine_bins)
    descent, backend, samples, _, _ = stage_inputs(stage, args, records, priors, start_from, layout)
    kind = descent.descriptor
    descent = descent.first(descent.iterations, descent.landmark_iterations, 0)
    data = samples.arrays()
    saved = stage.path(f"fine_stage_{kind}_starts.npz")  # the long part: reused by --resume
    key = _starts_key(descent, data)
    previous = np.load(saved) if args.resume and saved.exists() else {}
    if "key" in previous and str(previous["key"]) == key:
        starts = previous["starts"]
        stage.log.info("fine stages: cascade outputs from %s", saved)
    else:
        starts = cascade_outputs(backend, Cascade(MorphableModel.load()), descent, samples.crops)
        np.savez(saved, starts=starts, key=np.array(key))

    def report(k, lam, nme):
        stage.log.info("fine stage %d: lambda %s, NME %s", k, lam, json.dumps(nme))
        stage.record(descriptor=kind, fine_stage=k, **{"lambda": lam},
                     **{f"{g}_nme": v["all"] for g, v in nme.items()})

    learned = learn_fine_stages(samples.fine, starts, data, descent.crop_size, layout, args.fine_stages,
                                args.fine_rank, report=report)
    n_stages = chosen_stage_count([x["val"]["all"] for x in learned["nme"]])  # on validation only
    model = descent
    if n_stages:
        model = descent.with_fine_stages(np.stack(learned["R"][:n_stages]), np.stack(learned["b"][:n_stages]), layout,
                                         args.fine_rank, provenance={"fine_stages": {
                                             "layout": layout.to_dict(), "lambda": learned["lambda"][:n_stages],
                                             "perturbations": args.perturbations, "start_from": str(start_from)}})
    sha = model.save(stage.path(resources.DESCENT_MODEL_FILES[kind]))
    model.save(stage.path(descent_float32_file(kind)), dtype=np.float32)
    after = learned["nme"][: n_stages + 1]  # before the fine stages, then after each shipped one
    summary = {"sha256": sha, "fine_stages": {
        "chosen": n_stages, "layout": layout.to_dict(), "rank": args.fine_rank, "lambda": learned["lambda"],
        "validation_nme_full_rank": learned["val_full_rank"],
        "nme_after_stage": learned["nme"]},
        "heldout_inter_pupil_nme_percent": {
            box: {"count": after[0][f"heldout-{box}"]["count"],
                  "nme_per_iteration": [x[f"heldout-{box}"]["all"] for x in after],
                  "nme_median": after[-1][f"heldout-{box}"]["median"], "groups": after[-1][f"heldout-{box}"]}
            for box in ("landmarks", "detector") if f"heldout-{box}" in after[0]}}
    stage.log.info("fine stages: chose %d; validation %s", n_stages,
                   [round(x["val"]["all"], 3) for x in learned["nme"]])
    return summary
