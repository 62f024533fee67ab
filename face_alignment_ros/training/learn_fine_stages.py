"""Learning the fine 2D stages (core/landmark_stages.py, ``refine_fine``) on what a descent
model's cascade and DFF 2D stages leave.

Each stage is the cascade's ridge regression, from the gradient-orientation histograms at the 68
current landmarks, read in a finer crop of the same box (core/gradient_histograms.py), to the
remaining 2D error. Samples are the DFF 2D stages' (perturbed starts on the training photos and
their mirrors, plus renders and profiled views, whose fine crop is their crop enlarged); lambda
and the number of stages are chosen on the validation part of the training identities.

Unlike the DFF, these features come from no network that saw the training photos, so the
regression learns on descriptors as good as the ones it meets on new faces. Its starts do come
from the DFF cascade, which leaves the training photos less error than new faces, so they are
widened first (``widen_photo_starts``, round 12).

Local stages (``--local-stages``, round 9) come first: one small ridge regression per landmark
from the histograms at its K nearest landmarks to its own 2D error. 68 regressions of 2 x 432
weights generalise better than one of 136 x 4,896 from ~13,000 samples (validation 5.46 -> 5.37
alone, 5.32 with a global stage after it, on round 8's exploration set).
"""
from __future__ import annotations

import json

import numpy as np
from tqdm import tqdm

from face_alignment_ros.core.descent_model import local_moves, low_rank_factors, similarity_frames
from face_alignment_ros.core.gradient_histograms import HistogramLayout, histograms_at, orientation_channels
from face_alignment_ros.core.landmark_stages import fine_points, refine_landmarks
from face_alignment_ros.core.morphable_model import N_LANDMARKS
from face_alignment_ros.training.learn_landmark_stages import (
    SavedPasses,
    evaluate_groups,
    nme_rows,
    ridge_path,
    samples_key,
    stage_inputs,
)

# relative ridge lambdas: validation moves by hundredths of a point between neighbours here
FINE_LAMBDAS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 100.0)
# the local stages' regressions are 68 small ones: validation wants less ridge (round 9 chose 0.5)
LOCAL_LAMBDAS = (0.3, 0.5, 1.0, 2.0, 3.0, 10.0)
# shape stages: one regression of 136 x 136 from thousands of rows; round 14 chose 0.03 for the
# annotation shape stage, and the fitted one chose the grid's end until it reached 0.001
SHAPE_LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# the fitted shape stage chooses lambda on this share of its rows, left out
FITTED_CHOICE_SHARE = 0.2
# a further stage ships only if it lowers validation NME by this much (points of %): each costs
# 0.6 MB of the package and a millisecond a face
MIN_STAGE_GAIN = 0.01
# The network learned the training photos, so the cascade leaves them less error than it leaves
# new faces (4.95 against 5.55% on validation, round 12): the fine stages learn from starts whose
# error is widened by this factor. Validation chose it among 1, 1.12, 1.2, 1.25, 1.4 and 1.6.
START_ERROR_SCALE = 1.2


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


def _mean_residual(landmarks: np.ndarray, data: dict, convention: str) -> np.ndarray | None:
    """(68, 2): the mean remaining error of the training rows labelled in ``convention``, or None
    without such rows (or without conventions)."""
    conventions = data.get("conventions")
    if conventions is None:
        return None
    rows = np.flatnonzero((data["groups"] == "train") & (conventions == convention))
    return (data["targets"][rows] - landmarks[rows]).mean(axis=0) if len(rows) else None


def annotation_offset(landmarks: np.ndarray, data: dict) -> np.ndarray | None:
    """(68, 2) crop pixels: the mean remaining error of the training photos as annotated (their
    mirror images and the fitted labels of renders and profiled views left out), or None without
    such samples. Every stage learns on the photos and their mirror images, so on real photos it
    lands halfway between the annotators' convention and its mirror image; 300-W's convention is
    not symmetric (round 9: this offset took held-out photos from 5.69 to 5.4)."""
    annotated = _mean_residual(landmarks, data, "annotated")
    return None if annotated is None else annotated.astype(np.float32)


def convention_shift(landmarks: np.ndarray, data: dict) -> np.ndarray | None:
    """(68, 2) crop pixels: the training photos' mean remaining error as annotated minus that of
    their mirror images, at ``landmarks``; None without both kinds of rows. Stages that learn on
    both land halfway between the annotators' convention and its mirror image, so this is the
    gap between the two conventions."""
    annotated, mirrored = (_mean_residual(landmarks, data, c) for c in ("annotated", "mirrored"))
    return None if annotated is None or mirrored is None else (annotated - mirrored).astype(np.float32)


