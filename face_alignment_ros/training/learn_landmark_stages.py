"""Learning the final 2D stages (core/landmark_stages.py) on the states the cascade leaves.

Each stage is a ridge regression (the cascade's, eq. 9-11) from the DFF descriptors at the 68
current landmarks to the remaining 2D error, learned on perturbed starts on the training photos
(and mirrors, and large-pose renders) after the descent model's cascade; lambda and the number of
stages are chosen on the validation part of the training identities, never on held-out data.

Variants are learned side by side from one network run per sample and pass: ``clean`` learns
on the plain crops, ``augmented`` also on photometric/blur/noise/occlusion-augmented copies,
so validation compares them on identical starts.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.metrics import REGIONS, box_size, inter_pupil
from face_alignment_ros.common.render_format import YAW_BIN_NAMES
from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_crop import crop_image
from face_alignment_ros.core.gradient_histograms import HistogramLayout
from face_alignment_ros.core.landmark_stages import fine_crop, landmark_features
from face_alignment_ros.core.morphable_model import N_LANDMARKS
from face_alignment_ros.training.descent_regression import DEFAULT_LAMBDAS

VARIANTS = ("clean", "augmented")


@dataclass
class SampleSet:
    """Crops (n, N, N, 3) uint8 with ground truth in crop pixels; ``group`` names what each row
    is for: train, train-aug (augmented copies), val, heldout-detector, heldout-landmarks, renders."""
    crops: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    normalisers: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    yaw_bins: list = field(default_factory=list)
    elapsed: float = 0.0  # seconds spent making the crops
    # with a layout, also the grey fine crop of each sample's box (fine 2D stages)
    fine_layout: HistogramLayout | None = None
    fine: list = field(default_factory=list)
    # how each target was labelled: "annotated" (a photo's own points), "mirrored" (a mirrored
    # photo's, i.e. the annotators' convention mirrored) or "fitted" (renders, profiled views)
    conventions: list = field(default_factory=list)

    def add(self, crop: np.ndarray, target: np.ndarray, normaliser: float, group: str, yaw_bin: int = -1,
            source: tuple[np.ndarray, np.ndarray] | None = None, convention: str = "annotated") -> None:
        """``source``: (image, crop box) the crop was cut from, for its fine crop; without it
        (renders, which exist only at the crop's size) the crop itself is enlarged."""
        self.crops.append(np.ascontiguousarray(crop, np.uint8))
        if self.fine_layout is not None:
            import cv2

            if source is not None:
                self.fine.append(fine_crop(*source, self.fine_layout, crop))
            else:  # renders exist at the crop's size only
                self.fine.append(cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (self.fine_layout.crop_size,) * 2,
                                            interpolation=cv2.INTER_LINEAR))
        self.targets.append(np.asarray(target, np.float32))
        self.normalisers.append(float(normaliser))
        self.groups.append(group)
        self.yaw_bins.append(int(yaw_bin))
        self.conventions.append(convention)

    def arrays(self) -> dict:
        return {"targets": np.stack(self.targets), "normalisers": np.array(self.normalisers, np.float32),
                "groups": np.array(self.groups), "yaw_bins": np.array(self.yaw_bins),
                "conventions": np.array(self.conventions)}


