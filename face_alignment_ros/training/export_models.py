"""Stage ``export``: copy the trained DFF weights and both descent models into the package, with
a model card each (data, commands, metrics, date), after checking that they load, that the DFF
descent model was learned on these weights, that float16 storage costs no accuracy and that the
total fits the size limit. Nothing shipped is replaced unless every check passes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from face_alignment_ros.common.photo_split import SPLIT_NAME
from face_alignment_ros.common.render_format import (
    DESCENT_STAGE,
    PHOTO_VIEWS_FILE,
    PROFILE_STAGE,
    SYNTH_PROGRESS_FILE,
    SYNTHESIZE_STAGE,
    TRAIN_DFF_STAGE,
    descent_float32_file,
)
from face_alignment_ros.core import resources
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.descriptors import check_dff_pairing
from face_alignment_ros.core.dff_network import load_dff_weights
from face_alignment_ros.core.face_crop import BoxPrior
from face_alignment_ros.training.photo_records import KEYPOINT_PRIOR_STAGE
from face_alignment_ros.training.stage_io import Stage

SIZE_LIMIT_MB = 25.0
CARDS_DIR = "model_cards"


STAGES_NOTE = " (here: after the whole cascade, then after each final 2D stage)"
FINE_STAGES_NOTE = (" (here: after the cascade and its DFF 2D stages, then after each fine 2D stage,"
                    " local ones first, then with the annotation offset and last with the annotation shape stage, where"
                    " the model has them)")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assets", type=Path, default=resources.ASSETS_DIR, help="destination (default: the package)")
    parser.add_argument("--iterations", action="append", default=[], metavar="KIND=N",
                        help="ship only the first N cascade iterations of a descent model (e.g. sift=3), "
                             "to stay within the size limit; repeatable")
    parser.add_argument("--landmark-stages", action="append", default=[], metavar="KIND=N",
                        help="ship only the first N final 2D stages of a descent model (e.g. sift=1), "
                             "to stay within the size limit; repeatable")
    parser.add_argument("--check-photos", type=int, default=40,
                        help="held-out photos on which float16 and float32 descent models are compared")
    parser.add_argument("--onnx-only", action="store_true",
                        help="only (re-)export the DFF inference graph (ONNX) of the weights already in --assets "
                             "and record it in their model card; needs no training work folder")


def _parse_iterations(items: list[str], option: str = "--iterations", low: int = 1) -> dict[str, int]:
    out = {}
    for item in items:
        kind, _, n = item.partition("=")
        if kind not in resources.DESCENT_MODEL_FILES or not n.isdigit() or int(n) < low:
            raise ValueError(f"{option} wants KIND=N with KIND in {sorted(resources.DESCENT_MODEL_FILES)} "
                             f"and N >= {low}, got {item!r}")
        out[kind] = int(n)
    return out


def _float16_check(stage: Stage, descriptor: str, shipped: Path, dff_weights: Path, heldout_records,
                   iterations: int | None, landmark_stages: int | None = None) -> dict | None:
    """Held-out inter-pupil NME (%) of the staged (float16) descent model against its float32
    twin, both cut to the shipped iterations (and final 2D stages) and both run through
    ``FaceAligner.from_files``, the path the package ships. ``heldout_records()``: the photos,
    read only when a twin exists (reading them may run the detector)."""
    f32 = stage.root / DESCENT_STAGE / descent_float32_file(descriptor)
    if not f32.exists():
        return None
    records = heldout_records()
    weights = dff_weights if descriptor == "dff" else None
    out = {name: shipped_path_nme(path, weights, records, iterations, landmark_stages)
           for name, path in (("float16", shipped), ("float32", f32))}
    out["photos"] = len(records)
    return out


def shipped_path_nme(descent_path: Path, dff_weights: Path | None, records, iterations: int | None,
                     landmark_stages: int | None = None) -> float:
    """Mean inter-pupil NME (%) of ``FaceAligner.from_files`` on photo records (image_path,
    landmarks), each aligned from its landmark box, with the model cut to ``iterations`` (and
    ``landmark_stages`` final 2D stages)."""
    import cv2

    from face_alignment_ros.common.metrics import nme
    from face_alignment_ros.core.aligner import FaceAligner
    from face_alignment_ros.core.face_crop import landmark_box

    aligner = FaceAligner.from_files(descent_path, dff_weights, detector=None)
    if iterations or landmark_stages is not None:
        full = aligner.descent
        cut = min(iterations or full.iterations, full.iterations)
        aligner.set_descent_model(full.first(cut, landmark_stages if cut == full.iterations else None))
    errors = [nme(aligner.align(cv2.imread(str(r.image_path)), landmark_box(r.landmarks), "landmarks").landmarks,
                  r.landmarks, "inter_pupil") for r in records]
    return round(100.0 * float(np.mean(errors)), 3) if errors else float("nan")


def _commands(stage: Stage, stages: tuple[str, ...], contains: str = "") -> list[str]:
    """Card lines: the commands each stage ran (its commands.txt), oldest first."""
    lines = []
    for name in stages:
        ran = [c for c in Stage(name, stage.root, stage.seed).commands() if contains in c or "--descriptor" not in c]
        if ran:
            lines.append(f"- Commands of stage {name} (UTC, oldest first):")
            lines += [f"  - `{c}`" for c in ran]
    return lines


def _profile_lines(stage: Stage) -> list[str]:
    """Card lines of stage profile (its settings and commands), when the work folder has it."""
    progress = stage.root / PROFILE_STAGE / SYNTH_PROGRESS_FILE
    if not progress.exists():
        return []
    config = json.loads(progress.read_text())["config"]
    return [f"- Profiled photos (stage profile, 300W-LP-style face profiling): `{json.dumps(config)}`",
            *_commands(stage, (PROFILE_STAGE,))]


def _box_prior_lines(stage: Stage, descent: DescentModel) -> list[str]:
    """Card lines of the detector prior's keypoint terms (stage box-prior), when the model has them."""
    report = stage.root / KEYPOINT_PRIOR_STAGE / "report.json"
    if not descent.box_priors.get("detector", BoxPrior()).keypoint_count or not report.exists():
        return []
    r = json.loads(report.read_text())
    cascade = {prior: {"validation photos, inter-pupil":
                       round(v["validation_photos_detector"]["nme_per_iteration"][-1], 3),
                       **{f"validation profiled {b}, box": round(x["nme_per_iteration"][-1], 3)
                          for b, x in v["validation_profiled_detector"].items()}}
               for prior, v in r.get("cascade", {}).items()}
    return [f"- Detector box prior read from BlazeFace's keypoints (stage box-prior; lambda {r['lambda']}, photo "
            f"weight {r['photo_weight']}). Offset errors on the validation identities, constant -> keypoint prior: "
            f"`{json.dumps(_offset_summary(r['validation']))}`; the cascade from the detector's box, NME (%) with "
            f"either prior: `{json.dumps(cascade)}`",
            *_commands(stage, (KEYPOINT_PRIOR_STAGE,))]