def learn_shape_stage(landmarks: np.ndarray, offset: np.ndarray | None, data: dict, train: np.ndarray,
                      choice: np.ndarray, lambdas=SHAPE_LAMBDAS) -> dict | None:
    """A shape stage (core/descent_model.py): a ridge regression from ``landmarks`` (n, 68, 2),
    each turned, scaled and centred onto the mean target shape of the ``train`` rows, to what those
    rows still miss after ``offset``, in that frame; lambda chosen on the ``choice`` rows. Returns
    its weights, bias, reference shape, lambda and the choice rows' NME (%) before and with it,
    and the landmarks with it; None without train rows (or with no shape to their targets)."""
    targets, norms = data["targets"], data["normalisers"]
    if not len(train):
        return None
    base = landmarks if offset is None else landmarks + offset
    reference = targets[train].mean(axis=0)
    reference = reference - reference.mean(axis=0)
    if not np.any(np.abs(reference) > 1e-6):  # every point in one place: no shape to read
        return None
    normalised, frames = similarity_frames(landmarks, reference)
    features = (normalised - reference).reshape(len(landmarks), -1)
    missed = np.einsum("npk,njk->npj", targets - base, frames).reshape(len(landmarks), -1)
    inverse = np.linalg.inv(frames)

    def moved(rows, r, b):
        return base[rows] + np.einsum("npk,njk->npj", (features[rows] @ r.T + b).reshape(-1, N_LANDMARKS, 2),
                                      inverse[rows])

    def choice_nme(x):
        return round(100 * float(nme_rows(x, targets[choice], norms[choice]).mean()), 3) if len(choice) else 0.0
    best = None
    for lam, (r, b) in zip(lambdas, ridge_path(features[train], missed[train], lambdas)):
        err = choice_nme(moved(choice, r, b))
        if best is None or err < best[0]:
            best = (err, lam, r, b)
    err, lam, r, b = best
    return {"R": r, "b": b, "reference": reference.astype(np.float32), "lambda": lam,
            "choice_nme": [choice_nme(base[choice]), err],
            "landmarks": moved(np.arange(len(landmarks)), r, b).astype(np.float32)}


def learn_annotation_shape(landmarks: np.ndarray, offset: np.ndarray | None, data: dict) -> dict | None:
    """The annotation shape stage: learned on the training photos as annotated, after ``offset``;
    lambda chosen on the validation photos. None without conventions."""
    conventions = data.get("conventions")
    if conventions is None:
        return None
    groups = data["groups"]
    train = np.flatnonzero((groups == "train") & (conventions == "annotated"))
    return learn_shape_stage(landmarks, offset, data, train, np.flatnonzero(groups == "val"))


def learn_fitted_shape(landmarks: np.ndarray, data: dict, seed: int = 0) -> dict | None:
    """The fitted shape stage: learned on the fitted labels of the training renders and profiled
    views. No validation rows carry those labels, so lambda is chosen on a seeded
    ``FITTED_CHOICE_SHARE`` of them left out, and the stage is then learned on all of them. None
    without such rows."""
    conventions = data.get("conventions")
    if conventions is None:
        return None
    rows = np.flatnonzero((data["groups"] == "train") & (conventions == "fitted"))
    if len(rows) < 2:
        return None
    choice = np.sort(np.random.default_rng(seed).choice(rows, max(1, int(FITTED_CHOICE_SHARE * len(rows))),
                                                        replace=False))
    chosen = learn_shape_stage(landmarks, None, data, np.setdiff1d(rows, choice), choice)
    if chosen is None:
        return None
    stage = learn_shape_stage(landmarks, None, data, rows, choice, lambdas=(chosen["lambda"],))
    return dict(stage, choice_nme=chosen["choice_nme"])  # the choice rows' figures before they were learned


def symmetric_targets(data: dict, shift: np.ndarray) -> dict:
    """``data`` with the photos' targets moved half ``shift`` towards each other (annotated rows
    by -shift / 2, mirrored rows by +shift / 2): one convention, symmetric like the fitted labels
    of renders and profiled views, instead of two that pull every landmark apart. The annotation
    offset restores the annotators' convention afterwards (round 10: validation 4.93 -> 4.89 on
    round 8's exploration set)."""
    conventions = data["conventions"]
    targets = data["targets"].copy()
    targets[conventions == "annotated"] -= 0.5 * shift
    targets[conventions == "mirrored"] += 0.5 * shift
    return dict(data, targets=targets)


