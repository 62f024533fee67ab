"""Stage ``descent``: learn the cascade's generic descent directions (Sec. III-C4, eq. 9-11).

Training samples are perturbed initialisations on the training photos (and, when present,
synthesized large-pose renders): the crop comes from the shipped detector's box (or the
landmark box) through the box prior, jittered by the prior's spread. Ground truth is the
photo's 68 annotated points and the fitted camera (stage ``fit``). The regularisation lambda
of each iteration is chosen on a validation part of the *training* identities; the held-out
split is only evaluated, after training.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.metrics import box_size, inter_pupil
from face_alignment_ros.common.render_format import (
    DESCENT_STAGE,
    PROFILE_STAGE,
    SYNTHESIZE_STAGE,
    TRAIN_DFF_STAGE,
    YAW_BIN_NAMES,
    descent_float32_file,
    load_outputs,
    split_file_name,
)
from face_alignment_ros.core import face_crop, resources
from face_alignment_ros.core.cascade import Cascade
from face_alignment_ros.core.descriptors import SIFT_PATCH_MM, DffBackend, SiftBackend
from face_alignment_ros.core.face_crop import crop_image
from face_alignment_ros.core.gradient_histograms import HistogramLayout
from face_alignment_ros.core.landmark_stages import refine_landmarks
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.training.descent_regression import TrainingSample, learn_descent
from face_alignment_ros.training.detector_starts import CropDetections, cached_detections, recrop_from_detector
from face_alignment_ros.training.learn_fine_stages import START_ERROR_SCALE
from face_alignment_ros.training.photo_records import (
    fit_box_priors,
    is_validation,
    keypoint_terms,
    load_photo_records,
    mirror_record,
    perturbed_start,
    record_crop_box,
    validation_identities,
    with_keypoint_terms,
)
from face_alignment_ros.training.stage_io import Stage

DEFAULT_CROP = 128
LARGE_POSE_EVAL_PER_BIN = 600


def make_sample(cascade: Cascade, backend, image: np.ndarray, crop_box: np.ndarray, landmarks: np.ndarray,
                camera_image: np.ndarray, crop_size: int) -> TrainingSample:
    crop = crop_image(image, crop_box, crop_size)[0]
    target = face_crop.image_to_crop(landmarks, crop_box, crop_size)
    return TrainingSample(make_sampler=lambda c=crop: backend.prepare(c), state=cascade.initial_state(crop_size),
                          target_landmarks=target,
                          target_camera=face_crop.camera_image_to_crop(camera_image, crop_box, crop_size),
                          normaliser=inter_pupil(target))


def photo_samples(cascade, backend, records, priors, rng, perturbations: int, jitter: float, crop_size: int,
                  mirror: bool = False):
    """``perturbations`` jittered starts per photo (detector and landmark boxes alternating), and
    as many again on its mirror image when ``mirror``: twice the faces for the regression."""
    import cv2

    samples = []
    for r in tqdm(records, desc="crops", unit="photo", leave=False):
        image = cv2.imread(r.image_path)
        views = [(r, image)] + ([mirror_record(r, image)] if mirror else [])
        for rec, img in views:
            for k in range(perturbations):
                crop_box = perturbed_start(rec, k, priors, rng, jitter)
                samples.append(make_sample(cascade, backend, img, crop_box, rec.landmarks, rec.camera, crop_size))
    return samples


def synthetic_samples(cascade, backend, data: dict, rows: np.ndarray) -> list[TrainingSample]:
    """Renders of stage ``synthesize``: already canonical crops (with box-like jitter)."""
    samples = []
    for i in rows:
        crop = np.ascontiguousarray(data["images"][i])
        target = np.asarray(data["landmarks"][i], np.float32)
        samples.append(TrainingSample(make_sampler=lambda c=crop: backend.prepare(c),
                                      state=cascade.initial_state(crop.shape[0]), target_landmarks=target,
                                      target_camera=np.asarray(data["camera"][i], np.float32),
                                      normaliser=box_size(target)))
    return samples


def render_samples(cascade, backend, data: dict, rows, detections: CropDetections | None, prior, rng,
                   detector_share: float, jitter: float) -> list[TrainingSample]:
    """Samples from rendered/profiled crops ``rows`` (in the order drawn): the first
    ``detector_share`` of them start from the detector's box on the crop (through ``prior``,
    jittered; see detector_starts), the others from the crop as rendered."""
    rows = list(rows)
    n_detector = int(round(detector_share * len(rows))) if detections is not None else 0
    samples = synthetic_samples(cascade, backend, data, np.sort(rows[n_detector:]))
    if n_detector:
        started = recrop_from_detector(data, np.sort(rows[:n_detector]), detections, prior, rng, jitter)
        samples += synthetic_samples(cascade, backend, started, np.arange(len(started["images"])))
    return samples


def run_cascade_errors(cascade, descent, sample: TrainingSample) -> list[float]:
    """Normalised landmark error before and after each iteration and each final 2D stage (from
    the run's history)."""
    sampler = sample.make_sampler()
    final = refine_landmarks(descent, sampler, cascade.run(descent, sampler, sample.state))
    return [np.linalg.norm(x - sample.target_landmarks, axis=1).mean() / sample.normaliser
            for x in [sample.state.landmarks, *final.history]]


def evaluate_large_pose(cascade, backend, descent, data: dict, rows: np.ndarray | None = None) -> dict:
    """Box-normalised NME (%) per yaw bin on held-out identities' renders (or on ``rows`` of
    ``data``, e.g. profiled views of the validation identities)."""
    bins = np.asarray(data["yaw_bin"])
    among = np.ones(len(bins), bool) if rows is None else np.isin(np.arange(len(bins)), rows)
    out = {}
    for b, name in enumerate(YAW_BIN_NAMES):
        rows = np.flatnonzero((bins == b) & among)
        if not len(rows):
            continue
        rows = rows[:: max(1, len(rows) // LARGE_POSE_EVAL_PER_BIN)]  # evenly spaced: every identity
        errors = np.array([run_cascade_errors(cascade, descent, s)
                           for s in tqdm(synthetic_samples(cascade, backend, data, rows), desc=f"yaw {name}",
                                         leave=False, mininterval=10)]) * 100
        out[name] = {"count": len(rows), "nme_per_iteration": errors.mean(axis=0).round(3).tolist()}
    return out


def evaluate_profiled(cascade, backend, descent, profiled: dict, val_identity: np.ndarray,
                      detections: dict | None = None) -> dict:
    """Box NME (%) per yaw bin on profiled views (stage ``profile``) of the validation identities
    (a large-pose validation figure, for choices) and of the held-out photos (reported only); with
    ``detections`` (split -> the detector on the crops) also from the detector's box, as users
    run it."""
    val_rows = np.flatnonzero(val_identity[np.asarray(profiled["train"]["identity"])])
    out = {"validation_profiled_box_nme_percent": evaluate_large_pose(cascade, backend, descent, profiled["train"],
                                                                      val_rows),
           "heldout_profiled_box_nme_percent": evaluate_large_pose(cascade, backend, descent, profiled["heldout"])}
    if detections is not None:
        prior = descent.box_priors["detector"]
        val = recrop_from_detector(profiled["train"], val_rows, detections["train"], prior, None, 0.0)
        held = recrop_from_detector(profiled["heldout"], np.arange(len(detections["heldout"])),
                                    detections["heldout"], prior, None, 0.0)
        out["validation_profiled_detector_box_nme_percent"] = evaluate_large_pose(cascade, backend, descent, val)
        out["heldout_profiled_detector_box_nme_percent"] = evaluate_large_pose(cascade, backend, descent, held)
    return out


def evaluate_split(cascade, backend, descent, records, box_kind: str) -> dict:
    """Inter-pupil NME (%) after each iteration on the records, one start per photo."""
    import cv2

    errors = []
    for r in tqdm(records, desc=f"eval {box_kind}", unit="photo", leave=False):
        crop_box = record_crop_box(r, descent.box_priors[box_kind], box_kind)
        if crop_box is None:
            continue
        image = cv2.imread(r.image_path)
        sample = make_sample(cascade, backend, image, crop_box, r.landmarks, r.camera, descent.crop_size)
        errors.append(run_cascade_errors(cascade, descent, sample))
    errors = np.array(errors) * 100
    return {"count": len(errors), "nme_per_iteration": errors.mean(axis=0).round(3).tolist(),
            "nme_median": float(np.median(errors[:, -1]))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--descriptor", choices=("dff", "sift", "both"), default="both")
    parser.add_argument("--dff-weights", default=None, help="default: <work>/train-dff/dff_weights.pt")
    parser.add_argument("--detector", default="default")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--perturbations", type=int, default=12,
                        help="starts per training photo (and per mirror image)")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="do not add the training photos' mirror images (on by default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="DFF network threads of the feature passes (default: the thread policy's, all cores up "
                             "to 2); 1 when two runs share the CPU")
    parser.add_argument("--no-keypoint-prior", action="store_true",
                        help="keep the constant detector prior even where stage box-prior has run")
    parser.add_argument("--jitter", type=float, default=1.0, help="box jitter, in units of the prior's spread")
    parser.add_argument("--detector-starts", type=float, default=0.0,
                        help="share of the --synthetic and --profiled crops started from the detector's box on "
                             "the crop (through the detector box prior, jittered) instead of the rendered framing")
    parser.add_argument("--regularisation", type=float, default=10.0, help="shape prior weight of eq. 6-8")
    parser.add_argument("--crop-size", type=int, default=DEFAULT_CROP, help="SIFT crop (DFF: the network's input)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many training photos (smoke runs)")
    parser.add_argument("--synthetic", type=int, default=4000,
                        help="large-pose renders of training identities added to the training samples")
    parser.add_argument("--profiled", type=int, default=0,
                        help="profiled views of training photos (stage profile, 300W-LP style) added to the "
                             "training samples, beside --synthetic")
    stages = parser.add_argument_group("final 2D stages (DFF; core/landmark_stages.py)")
    stages.add_argument("--landmark-stages", type=int, default=0,
                        help="learn up to N final 2D stages after the DFF cascade (the count is chosen on validation)")
    stages.add_argument("--start-from", default=None,
                        help="learn only the 2D stages, on top of this DFF descent model (e.g. the shipped one)")
    stages.add_argument("--augmented", type=int, default=2,
                        help="augmented starts per photo view, for the 'augmented' variant of the 2D stages")
    stages.add_argument("--variants", default="clean,augmented",
                        help="comma-separated: 'clean' (plain crops), 'augmented' (plus augmented copies)")
    stages.add_argument("--eval-renders-per-bin", type=int, default=200,
                        help="held-out renders per yaw bin evaluated with the 2D stages")
    stages.add_argument("--workers", type=int, default=1, help="processes computing the 2D stages' features")
    stages.add_argument("--resume", action="store_true", help="reuse the saved passes of an interrupted 2D-stage run")
    fine = parser.add_argument_group("fine 2D stages (gradient-orientation histograms; core/gradient_histograms.py)")
    fine.add_argument("--fine-stages", type=int, default=0,
                      help="learn up to N fine 2D stages last (the count is chosen on validation)")
    fine.add_argument("--local-stages", type=int, default=0,
                      help="before those, learn up to N local fine stages: a regression per landmark from the "
                           "histograms at its nearest landmarks (the count is chosen on validation)")
    fine.add_argument("--no-annotation-offset", action="store_true",
                      help="do not learn the annotation offset (the training photos' mean remaining error, which "
                           "the mirrored copies otherwise leave on real photos), and let the fine stages learn the "
                           "photos' and their mirror images' points as they are instead of in one symmetric "
                           "convention")
    fine.add_argument("--no-shape-stages", action="store_true",
                      help="do not learn the shape stages: regressions from the landmarks' shape to the training "
                           "photos' remaining error as annotated (after the offset, on the output) and to the "
                           "renders' and profiled views' fitted labels (on the points the pose refit fits)")
    fine.add_argument("--start-error-scale", type=float, default=START_ERROR_SCALE,
                      help="widen the training photos' remaining error by this factor before the fine stages learn "
                           "from it: the DFF network learned those photos, so the cascade leaves them less error "
                           "than new faces")
    fine.add_argument("--local-neighbours", type=int, default=6,
                      help="landmarks each local regression reads (itself and its nearest)")
    default = HistogramLayout()
    fine.add_argument("--fine-crop", type=int, default=default.crop_size,
                      help="side (px) of the crop the histograms are read from, over the cascade's crop box")
    fine.add_argument("--fine-cell", type=int, default=default.cell, help="histogram cell side (fine-crop px)")
    fine.add_argument("--fine-grid", type=int, default=default.grid, help="cells per side around each landmark")
    fine.add_argument("--fine-bins", type=int, default=default.bins, help="orientation bins over 360 degrees")
    fine.add_argument("--fine-rank", type=int, default=64,
                      help="rank each fine stage's regressor is stored at (truncated SVD; at most 136)")


def run(args: argparse.Namespace) -> int:
    stage = Stage(DESCENT_STAGE, args.work, args.seed)
    rng = stage.rng()
    model = MorphableModel.load()
    cascade = Cascade(model)
    records = load_photo_records(stage, args.detector)
    priors = fit_box_priors(records)
    terms = None if args.no_keypoint_prior else keypoint_terms(stage.root)
    if terms is not None:  # the detector's keypoints frame its starts, as at test time
        priors["detector"] = with_keypoint_terms(priors["detector"], terms)
    stage.log.info("detector prior: %s", "with keypoint terms from stage box-prior" if terms else "constant offsets")
    stage.save_json("box_priors.json", {k: v.to_dict() for k, v in priors.items()})
    train = [r for r in records if r.split == "train" and not is_validation(r.subset, r.name)]
    val = [r for r in records if r.split == "train" and is_validation(r.subset, r.name)]
    heldout = [r for r in records if r.split == "heldout"]
    if args.limit:
        train = train[: args.limit]
    stage.log.info("photos: %d train, %d validation (lambda), %d held-out (report only)",
                   len(train), len(val), len(heldout))
    if args.start_from:
        if args.descriptor == "both" or (args.landmark_stages < 1 and args.fine_stages < 1 and args.local_stages < 1):
            raise ValueError("--start-from learns final 2D stages: it needs --descriptor dff|sift and "
                             "--landmark-stages N, --local-stages N or --fine-stages N")
        stages = _landmark_stages(stage, args, records, priors, args.start_from, args.descriptor)
        _merge_summary(stage, {args.descriptor: stages}, replace=False)
        return 0
    kinds = ("dff", "sift") if args.descriptor == "both" else (args.descriptor,)
    synth = None
    if args.synthetic:
        stage.input(SYNTHESIZE_STAGE, split_file_name("train", "images"))
        synth = {split: load_outputs(args.work, split) for split in ("train", "heldout")}
    val_identity = validation_identities(stage)
    profiled = None
    if args.profiled:
        stage.input(PROFILE_STAGE, split_file_name("train", "images"))
        profiled = {split: load_outputs(args.work, split, PROFILE_STAGE) for split in ("train", "heldout")}
    # the detector on the rendered/profiled crops, once (cached beside the photos' detections)
    detections = {name: {split: cached_detections(stage.path(f"detections_{args.detector}_{name}_{split}.npz"),
                                                  data[split], args.detector) for split in ("train", "heldout")}
                  for name, data in (("synthesize", synth), ("profile", profiled)) if data is not None}
    summary = {}
    for kind in kinds:
        if kind == "dff":
            weights = args.dff_weights or stage.input(TRAIN_DFF_STAGE, resources.DFF_WEIGHTS_FILE)
            backend = DffBackend.from_file(weights, threads=args.threads)
            extra = {"dff_weights": str(weights), "dff_weights_sha256": resources.file_sha256(weights)}
        else:
            backend = SiftBackend(args.crop_size)
            extra = {"sift_patch_mm": SIFT_PATCH_MM}
        crop_size = backend.crop_size
        train_samples = photo_samples(cascade, backend, train, priors, rng, args.perturbations, args.jitter, crop_size,
                                      mirror=args.mirror)
        val_samples = photo_samples(cascade, backend, val, priors, rng, 2, args.jitter, crop_size)
        for name, data, count in (("synthesize", synth, args.synthetic), ("profile", profiled, args.profiled)):
            if not count or data is None:
                continue
            if data["train"]["images"].shape[1] != crop_size:
                raise ValueError(f"{name} views are {data['train']['images'].shape[1]} px, the {kind} crop is "
                                 f"{crop_size}")
            # identities of the lambda-validation photos stay out of training here too
            rows = [i for i in rng.permutation(len(data["train"]["images"]))
                    if not val_identity[data["train"]["identity"][i]]][:count]
            train_samples += render_samples(cascade, backend, data["train"], rows, detections[name]["train"],
                                            priors["detector"], rng, args.detector_starts, args.jitter)

        def report(rec, kind=kind):
            stage.log.info("%s iteration %d: lambda %s, train NME %.2f%%, validation NME %.2f%%", kind,
                           rec["iteration"], rec.get("lambda"), 100 * rec["train_nme"], 100 * rec["val_nme"])
            stage.record(descriptor=kind, **rec)

        descent = learn_descent(
            cascade, train_samples, val_samples, args.iterations, args.regularisation, report=report,
            descriptor=kind, descriptor_dim=backend.dim, crop_size=crop_size, box_priors=priors,
            provenance={"stage": "descent", "seed": args.seed, "train_photos": len(train),
                        "perturbations": args.perturbations, "mirror": args.mirror, "jitter": args.jitter,
                        "detector": args.detector, "validation_photos": len(val),
                        "detector_starts": args.detector_starts},
            extra=extra)
        sha = descent.save(stage.path(resources.DESCENT_MODEL_FILES[kind]))
        descent.save(stage.path(descent_float32_file(kind)), dtype=np.float32)  # export checks float16 against it
        results = {box_kind: evaluate_split(cascade, backend, descent, heldout, box_kind)
                   for box_kind in ("landmarks", "detector")}
        summary[kind] = {"sha256": sha, "heldout_inter_pupil_nme_percent": results,
                         "train_samples": len(train_samples)}
        if synth is not None:
            summary[kind]["heldout_renders_box_nme_percent"] = evaluate_large_pose(cascade, backend, descent,
                                                                                   synth["heldout"])
            found = detections["synthesize"]["heldout"]
            summary[kind]["heldout_renders_detector_box_nme_percent"] = evaluate_large_pose(
                cascade, backend, descent, recrop_from_detector(synth["heldout"], np.arange(len(found)), found,
                                                                descent.box_priors["detector"], None, 0.0))
        if profiled is not None:
            summary[kind].update(evaluate_profiled(cascade, backend, descent, profiled, val_identity,
                                                   detections["profile"]))
        stage.log.info("%s held-out (%d photos): %s", kind, len(heldout), results)
        if args.landmark_stages or args.fine_stages or args.local_stages:
            start_from = stage.path(resources.DESCENT_MODEL_FILES[kind])
            summary[kind].update(_landmark_stages(stage, args, records, priors, start_from, kind))
    _merge_summary(stage, summary)
    return 0


def _landmark_stages(stage: Stage, args, records, priors, start_from, kind: str) -> dict:
    """The DFF 2D stages on ``start_from``, then the fine stages on what they leave."""
    from face_alignment_ros.training import learn_fine_stages, learn_landmark_stages

    summary = {}
    if args.landmark_stages:
        summary = learn_landmark_stages.run(stage, args, records, priors, start_from)
        start_from = stage.path(resources.DESCENT_MODEL_FILES[kind])  # the model just written
    if args.fine_stages or args.local_stages:
        fine = learn_fine_stages.run(stage, args, records, priors, start_from)
        summary = {**summary, **fine}
    return summary


def _merge_summary(stage: Stage, summary: dict, replace: bool = True) -> None:
    """DFF and SIFT may be learned by separate (even concurrent) runs: merge into one summary.
    ``replace``: a kind's entry replaces the old one (else it updates it: 2D stages added later)."""
    previous = stage.path("summary.json")
    merged = json.loads(previous.read_text()) if previous.exists() else {}
    for kind, entry in summary.items():
        merged[kind] = entry if replace else {**merged.get(kind, {}), **entry}
    stage.save_json("summary.json", merged)
    _plot(stage, merged)


def _plot(stage: Stage, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind, res in summary.items():
        for box_kind, r in res.get("heldout_inter_pupil_nme_percent", {}).items():
            ax.plot(r["nme_per_iteration"], marker="o", label=f"{kind.upper()}, {box_kind} box")
    ax.set_xlabel("cascade iteration")
    ax.set_ylabel("inter-pupil NME (%)")
    ax.set_title("held-out 300-W photos")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(stage.path("nme_per_iteration.png"), dpi=100)
    plt.close(fig)
