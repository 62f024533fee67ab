"""`face-align-train <stage> [--work DIR] [--seed N] [--data DIR] [stage options]`: the training
pipeline, one command per stage (issue 3). `face-align-train all` runs every stage in order with
its default options.

Stage module convention (every stage follows it):
  - the module is ``face_alignment_ros.training.<module>`` of ``STAGE_MODULES`` below and is
    imported only when its stage runs (so a stage's heavy imports never slow the others);
  - it exposes ``add_arguments(parser)``, which adds its own options to an argparse parser that
    already holds the common ones (``--work``, ``--seed``, ``--data``; never redefine them), and
    ``run(args) -> int``, which runs the stage and returns the exit status;
  - it uses ``training.stage_io.Stage(name, args.work, args.seed)`` for its folder, log, metrics,
    plots and seeded RNG, and ``Stage.input(stage, file)`` for an earlier stage's output, which
    raises FileNotFoundError naming the command to run first; this CLI prints that error.
A module that only has ``main(argv)`` is accepted too: it gets the stage's argv unparsed.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from face_alignment_ros.core import resources
from face_alignment_ros.training.stage_io import STAGES, Stage

STAGE_MODULES = {
    "fit": "face_alignment_ros.training.fit_photos",
    "synthesize": "face_alignment_ros.training.synthesize",
    "profile": "face_alignment_ros.training.profile_views",
    "segment": "face_alignment_ros.training.segmentation",
    "train-dff": "face_alignment_ros.training.train_dff",
    "descent": "face_alignment_ros.training.learn_descent",
    "box-prior": "face_alignment_ros.training.keypoint_box_prior",
    "export": "face_alignment_ros.training.export_models",
}
assert set(STAGE_MODULES) == set(STAGES)

STAGE_HELP = {
    "fit": "fit the 3DMM to every photo's 68 landmarks -> fit/fits.npz",
    "synthesize": "re-render fitted photos at new poses and expressions -> synthesize/",
    "profile": "turn each fitted photo's whole head region to large yaw (300W-LP face profiling) -> profile/",
    "segment": "100 random 500-patch segmentations of the mean face -> segment/segmentations.npz",
    "train-dff": "train the DFF network on the synthesized renders -> train-dff/",
    "descent": "learn the cascade's descent directions (DFF and SIFT) -> descent/",
    "box-prior": "fit the detector's box prior on its keypoints (the framing of turned faces) -> box-prior/",
    "export": "copy the trained models into the package with model cards",
    "all": "run " + ", ".join(STAGES) + " in order with default options",
}


class StageUnavailable(RuntimeError):
    pass


def _load(stage: str):
    name = STAGE_MODULES[stage]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise StageUnavailable(f"stage {stage!r} is not implemented yet ({name} is missing)") from exc
        raise
    if not (hasattr(module, "run") and hasattr(module, "add_arguments")) and not hasattr(module, "main"):
        raise StageUnavailable(f"{name} has neither add_arguments()/run() nor main()")
    return module


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, default=None,
                        help=f"work folder (default $FACE_WORK_DIR or {resources.work_dir()})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--data", type=Path, default=None,
                        help="shared data folder holding 300w/ (default $FACE_DATA_DIR or ../shared/data)")


def stage_parser(stage: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"face-align-train {stage}", description=STAGE_HELP[stage])
    add_common_arguments(parser)
    module.add_arguments(parser)
    return parser


def run_stage(stage: str, argv: list[str]) -> int:
    module = _load(stage)
    if not hasattr(module, "run"):
        return int(module.main(argv) or 0)
    args = stage_parser(stage, module).parse_args(argv)
    Stage(stage, args.work).record_command(" ".join(["face-align-train", stage, *argv]))
    return int(module.run(args) or 0)


def _usage() -> str:
    lines = ["usage: face-align-train <stage> [--work DIR] [--seed N] [--data DIR] [stage options]", "",
             "stages:"]
    lines += [f"  {name:<11} {STAGE_HELP[name]}" for name in (*STAGES, "all")]
    lines += ["", "`face-align-train <stage> --help` lists a stage's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    try:
        if stage == "all":
            common = argparse.ArgumentParser(prog="face-align-train all", description=STAGE_HELP["all"])
            add_common_arguments(common)
            common.parse_args(rest)  # only the common options are allowed here
            for name in STAGES:
                print(f"== face-align-train {name} {' '.join(rest)}".rstrip(), flush=True)
                rc = run_stage(name, rest)
                if rc:
                    print(f"error: stage {name} failed with status {rc}", file=sys.stderr)
                    return rc
            return 0
        if stage not in STAGE_MODULES:
            print(f"error: unknown stage {stage!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        return run_stage(stage, rest)
    except (FileNotFoundError, StageUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where the stage supports it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