def widen_photo_starts(starts: np.ndarray, data: dict, scale: float) -> np.ndarray:
    """``starts`` with the training photos' and their mirror images' error scaled by ``scale``
    about their targets; renders, profiled views and every evaluation row unchanged."""
    rows = (data["groups"] == "train") & (data["conventions"] != "fitted")
    out = starts.copy()
    out[rows] = data["targets"][rows] + scale * (starts[rows] - data["targets"][rows])
    return out


def _mean_norm(moves: np.ndarray) -> float:
    """Mean length (px) of (68, 2) moves."""
    return float(np.linalg.norm(moves, axis=1).mean())


def neighbour_table(shape: np.ndarray, k: int) -> np.ndarray:
    """(68, k): each landmark and its k - 1 nearest in ``shape`` (68, 2), itself first."""
    shape = np.asarray(shape, np.float64)
    distance = np.linalg.norm(shape[:, None] - shape[None], axis=2)
    np.fill_diagonal(distance, -1.0)  # itself first, even where two points coincide
    return np.argsort(distance, axis=1, kind="stable")[:, :k]


def point_histograms(fine: list, landmarks: np.ndarray, crop_size: int, layout: HistogramLayout,
                     desc: str) -> np.ndarray:
    """(n, 68, H) histograms of each sample's fine crop at its landmarks."""
    out = np.zeros((len(fine), N_LANDMARKS, layout.dim), np.float32)
    for i, gray in enumerate(tqdm(fine, desc=desc, unit="crop", mininterval=30)):
        out[i] = histograms_at(orientation_channels(gray, layout), fine_points(landmarks[i], crop_size, layout), layout)
    return out


def _add_stage(out: dict, k: int, lam: float, current: np.ndarray, data: dict, eval_rows: np.ndarray,
               report=None) -> None:
    """Record stage k's lambda, the landmarks after it and every evaluation group's NME."""
    out["lambda"].append(lam)
    out["landmarks"].append(current)
    out["nme"].append(evaluate_groups(current, data, eval_rows))
    if report:
        report(k + 1, lam, out["nme"][-1])


def learn_local_stages(fine: list, starts: np.ndarray, data: dict, crop_size: int, layout: HistogramLayout,
                       stages: int, neighbours: np.ndarray, lambdas=LOCAL_LAMBDAS, report=None) -> dict:
    """Up to ``stages`` local fine stages on the ``train`` rows (one lambda per stage, for all
    landmarks, chosen on the ``val`` rows). Returns the weights (68, 2, K H) and offsets (136,)
    per stage, their lambdas, and the landmarks and NME of every evaluation group before and
    after each stage."""
    groups, targets, norms = data["groups"], data["targets"], data["normalisers"]
    train, val = np.flatnonzero(groups == "train"), np.flatnonzero(groups == "val")
    eval_rows = np.flatnonzero(groups != "train")
    current = starts.copy()
    out = {"W": [], "b": [], "lambda": [], "landmarks": [current],
           "nme": [evaluate_groups(current, data, eval_rows)]}
    for k in range(stages):
        h = point_histograms(fine, current, crop_size, layout, f"local stage {k + 1} features")
        solutions = []  # per landmark: the ridge path's (weights, offset) per lambda
        for point in tqdm(range(N_LANDMARKS), desc=f"local stage {k + 1} regressions", unit="point", mininterval=30):
            features = h[:, neighbours[point]].reshape(len(h), -1)
            solutions.append(ridge_path(features[train], targets[train, point] - current[train, point], lambdas))
        best = None
        for j, lam in enumerate(lambdas):
            w = np.stack([solutions[point][j][0] for point in range(N_LANDMARKS)])
            b = np.stack([solutions[point][j][1] for point in range(N_LANDMARKS)])
            moved = current[val] + local_moves(w, b, h[val], neighbours)
            err = float(nme_rows(moved, targets[val], norms[val]).mean())
            if best is None or err < best[0]:
                best = (err, lam, w, b)
        _, lam, w, b = best
        current = current + local_moves(w, b, h, neighbours)
        out["W"].append(w)
        out["b"].append(b.reshape(-1))
        _add_stage(out, k, lam, current, data, eval_rows, report)
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
    out = {"R": [], "b": [], "lambda": [], "val_full_rank": [], "landmarks": [current],
           "nme": [evaluate_groups(current, data, eval_rows)]}
    for k in range(stages):
        h = point_histograms(fine, current, crop_size, layout, f"fine stage {k + 1} features").reshape(len(fine), -1)
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
        _add_stage(out, k, lam, current, data, eval_rows, report)
    return out