def _offset_summary(part: dict) -> dict:
    return {key: f"centre {c['centre_rms']} -> {part['keypoints'][key]['centre_rms']}, "
                 f"log scale {c['log_scale_rms']} -> {part['keypoints'][key]['log_scale_rms']}"
            for key, c in part["constant"].items()}


def unchanged(src: Path, shipped: Path, card: Path) -> bool:
    """The file to ship is byte for byte the one shipped, which has a card: that card (its
    training history and figures) stays, since this work folder may not hold that history."""
    return shipped.exists() and card.exists() and resources.file_sha256(src) == resources.file_sha256(shipped)


def _landmark_stage_lines(summary: dict) -> list[str]:
    """Card lines for a DFF descent model's final 2D stages (``descent --landmark-stages``)."""
    stages = summary.get("landmark_stages")
    if not stages:
        return []
    chosen = stages["chosen"]
    variants = stages["variants"]
    lines = [f"- Final 2D stages (core/landmark_stages.py): {chosen['stages']} learned, variant "
             f"'{chosen['variant']}', chosen with their lambdas on the validation part of the training identities."]
    for name, v in variants.items():
        lines.append(f"  - variant '{name}': lambda per stage {v['lambda']}; NME (%) after the cascade, then after "
                     f"each 2D stage, with per landmark group: `{json.dumps(v['nme_after_stage'])}`")
    return lines


