"""`face-align-eval`: landmark accuracy of this project's aligners and peers, side by side.

    face-align-eval [--data SPEC ...] [--methods ours-dff,ours-sift,dlib-ert,mediapipe-facemesh]
                    [--protocols given_box,detector] [--limit N] [--out DIR]
    face-align-eval --benchmarks-md BENCHMARKS.md [--quick]   # regenerate BENCHMARKS.md + plots

SPEC: ``300w-heldout`` (the held-out split of the shared 300-W photos), ``synthetic-heldout``
(large-pose renders of held-out identities; --limit counts per yaw bin), ``profiled-heldout``
(the held-out photos turned to large yaw, stage ``profile``; --limit per yaw bin) or a folder in 300-W
(.jpg/.png + .pts) or AFLW2000-3D (.jpg + .mat) layout. Default: the first two.
Where the data gives the pose and the fixed model landmarks (AFLW2000-3D folders, renders), the
tables add the 3D-convention box NME (``landmarks_3d``) and head-pose errors by yaw bin.
Writes results.json, per_image.csv and CED / NME-vs-yaw PNGs to --out; prints the tables.
"""
from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="face-align-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", help="data set spec (repeatable)")
    p.add_argument("--methods", default=None, help="comma-separated (default: every available one)")
    p.add_argument("--protocols", default="given_box,detector")
    p.add_argument("--limit", type=int, default=0, help="images per data set (per yaw bin for synthetic); 0: all")
    p.add_argument("--out", type=Path, default=Path("out/eval"))
    p.add_argument("--threads", type=int, default=0,
                   help="network threads of our aligners under the thread policy (0: its default)")
    p.add_argument("--no-stand-in", action="store_true", help="fail instead of using untrained stand-in models")
    p.add_argument("--no-pose-refinement", action="store_true",
                   help="our aligners keep the cascade's camera (FaceAligner(refine_pose=False))")
    p.add_argument("--flip-average", action="store_true",
                   help="our aligners also align the mirrored crop and average (FaceAligner(flip_average=True))")
    p.add_argument("--second-pass", action="store_true",
                   help="our aligners align every detected face again from its landmark box "
                        "(FaceAligner(second_pass=True))")
    p.add_argument("--detector", default=None,
                   help="our aligners detect with this detector in the detector protocol (one of "
                        "face_detector.available_detectors(): blazeface, cascade, dlib, ...; default: the shipped one)")
    p.add_argument("--descent", type=Path, default=None,
                   help="ours-dff / ours-sift: this descent model file instead of the shipped one (a candidate)")
    p.add_argument("--benchmarks-md", type=Path, help="run everything and write this BENCHMARKS.md")
    p.add_argument("--quick", action="store_true", help="with --benchmarks-md: small counts (a smoke run)")
    args = p.parse_args(argv)

    if args.benchmarks_md:
        from face_alignment_ros.evaluation.report import generate

        generate(args.benchmarks_md, quick=args.quick, allow_stand_in=not args.no_stand_in)
        return 0

    from face_alignment_ros.evaluation.datasets import open_dataset
    from face_alignment_ros.evaluation.evaluate import PROTOCOLS, evaluate, format_tables, write_outputs
    from face_alignment_ros.evaluation.peers import OursMethod, available_methods, create_method

    if args.detector is not None:
        from face_alignment_ros.core.face_detector import available_detectors

        if args.detector not in available_detectors():
            p.error(f"unknown detector {args.detector!r}; choose from {available_detectors()}")
    names = args.methods.split(",") if args.methods else available_methods()
    protocols = tuple(args.protocols.split(","))
    bad = [x for x in protocols if x not in PROTOCOLS]
    if bad:
        p.error(f"unknown protocol(s) {bad}; choose from {PROTOCOLS}")
    def ours(descriptor: str):
        aligner = None
        if args.descent is not None:
            from face_alignment_ros.core.aligner import FaceAligner
            from face_alignment_ros.core.resources import shipped_models

            aligner = FaceAligner.from_files(args.descent, shipped_models(descriptor).dff_weights)
        method = OursMethod(descriptor, aligner=aligner, allow_stand_in=not args.no_stand_in,
                            refine_pose=not args.no_pose_refinement, flip_average=args.flip_average,
                            second_pass=args.second_pass, detector=args.detector)
        if args.descent is not None:
            method.label += f" [{args.descent.name}]"
        return method

    methods = [ours(n.split("-", 1)[1]) if n.startswith("ours-") else create_method(n) for n in names]
    for m in methods:
        if args.threads:
            m.set_threads(args.threads)
        if not m.trained:
            print(f"face-align-eval: {m.label}: no trained model shipped, figures are meaningless", file=sys.stderr)
    results = []
    for spec in args.data or ["300w-heldout", "synthetic-heldout"]:
        try:
            dataset = open_dataset(spec, args.limit or None)
        except FileNotFoundError as exc:
            print(f"face-align-eval: skipping {spec}: {exc}", file=sys.stderr)
            continue
        res = evaluate(dataset, methods, protocols)
        results.append(res)
        print(format_tables(res))
    if not results:
        print("face-align-eval: no data set could be read", file=sys.stderr)
        return 2
    meta = {"command": " ".join(["face-align-eval", *(argv if argv is not None else sys.argv[1:])]),
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": platform.platform()}
    files = write_outputs(results, args.out, meta)
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