def _add_shape_stages(stage, model, final: np.ndarray, offset: np.ndarray | None, data: dict,
                      eval_rows: np.ndarray, seed: int):
    """Learn both shape stages on the ``final`` landmarks and add each that gains at least
    ``MIN_STAGE_GAIN`` where its lambda was chosen. Returns the model and, per shipped stage, its
    summary with the landmarks after it and their NME: the output for the annotation stage, the
    pose refit's points against the held-out renders' fitted labels for the fitted one."""
    renders = eval_rows[data["groups"][eval_rows] == "renders"]
    candidates = {
        "annotation_shape": (learn_annotation_shape(final, offset, data), "the training photos as annotated",
                             "validation photos", eval_rows),
        "fitted_shape": (learn_fitted_shape(final, data, seed), "the fitted labels of the training renders and "
                         "profiled views", f"{FITTED_CHOICE_SHARE:.0%} of those, left out", renders)}
    shapes = {}
    for name, (shaped, samples_text, choice_text, report_rows) in candidates.items():
        if shaped is None:
            continue
        before, after = shaped["choice_nme"]
        kept = before - after >= MIN_STAGE_GAIN
        stage.log.info("%s stage: lambda %s; NME of the %s %.3f -> %.3f; %s", name.replace("_", " "),
                       shaped["lambda"], choice_text, before, after, "shipped" if kept else "not shipped")
        if not kept:
            continue
        model = model.with_shape_stage(name, shaped["R"], shaped["b"], shaped["reference"], provenance={
            name: {"samples": samples_text, "lambda": shaped["lambda"]}})
        shapes[name] = {"lambda": shaped["lambda"], "samples": samples_text, "chosen_on": choice_text,
                        "choice_nme": shaped["choice_nme"], "landmarks": shaped["landmarks"],
                        "nme_after": evaluate_groups(shaped["landmarks"], data, report_rows)}
        stage.log.info("%s stage: NME %s", name.replace("_", " "), json.dumps(shapes[name]["nme_after"]))
    return model, shapes