def _fine_stage_lines(summary: dict) -> list[str]:
    """Card lines for a descent model's fine 2D stages (``descent --fine-stages``)."""
    fine, local = summary.get("fine_stages"), summary.get("local_stages")
    if not fine:
        return []
    lines = [] if not (local and local.get("lambda")) else [  # none learned: no line
        f"- Local fine 2D stages (a ridge regression per landmark from the histograms at it and its "
        f"{local['neighbours'] - 1} nearest landmarks): {local['chosen']} shipped; lambda per stage {local['lambda']} "
        f"and the count chosen on the validation part of the training identities. NME (%) before them, then after "
        f"each, with per landmark group: `{json.dumps(local['nme_after_stage'])}`"]
    scale = summary.get("start_error_scale")
    if scale and scale != 1:
        lines.append(f"- The fine stages learned from starts whose error on the training photos was widened "
                     f"{scale}x (`--start-error-scale`; docs/training.md, round 12): the network learned those "
                     f"photos, so the cascade leaves them less error than new faces.")
    offset = summary.get("annotation_offset")
    if offset:
        lines.append(f"- Annotation offset (added last, after the pose refit; docs/training.md, round 9): mean "
                     f"{offset['mean_norm_px']} crop px, the training photos' mean remaining error as annotated (their "
                     f"mirror images left out). NME (%) with it: `{json.dumps(offset['nme_after'])}`")
        if offset.get("convention_gap_px") is not None:
            lines.append(f"- The fine stages learned one symmetric convention (docs/training.md, round 10): the "
                         f"photos' targets and their mirror images' met halfway across the gap between the two "
                         f"conventions, {offset['convention_gap_px']} crop px on average; the offset restores the "
                         f"annotators'.")
    where = {"annotation_shape": "after the offset, on the output landmarks",
             "fitted_shape": "on the points the pose refit fits, and on the output beyond 45-60 deg of yaw"}
    for name, shape in (summary.get("shape_stages") or {}).items():
        lines.append(f"- {name.replace('_', ' ').capitalize()} stage ({where.get(name, '')}; docs/training.md, round "
                     f"14): a ridge regression from the landmarks, turned, scaled and centred onto the mean target "
                     f"shape, to what {shape['samples']} still miss; lambda {shape['lambda']}, chosen on "
                     f"{shape['chosen_on']} (NME % there {shape['choice_nme'][0]} -> {shape['choice_nme'][1]}). "
                     f"NME (%) with it: `{json.dumps(shape['nme_after'])}`")
    return lines + [
        f"- Fine 2D stages (gradient-orientation histograms, core/gradient_histograms.py): {fine['chosen']} shipped,"
        f" layout `{json.dumps(fine['layout'])}`, regressors stored at rank {fine['rank']}; lambda per "
        f"stage {fine['lambda']} and the count chosen on the validation part of the training identities "
        f"(validation NME at full rank {fine['validation_nme_full_rank']}). NME (%) before these global stages, "
        f"then after each, with per landmark group: `{json.dumps(fine['nme_after_stage'])}`"]


def _card(title: str, lines: list[str]) -> str:
    return "\n".join([f"# Model card: {title}", ""] + lines) + "\n"


ONNX_CARD_PREFIX = "- Inference graph"


def _onnx_card_line(info: dict) -> str:
    return (f"{ONNX_CARD_PREFIX} `{Path(info['path']).name}` (ONNX, what the runtime runs: float32 arithmetic "
            f"on the float16 weights, stored as such; `core/dff_runtime.py`): sha256 {info['sha256']}, exported "
            f"from the weights with sha256 {info['dff_weights_sha256']}; max abs difference to torch "
            f"{info['max_abs_diff']:.1e} on random crops; {info['size_mb']:.2f} MB.")


def _set_onnx_card_line(card: Path, info: dict) -> None:
    """Put the inference-graph line into an existing card (replacing an older one)."""
    lines = [ln for ln in card.read_text().splitlines() if not ln.startswith(ONNX_CARD_PREFIX)] if card.exists() \
        else ["# Model card: DFF network weights (`dff_weights.pt`)", ""]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("- File size")), len(lines) - 1) + 1
    lines.insert(at, _onnx_card_line(info))
    card.write_text("\n".join(lines) + "\n")