def augment_crop(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric (contrast, brightness, gamma, colour cast, grey), blur, noise, JPEG and an
    occluding rectangle: what real photos vary in that the plain training crops do not cover."""
    import cv2

    out = crop.astype(np.float32)
    out = out * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)
    out = out * rng.uniform(0.85, 1.15, 3)  # colour cast
    if rng.random() < 0.2:
        out[:] = out.mean(axis=2, keepdims=True)
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.8))
    if rng.random() < 0.4:
        out = out + rng.normal(0, rng.uniform(2, 10), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 70))])
        out = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    if rng.random() < 0.4:  # an occluder over part of the face (hand, hair, microphone)
        n = out.shape[0]
        w, h = (rng.uniform(0.15, 0.4, 2) * n).astype(int)
        x0, y0 = rng.integers(int(0.2 * n), int(0.8 * n) - w), rng.integers(int(0.2 * n), int(0.8 * n) - h)
        colour = rng.integers(0, 255, 3) if rng.random() < 0.5 else out[rng.integers(n), rng.integers(n)]
        out[y0:y0 + h, x0:x0 + w] = colour
    return out


# --- one network run per sample and pass, in worker processes (forked: they share the crops) ---
_CTX: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _features_job(args) -> tuple[int, tuple | None, list[np.ndarray]]:
    """Sample i: the cascade's (landmarks, camera) when ``sets`` is None (first pass), and the
    descriptors at each of the given landmark sets (one per variant) under its camera."""
    i, sets, camera = args
    backend, cascade, descent = _CTX["backend"], _CTX["cascade"], _CTX["descent"]
    sampler = backend.prepare(_CTX["crops"][i])
    start = None
    if sets is None:
        state = cascade.run(descent, sampler, cascade.initial_state(backend.crop_size))
        start, camera = (state.landmarks, state.camera), state.camera
        sets = [state.landmarks]
    return i, start, [landmark_features(sampler, x, camera) for x in sets]


def compute_features(ctx: dict, landmark_sets: list[np.ndarray] | None, workers: int, desc: str,
                     cameras: np.ndarray | None = None):
    """Per variant (n, 68 D) descriptors at its landmarks (under the cascade's ``cameras``: SIFT
    sizes its patches by them); with ``landmark_sets`` None, first the cascade's landmarks
    (n, 68, 2) and cameras (n, 6), and the descriptors there (one set)."""
    _CTX.clear()
    _CTX.update(ctx)
    n = len(ctx["crops"])
    jobs = [(i, None, None) if landmark_sets is None
            else (i, [s[i] for s in landmark_sets], None if cameras is None else cameras[i])
            for i in range(n)]
    n_sets = 1 if landmark_sets is None else len(landmark_sets)
    feats = [np.zeros((n, N_LANDMARKS * ctx["backend"].dim), np.float32) for _ in range(n_sets)]
    starts = np.zeros((n, N_LANDMARKS, 2), np.float32)
    start_cameras = np.zeros((n, 6), np.float32)
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
        results = pool.imap_unordered(_features_job, jobs, chunksize=16)
    else:
        pool, results = None, map(_features_job, jobs)
    try:
        for i, start, psi in tqdm(results, total=n, desc=desc, mininterval=30):
            if start is not None:
                starts[i], start_cameras[i] = start
            for f, p in zip(feats, psi):
                f[i] = p
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return (starts, start_cameras, feats) if landmark_sets is None else feats


def ridge_path(features: np.ndarray, targets: np.ndarray, lambdas,
               chunk: int = 2048) -> list[tuple[np.ndarray, np.ndarray]]:
    """``descent_regression.ridge_regression`` for several (relative) lambdas from one
    eigendecomposition of the Gram matrix: the same solutions, a fraction of the CPU. The Gram
    matrix is summed ``chunk`` rows at a time, so no float64 copy of the features is made (the
    fine stages' are gigabytes)."""
    y = np.asarray(targets, np.float64)
    mu_phi, mu_y = features.mean(axis=0, dtype=np.float64), y.mean(axis=0)
    gram = np.zeros((features.shape[1], features.shape[1]))
    cross = np.zeros((features.shape[1], y.shape[1]))
    for start in range(0, len(features), chunk):
        part = np.asarray(features[start:start + chunk], np.float64) - mu_phi
        gram += part.T @ part
        cross += part.T @ (y[start:start + chunk] - mu_y)
    scale = max(float(np.trace(gram)) / features.shape[1], 1e-12)
    evals, evecs = np.linalg.eigh(gram)
    proj = evecs.T @ cross
    out = []
    for lam in lambdas:
        r = (evecs @ (proj / (evals + lam * scale)[:, None])).T
        out.append((r.astype(np.float32), (mu_y - r @ mu_phi).astype(np.float32)))
    return out


def nme_rows(landmarks: np.ndarray, targets: np.ndarray, normalisers: np.ndarray) -> np.ndarray:
    return np.linalg.norm(landmarks - targets, axis=2).mean(axis=1) / normalisers


def group_nme(landmarks: np.ndarray, targets: np.ndarray, normalisers: np.ndarray) -> dict:
    """Mean NME (%) over all 68 points and per landmark group."""
    err = np.linalg.norm(landmarks - targets, axis=2) / normalisers[:, None]
    out = {"all": float(100 * err.mean())}
    out.update({g: float(100 * err[:, s].mean()) for g, s in REGIONS.items()})
    return {k: round(v, 3) for k, v in out.items()}


def learn_stages(ctx: dict, data: dict, stages: int, workers: int, lambdas=DEFAULT_LAMBDAS,
                 checkpoint=None, report=None, variants: tuple[str, ...] = VARIANTS) -> dict:
    """Learn up to ``stages`` final 2D stages per variant. Returns per variant the regressors,
    lambdas and, after each stage, the NME of every evaluation group (val chooses; the rest
    is reported). ``checkpoint(k, payload)``/``checkpoint(k)`` save/load a pass (resume)."""
    groups, targets, norms = data["groups"], data["targets"], data["normalisers"]
    train_rows = {v: np.flatnonzero(groups == "train") if v == "clean" else
                  np.flatnonzero((groups == "train") | (groups == "train-aug")) for v in variants}
    # a variant only follows the samples it trains or is evaluated on
    eval_rows = np.flatnonzero(~np.isin(groups, ("train", "train-aug")))
    val = np.flatnonzero(groups == "val")  # lambda is chosen on these
    saved = checkpoint(0) if checkpoint else None
    if saved is None:
        starts, cameras, (psi,) = compute_features(ctx, None, workers, "cascade + stage 1 features")
        if checkpoint:
            checkpoint(0, {"starts": starts, "cameras": cameras, "psi": psi})
        feats = {v: psi for v in variants}
    else:
        starts, cameras = saved["starts"], saved.get("cameras")
        feats = {v: saved.get("psi", saved.get(f"psi_{v}")) for v in variants}
    current = {v: starts.copy() for v in variants}
    out = {v: {"R": [], "b": [], "lambda": [], "nme": [evaluate_groups(current[v], data, eval_rows)]} for v in variants}
    for k in range(stages):
        for v in variants:
            rows = train_rows[v]
            dx = (targets[rows] - current[v][rows]).reshape(len(rows), -1)
            best = None
            for lam, (r, b) in zip(lambdas, ridge_path(feats[v][rows], dx, lambdas)):
                moved = current[v][val] + (feats[v][val] @ r.T + b).reshape(-1, N_LANDMARKS, 2)
                err = float(nme_rows(moved, targets[val], norms[val]).mean())
                if best is None or err < best[0]:
                    best = (err, lam, r, b)
            _, lam, r, b = best
            current[v] = current[v] + (feats[v] @ r.T + b).reshape(-1, N_LANDMARKS, 2)
            out[v]["R"].append(r)
            out[v]["b"].append(b)
            out[v]["lambda"].append(lam)
            out[v]["nme"].append(evaluate_groups(current[v], data, eval_rows))
            if report:
                report(v, k + 1, lam, out[v]["nme"][-1])
        if k + 1 < stages:
            saved = checkpoint(k + 1) if checkpoint else None
            if saved is not None and all(np.allclose(saved[f"x_{v}"], current[v]) for v in variants):
                feats = {v: saved[f"psi_{v}"] for v in variants}
            else:
                psi = compute_features(ctx, [current[v] for v in variants], workers, f"stage {k + 2} features",
                                       cameras)
                feats = dict(zip(variants, psi))
                if checkpoint:
                    checkpoint(k + 1, {**{f"x_{v}": current[v] for v in variants},
                                       **{f"psi_{v}": feats[v] for v in variants}})
    return out


def evaluate_groups(landmarks: np.ndarray, data: dict, rows: np.ndarray) -> dict:
    """NME (%) per evaluation group (and per yaw bin for renders), with per landmark group."""
    groups, out = data["groups"], {}
    for g in np.unique(groups[rows]):
        sel = rows[groups[rows] == g]
        res = group_nme(landmarks[sel], data["targets"][sel], data["normalisers"][sel])
        res["median"] = round(float(100 * np.median(nme_rows(landmarks[sel], data["targets"][sel],
                                                             data["normalisers"][sel]))), 3)
        if g == "renders":
            for b in np.unique(data["yaw_bins"][sel]):
                s2 = sel[data["yaw_bins"][sel] == b]
                res[f"yaw_bin_{int(b)}"] = round(float(100 * nme_rows(landmarks[s2], data["targets"][s2],
                                                                     data["normalisers"][s2]).mean()), 3)
        res["count"] = int(len(sel))
        out[str(g)] = res
    return out


def build_samples(records, priors, rng, perturbations: int, augmented: int, jitter: float, crop_size: int,
                  val_records, heldout_records, renders: dict | None, render_rows, heldout_renders: dict | None,
                  heldout_render_rows, mirror: bool = True, fine_layout: HistogramLayout | None = None) -> SampleSet:
    """Crops of every group (see ``SampleSet``); training starts alternate detector and landmark
    boxes through the box priors, jittered, as stage ``descent`` makes them. With ``fine_layout``
    each sample also keeps the grey fine crop of its box (renders: their crop, enlarged)."""
    import cv2

    from face_alignment_ros.training.photo_records import mirror_record, perturbed_start, record_crop_box

    samples = SampleSet(fine_layout=fine_layout)
    t0 = time.perf_counter()
    for r in tqdm(records, desc="training crops", unit="photo", mininterval=30):
        image = cv2.imread(r.image_path)
        for mirrored, (rec, img) in enumerate([(r, image)] + ([mirror_record(r, image)] if mirror else [])):
            convention = "mirrored" if mirrored else "annotated"
            for k in range(perturbations + augmented):
                crop_box = perturbed_start(rec, k, priors, rng, jitter)
                crop = crop_image(img, crop_box, crop_size)[0]
                target = face_crop.image_to_crop(rec.landmarks, crop_box, crop_size)
                if k < perturbations:
                    samples.add(crop, target, inter_pupil(target), "train", source=(img, crop_box),
                                convention=convention)
                elif fine_layout is None:  # augmented copies serve the DFF stages' variant only
                    samples.add(augment_crop(crop, rng), target, inter_pupil(target), "train-aug",
                                convention=convention)
    for r in val_records:  # as stage descent validates: 2 jittered starts per photo
        image = cv2.imread(r.image_path)
        for k in range(2):
            crop_box = perturbed_start(r, k, priors, rng, jitter)
            target = face_crop.image_to_crop(r.landmarks, crop_box, crop_size)
            samples.add(crop_image(image, crop_box, crop_size)[0], target, inter_pupil(target), "val",
                        source=(image, crop_box))
    for r in heldout_records:  # reported only: one start per photo and box kind, no jitter
        image = cv2.imread(r.image_path)
        for kind in ("detector", "landmarks"):
            crop_box = record_crop_box(r, priors[kind], kind)
            if crop_box is None:
                continue
            target = face_crop.image_to_crop(r.landmarks, crop_box, crop_size)
            samples.add(crop_image(image, crop_box, crop_size)[0], target, inter_pupil(target), f"heldout-{kind}",
                        source=(image, crop_box))
    for data, rows, group in ((renders, render_rows, "train"), (heldout_renders, heldout_render_rows, "renders")):
        if data is not None:
            add_render_samples(samples, data, rows, group)
    samples.elapsed = time.perf_counter() - t0
    return samples


def add_render_samples(samples, data: dict, rows, group: str) -> None:
    """Rendered or profiled crops (``render_format`` outputs) as they are, box-normalised."""
    for i in rows:
        target = np.asarray(data["landmarks"][i], np.float32)
        samples.add(np.asarray(data["images"][i]), target, box_size(target), group,
                    int(data["yaw_bin"][i]) if group == "renders" else -1, convention="fitted")


def stage_inputs(stage, args, records, priors, start_from, fine_layout: HistogramLayout | None = None):
    """What the 2D stages learn from: the descent model ``start_from`` (its own 2D stages of the
    kind being learned are the caller's to drop), its descriptor backend and the samples of
    every group (``build_samples``, plus profiled views). Returns (descent, backend, samples,
    render rows, profiled rows)."""
    from face_alignment_ros.common.render_format import PROFILE_STAGE, TRAIN_DFF_STAGE, load_outputs
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.descent_model import DescentModel
    from face_alignment_ros.core.descriptors import create_backend
    from face_alignment_ros.training.photo_records import is_validation, validation_identities

    rng = stage.rng(1)
    descent = DescentModel.load(start_from)
    kind = descent.descriptor
    weights = (args.dff_weights or stage.input(TRAIN_DFF_STAGE, resources.DFF_WEIGHTS_FILE)) if kind == "dff" else None
    # refuses unpaired DFF weights
    backend = create_backend(descent, dff_weights=weights, device="cpu", threads=args.threads)
    train = [r for r in records if r.split == "train" and not is_validation(r.subset, r.name)]
    val = [r for r in records if r.split == "train" and is_validation(r.subset, r.name)]
    heldout = [r for r in records if r.split == "heldout"]
    if args.limit:
        train, val, heldout = train[: args.limit], val[: max(2, args.limit // 10)], heldout[: max(2, args.limit // 10)]
    renders = heldout_renders = None
    render_rows = heldout_render_rows = []
    if args.synthetic or getattr(args, "profiled", 0):
        val_identity = validation_identities(stage)
    if args.synthetic:
        renders, heldout_renders = (load_outputs(args.work, split) for split in ("train", "heldout"))
        render_rows = np.sort([i for i in rng.permutation(len(renders["images"]))
                               if not val_identity[renders["identity"][i]]][: args.synthetic])
        bins = np.asarray(heldout_renders["yaw_bin"])
        heldout_render_rows = np.concatenate([np.flatnonzero(bins == b)[:: max(1, int(np.sum(bins == b)) //
                                                                              args.eval_renders_per_bin)]
                                              for b in range(len(YAW_BIN_NAMES))])
    samples = build_samples(train, priors, rng, args.perturbations, args.augmented, args.jitter, backend.crop_size,
                            val, heldout, renders, render_rows, heldout_renders, heldout_render_rows,
                            mirror=args.mirror, fine_layout=fine_layout)
    profiled_rows = []
    if getattr(args, "profiled", 0):  # profiled views (stage profile) of training identities, beside the renders
        profiled = load_outputs(args.work, "train", PROFILE_STAGE)
        profiled_rows = np.sort([i for i in rng.permutation(len(profiled["images"]))
                                 if not val_identity[profiled["identity"][i]]][: args.profiled])
        add_render_samples(samples, profiled, profiled_rows, "train")
    groups = np.array(samples.groups)  # the callers stack the arrays themselves
    stage.log.info("2D stages: %d samples %s (crops %.0f s)", len(groups),
                   {g: int(np.sum(groups == g)) for g in np.unique(groups)}, samples.elapsed)
    return descent, backend, samples, render_rows, profiled_rows


def samples_key(descent, data: dict) -> str:
    """What a saved pass over the samples depends on: the descent model's cascade and DFF 2D
    stages, its box priors, and the samples' targets."""
    digest = hashlib.sha256()
    for name in ("R_X", "b_X", "R_w", "b_w", "R_L", "b_L"):
        digest.update(np.ascontiguousarray(getattr(descent, name), np.float32).tobytes())
    digest.update(json.dumps({k: v.to_dict() for k, v in descent.box_priors.items()}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(data["targets"], np.float32).tobytes())
    return digest.hexdigest()


class SavedPasses:
    """The passes of an interrupted run over the samples, saved in the stage folder as ``name``
    (``{k}``: the pass) with ``key``: ``--resume`` reuses one only if it was saved for the same
    samples and cascade."""

    def __init__(self, stage, name: str, key: str, resume: bool):
        self.stage, self.name, self.key, self.resume = stage, name, key, resume

    def __call__(self, k: int, payload: dict | None = None) -> dict | None:
        """Save pass ``k`` (with ``payload``) or load it (None if absent, not resuming, or stale)."""
        path = self.stage.path(self.name.format(k=k))
        if payload is not None:
            np.savez(path, key=np.array(self.key), **payload)
            return None
        if not (self.resume and path.exists()):
            return None
        saved = dict(np.load(path))
        if str(saved.pop("key", "")) != self.key:
            self.stage.log.info("not reusing %s: it was saved for other samples or another cascade", path.name)
            return None
        return saved


def run(stage, args, records, priors, start_from) -> dict:
    """Stage ``descent --landmark-stages N``: learn the 2D stages on top of the descent model
    ``start_from`` and write ``descent_<kind>.npz`` (with its float32 twin). Returns the summary."""
    from face_alignment_ros.common.render_format import descent_float32_file
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.cascade import Cascade
    from face_alignment_ros.core.morphable_model import MorphableModel

    descent, backend, samples, render_rows, profiled_rows = stage_inputs(stage, args, records, priors, start_from)
    kind = descent.descriptor
    descent = descent.first(descent.iterations, 0)  # its own 2D stages, if any, are replaced
    data = samples.arrays()
    ctx = {"backend": backend, "cascade": Cascade(MorphableModel.load()), "descent": descent,
           "crops": samples.crops}

    checkpoint = SavedPasses(stage, f"landmark_stage_{kind}_pass{{k}}.npz", samples_key(descent, data), args.resume)

    def report(variant, k, lam, nme):
        stage.log.info("landmark stage %d (%s): lambda %s, NME %s", k, variant, lam, json.dumps(nme))
        stage.record(descriptor=kind, landmark_stage=k, variant=variant, **{"lambda": lam},
                     **{f"{g}_nme": v["all"] for g, v in nme.items()})

    variants = tuple(args.variants.split(","))
    learned = learn_stages(ctx, data, args.landmark_stages, args.workers, checkpoint=checkpoint, report=report,
                           variants=variants)
    # choose the variant and the number of stages on validation only
    choice = min((learned[v]["nme"][k]["val"]["all"], v, k) for v in variants for k in range(len(learned[v]["nme"])))
    _, variant, n_stages = choice
    chosen = learned[variant]
    model = descent
    if n_stages:
        model = descent.with_landmark_stages(np.stack(chosen["R"][:n_stages]), np.stack(chosen["b"][:n_stages]),
                                             provenance={"landmark_stages": {
                                                 "variant": variant, "lambda": chosen["lambda"][:n_stages],
                                                 "perturbations": args.perturbations, "augmented": args.augmented,
                                                 "synthetic": int(len(render_rows)),
                                                 "profiled": int(len(profiled_rows)), "start_from": str(start_from)}})
    sha = model.save(stage.path(resources.DESCENT_MODEL_FILES[kind]))
    model.save(stage.path(descent_float32_file(kind)), dtype=np.float32)
    after = chosen["nme"][: n_stages + 1]  # after the cascade, then after each shipped 2D stage
    summary = {"sha256": sha, "heldout_inter_pupil_nme_percent": {
        kind: {"count": after[0][f"heldout-{kind}"]["count"],
               "nme_per_iteration": [x[f"heldout-{kind}"]["all"] for x in after],
               "nme_median": after[-1][f"heldout-{kind}"]["median"], "groups": after[-1][f"heldout-{kind}"]}
        for kind in ("landmarks", "detector") if f"heldout-{kind}" in after[0]}, "landmark_stages": {
        "chosen": {"variant": variant, "stages": n_stages},
        "variants": {v: {"lambda": learned[v]["lambda"], "nme_after_stage": learned[v]["nme"]} for v in variants}}}
    if "renders" in after[0]:
        summary["heldout_renders_box_nme_percent"] = {
            name: {"count": None, "nme_per_iteration": [x["renders"].get(f"yaw_bin_{b}") for x in after]}
            for b, name in enumerate(YAW_BIN_NAMES)}
    stage.log.info("landmark stages: chose %s with %d stages; validation %s", variant, n_stages,
                   [round(x["val"]["all"], 3) for x in chosen["nme"]])
    return summary