def run(stage, args, records, priors, start_from) -> dict:
    """Stage ``descent --local-stages P --fine-stages N``: learn the local, then the global fine
    stages on top of the descent model ``start_from`` (its cascade and DFF 2D stages; any fine
    stages replaced) and write ``descent_<kind>.npz`` (with its float32 twin). Returns the
    summary."""
    from face_alignment_ros.common.render_format import descent_float32_file
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.cascade import Cascade
    from face_alignment_ros.core.morphable_model import MorphableModel

    layout = HistogramLayout(crop_size=args.fine_crop, cell=args.fine_cell, grid=args.fine_grid, bins=args.fine_bins)
    descent, backend, samples, _, _ = stage_inputs(stage, args, records, priors, start_from, layout)
    kind = descent.descriptor
    descent = descent.first(descent.iterations, descent.landmark_iterations, 0, 0)
    data = samples.arrays()
    # the long part, reused by --resume
    saved = SavedPasses(stage, f"fine_stage_{kind}_starts.npz", samples_key(descent, data), args.resume)
    previous = saved(0)
    if previous is not None:
        starts = previous["starts"]
        stage.log.info("fine stages: the saved cascade outputs")
    else:
        starts = cascade_outputs(backend, Cascade(MorphableModel.load()), descent, samples.crops)
        saved(0, {"starts": starts})

    def reporter(name: str):
        def report(k, lam, nme):
            stage.log.info("%s stage %d: lambda %s, NME %s", name, k, lam, json.dumps(nme))
            stage.record(descriptor=kind, **{f"{name}_stage": k, "lambda": lam},
                         **{f"{g}_nme": v["all"] for g, v in nme.items()})
        return report

    model = descent
    with_offset = not getattr(args, "no_annotation_offset", False)
    with_shapes = not getattr(args, "no_shape_stages", False)
    shift = convention_shift(starts, data) if with_offset else None
    # the stages learn (and choose lambdas and counts) in one symmetric convention; the figures
    # reported and the offset are against the photos' own points
    learning = data if shift is None else symmetric_targets(data, shift)
    gap_px = None if shift is None else round(_mean_norm(shift), 3)
    if shift is not None:
        stage.log.info("fine stages learn symmetric targets: convention gap %.2f px on average", gap_px)
    scale = args.start_error_scale
    train_rows = data["groups"] == "train"
    neighbours = neighbour_table(data["targets"][train_rows].mean(axis=0), args.local_neighbours)
    # only training rows are widened: the figures reported are against the starts as they are
    widened = widen_photo_starts(starts, learning, scale)
    local = learn_local_stages(samples.fine, widened, learning, descent.crop_size, layout, args.local_stages,
                               neighbours, report=reporter("local"))
    n_local = chosen_stage_count([x["val"]["all"] for x in local["nme"]])  # on validation only
    if n_local:
        model = descent.with_local_stages(np.stack(local["W"][:n_local]), np.stack(local["b"][:n_local]), neighbours,
                                          layout, provenance={"local_stages": {
                                              "layout": layout.to_dict(), "neighbours": args.local_neighbours,
                                              "lambda": local["lambda"][:n_local], "start_error_scale": scale}})
    learned = learn_fine_stages(samples.fine, local["landmarks"][n_local], learning, descent.crop_size, layout,
                                args.fine_stages, args.fine_rank, report=reporter("fine"))
    n_stages = chosen_stage_count([x["val"]["all"] for x in learned["nme"]])  # on validation only
    if n_stages:
        model = model.with_fine_stages(np.stack(learned["R"][:n_stages]), np.stack(learned["b"][:n_stages]), layout,
                                         args.fine_rank, provenance={"fine_stages": {
                                             "layout": layout.to_dict(), "lambda": learned["lambda"][:n_stages],
                                             "perturbations": args.perturbations, "start_from": str(start_from),
                                             "start_error_scale": scale}})
    final = learned["landmarks"][n_stages]
    eval_rows = np.flatnonzero(data["groups"] != "train")
    offset = annotation_offset(final, data) if with_offset else None
    offset_nme = offset_px = None
    if offset is not None:
        offset_px = round(_mean_norm(offset), 3)
        model = model.with_annotation_offset(offset, provenance={"annotation_offset": {
            "samples": "training photos as annotated", "mean_norm_px": offset_px,
            "stages_learned_symmetric_targets": shift is not None}})
        offset_nme = evaluate_groups(final + offset, data, eval_rows)
        stage.log.info("annotation offset: mean %.2f px; NME %s", offset_px, json.dumps(offset_nme))
    shapes = {}
    if with_shapes:
        model, shapes = _add_shape_stages(stage, model, final, offset, data, eval_rows, getattr(args, "seed", 0))
    shape_nme = shapes.get("annotation_shape", {}).get("nme_after")
    sha = model.save(stage.path(resources.DESCENT_MODEL_FILES[kind]))
    model.save(stage.path(descent_float32_file(kind)), dtype=np.float32)
    # the figures against the photos' own points (the learners' are against their learning targets)
    local_nme = [evaluate_groups(x, data, eval_rows) for x in local["landmarks"]]
    fine_nme = [evaluate_groups(x, data, eval_rows) for x in learned["landmarks"]]
    # before the fine stages, then after each shipped one, local and global
    after = (local_nme[: n_local + 1] + fine_nme[1: n_stages + 1] + ([offset_nme] if offset_nme else [])
             + ([shape_nme] if shape_nme else []))
    summary = {"sha256": sha, "stage_targets": "symmetric" if shift is not None else "as annotated",
               "start_error_scale": scale, "local_stages": {
        "chosen": n_local, "neighbours": args.local_neighbours, "lambda": local["lambda"],
        "nme_after_stage": local_nme},
        "annotation_offset": None if offset is None else {
            "mean_norm_px": offset_px, "nme_after": offset_nme, "convention_gap_px": gap_px},
        "shape_stages": {name: {k: v for k, v in x.items() if k != "landmarks"} for name, x in shapes.items()},
        "fine_stages": {
        "chosen": n_stages, "layout": layout.to_dict(), "rank": args.fine_rank, "lambda": learned["lambda"],
        "validation_nme_full_rank": learned["val_full_rank"],
        "nme_after_stage": fine_nme},
        "heldout_inter_pupil_nme_percent": {
            box: {"count": after[0][f"heldout-{box}"]["count"],
                  "nme_per_iteration": [x[f"heldout-{box}"]["all"] for x in after],
                  "nme_median": after[-1][f"heldout-{box}"]["median"], "groups": after[-1][f"heldout-{box}"]}
            for box in ("landmarks", "detector") if f"heldout-{box}" in after[0]}}
    stage.log.info("local stages: chose %d; validation %s", n_local, [round(x["val"]["all"], 3) for x in local["nme"]])
    stage.log.info("fine stages: chose %d; validation %s", n_stages,
                   [round(x["val"]["all"], 3) for x in learned["nme"]])
    return summary