def run_onnx_only(args: argparse.Namespace) -> int:
    """Export the inference graph of the shipped weights (the training work folder need not exist)."""
    from face_alignment_ros.core.dff_runtime import export_onnx, onnx_path_for

    weights = args.assets / resources.DFF_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no DFF weights at {weights}: " + resources.TRAIN_HINT)
    info = export_onnx(weights, onnx_path_for(weights))
    _set_onnx_card_line(args.assets / CARDS_DIR / "dff_weights.md", info)
    print(f"wrote {info['path']} ({info['size_mb']:.2f} MB, sha256 {info['sha256'][:12]}..., "
          f"max abs diff to torch {info['max_abs_diff']:.1e})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.onnx_only:
        return run_onnx_only(args)
    from face_alignment_ros.core.dff_runtime import export_onnx, onnx_path_for

    stage = Stage("export", args.work, args.seed)
    weights_src = stage.input(TRAIN_DFF_STAGE, resources.DFF_WEIGHTS_FILE)
    descent_src = {k: stage.input(DESCENT_STAGE, resources.DESCENT_MODEL_FILES[k]) for k in ("dff", "sift")}
    _, config = load_dff_weights(weights_src, device="cpu")  # refuses a broken file
    import torch

    provenance = torch.load(weights_src, map_location="cpu", weights_only=True)["provenance"]
    descent_summary = json.loads(stage.input(DESCENT_STAGE, "summary.json").read_text())
    fit_summary = json.loads(stage.input("fit", "summary.json").read_text())
    synth_progress = json.loads(stage.input(SYNTHESIZE_STAGE, SYNTH_PROGRESS_FILE).read_text())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    keep = _parse_iterations(args.iterations)
    keep_stages = _parse_iterations(args.landmark_stages, "--landmark-stages", low=0)
    cards_dir = args.assets / CARDS_DIR
    # cards of files that ship unchanged are kept (checked before anything is replaced)
    kept_cards = {name for name, src in ((resources.DFF_WEIGHTS_FILE, weights_src),
                                         *((resources.DESCENT_MODEL_FILES[k], descent_src[k]) for k in descent_src))
                  if name not in {resources.DESCENT_MODEL_FILES[k] for k in (*keep, *keep_stages)}
                  and unchanged(src, args.assets / name, cards_dir / (Path(name).stem + ".md"))}

    args.assets.mkdir(parents=True, exist_ok=True)
    cards = cards_dir
    cards.mkdir(exist_ok=True)

    @functools.cache
    def heldout_records() -> list:  # one read for both descriptors' float16 checks
        from face_alignment_ros.training.photo_records import load_photo_records

        return [r for r in load_photo_records(Stage(DESCENT_STAGE, stage.root, stage.seed), "default")
                if r.split == "heldout"][:args.check_photos]
    # stage the files beside the assets and check them all before anything shipped is replaced
    with tempfile.TemporaryDirectory(dir=args.assets, prefix=".export-") as tmp:
        staged = {resources.DFF_WEIGHTS_FILE: Path(tmp) / resources.DFF_WEIGHTS_FILE}
        shutil.copyfile(weights_src, staged[resources.DFF_WEIGHTS_FILE])
        onnx_file = onnx_path_for(resources.DFF_WEIGHTS_FILE).name
        staged[onnx_file] = Path(tmp) / onnx_file
        onnx_info = export_onnx(staged[resources.DFF_WEIGHTS_FILE], staged[onnx_file])
        checks = {}
        for kind, src in descent_src.items():
            model = DescentModel.load(src, expect_descriptor=kind)
            if kind == "dff":
                if model.crop_size != config.input_size:
                    raise ValueError(f"{src}: crop {model.crop_size} does not match the DFF input {config.input_size}")
                check_dff_pairing(model, weights_src)
            out = staged[resources.DESCENT_MODEL_FILES[kind]] = Path(tmp) / resources.DESCENT_MODEL_FILES[kind]
            if kind in keep or kind in keep_stages:
                model.first(keep.get(kind, model.iterations), keep_stages.get(kind)).save(out)
            else:
                shutil.copyfile(src, out)
            checks[kind] = _float16_check(stage, kind, out, weights_src, heldout_records, keep.get(kind),
                                          keep_stages.get(kind))
        sizes = {name: path.stat().st_size / 2**20 for name, path in staged.items()}
        total = sum(sizes.values())
        if total > SIZE_LIMIT_MB:
            raise ValueError(f"shipped models would total {total:.1f} MB > {SIZE_LIMIT_MB} MB (nothing replaced); "
                             "ship fewer iterations with --iterations KIND=N")
        for name, path in staged.items():
            os.replace(path, args.assets / name)

    data_line = (f"- Data: 300-W photos (AFW + HELEN train subsets, ../shared/data/300w), split by "
                 f"`common/photo_split.py`: {fit_summary['train']['count']} training photos; "
                 f"{fit_summary['heldout']['count']} held out (`{SPLIT_NAME}`), "
                 "never used for training or model choice.")
    # photo_views.json is the photo step's own record (the summary misses it when the renders were already made)
    photo_views = stage.root / SYNTHESIZE_STAGE / PHOTO_VIEWS_FILE
    photo_counts = json.loads(photo_views.read_text())["counts"] if photo_views.exists() else {}
    common = [data_line,
              f"- 3DMM fits (stage fit): landmark residual median {100 * fit_summary['all']['median']:.2f}% "
              "of the box size.",
              f"- Synthesized renders (stage synthesize): {synth_progress['config']}; "
              f"photo crops (fitted meshes as labels): {photo_counts or 'none'}.",
              f"- Exported {date} by `face-align-train export`."]
    if resources.DFF_WEIGHTS_FILE in kept_cards:  # same weights: the card stays, its ONNX line is renewed
        _set_onnx_card_line(cards / "dff_weights.md", dict(onnx_info, path=onnx_file))
    else:
        (cards / "dff_weights.md").write_text(_card("DFF network weights (`dff_weights.pt`)", [
            f"- Architecture: {json.dumps(config.to_dict())}",
            "- Trained by `face-align-train train-dff` (angular softmax, m = 1, 100 random 500-patch segmentations "
            "of the mean face, sampled pixels; see training/train_dff.py).",
            f"- Training provenance: `{json.dumps({k: v for k, v in provenance.items() if k != 'args'})}`",
            f"- Training arguments: `{json.dumps(provenance.get('args', {}))}`",
            f"- File size: {sizes[resources.DFF_WEIGHTS_FILE]:.2f} MB (float16 storage).",
            _onnx_card_line(dict(onnx_info, path=onnx_file)),
            *_commands(stage, ("fit", "segment", "synthesize", "train-dff")),
            *common]))
    for kind in ("dff", "sift"):
        if resources.DESCENT_MODEL_FILES[kind] in kept_cards:
            continue
        s = descent_summary.get(kind, {})
        lines = [f"- Descriptor: {kind.upper()}; trained by `face-align-train descent --descriptor {kind}` "
                 "(ridge regressions of eq. 9-11 on perturbed starts from the shipped detector's and landmark boxes"
                 " plus large-pose renders; lambda chosen per iteration on a validation part of the training"
                 " identities).",
                 f"- Held-out ({SPLIT_NAME}) inter-pupil NME (%) per cascade iteration"
                 f"{FINE_STAGES_NOTE if 'fine_stages' in s else STAGES_NOTE if 'landmark_stages' in s else ''}: "
                 f"`{json.dumps(s.get('heldout_inter_pupil_nme_percent'))}`",
                 f"- Held-out identities' renders, box-normalised NME (%) per yaw bin: "
                 f"`{json.dumps(s.get('heldout_renders_box_nme_percent'))}`",
                 *[f"- {label}, box-normalised NME (%) per yaw bin: `{json.dumps(s[key])}`"
                   for key, label in (("validation_profiled_box_nme_percent",
                                       "Profiled photos of the validation identities (stage profile)"),
                                      ("heldout_profiled_box_nme_percent", "Profiled held-out photos (stage profile)"),
                                      ("validation_profiled_detector_box_nme_percent",
                                       "Profiled photos of the validation identities, from the detector's box"),
                                      ("heldout_profiled_detector_box_nme_percent",
                                       "Profiled held-out photos, from the detector's box"),
                                      ("heldout_renders_detector_box_nme_percent",
                                       "Held-out identities' renders, from the detector's box"))
                   if key in s],
                 *_landmark_stage_lines(s),
                 *_fine_stage_lines(s),
                 f"- float16 storage check (held-out inter-pupil NME %, landmark boxes): `{json.dumps(checks[kind])}`",
                 f"- Shipped cascade iterations: {keep.get(kind, 'all')}; final 2D stages: "
                 f"{keep_stages.get(kind, 'all')} (the NME lists above start before iteration 1: entry k is after "
                 "k iterations).",
                 f"- File size: {sizes[resources.DESCENT_MODEL_FILES[kind]]:.2f} MB; sha256 of the trained file "
                 f"{s.get('sha256')}.",
                 *_commands(stage, ("descent",), contains=f"--descriptor {kind}"),
                 *_box_prior_lines(stage, DescentModel.load(descent_src[kind])),
                 *_profile_lines(stage),
                 *common]
        title = f"{kind.upper()} descent directions (`descent_{kind}.npz`)"
        (cards / f"descent_{kind}.md").write_text(_card(title, lines))
    stage.save_json("export.json", {"sizes_mb": sizes, "total_mb": total, "float16_checks": checks, "date": date,
                                    "iterations": keep, "landmark_stages": keep_stages,
                                    "cards_kept": sorted(kept_cards)})
    stage.log.info("exported %.1f MB to %s: %s; float16 checks %s", total, args.assets, sizes, checks)
    return 0
