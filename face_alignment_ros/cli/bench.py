"""`face-align-bench`: per-stage timings (median, p95) at 1 and 2 threads, printed and saved.

With ``--peers`` (e.g. ``--peers all``): this project's aligners and the peers (dlib ERT,
MediaPipe FaceMesh) timed in the same run on the same images, each in its own process for its
peak RSS, threads 1 and 2, CUDA when present; speed as ratios to the peers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="face-align-bench", description=__doc__)
    p.add_argument("--image", type=Path, help="image with one face (default: the embedded demo photo)")
    p.add_argument("--descriptor", choices=("dff", "sift", "both"), default="both")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--runtimes", nargs="+", default=["auto"], choices=("auto", "onnxruntime", "torch"),
                   help="DFF network runtimes to time side by side (default: the library's choice)")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure the variants (thread counts, runtimes; with --peers the methods) in turn this "
                        "many times and keep each one's least disturbed run (a shared machine)")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--markdown", type=Path, help="write the figures as a markdown table")
    p.add_argument("--peers", default=None,
                   help="'all' or comma-separated methods (ours-dff,ours-sift,dlib-ert,mediapipe-facemesh): "
                        "compare end to end with the peers instead of the per-stage timings")
    p.add_argument("--limit", type=int, default=10, help="with --peers: held-out photos to time on")
    args = p.parse_args(argv)
    if args.peers:
        return _peers(args)

    from face_alignment_ros.cli.align import demo_image
    from face_alignment_ros.evaluation.bench_pipeline import benchmark, format_markdown

    image = demo_image() if args.image is None else cv2.imread(str(args.image))
    if image is None:
        print(f"face-align-bench: cannot read {args.image}", file=sys.stderr)
        return 2
    descriptors = ("dff", "sift") if args.descriptor == "both" else (args.descriptor,)
    results = benchmark(image, descriptors, tuple(args.threads), args.runs, args.repeats, tuple(args.runtimes))
    header = (f"face-align-bench {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"image {image.shape[1]}x{image.shape[0]}, {args.runs} runs, best of {args.repeats} blocks\n")
    text = header + "\n" + format_markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"header": header.strip(), "results": results}, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def _peers(args) -> int:
    from face_alignment_ros.evaluation.bench_peers import benchmark_methods, format_markdown
    from face_alignment_ros.evaluation.peers import available_methods

    methods = available_methods() if args.peers == "all" else args.peers.split(",")
    bench = benchmark_methods(methods, tuple(args.threads), runs=max(1, min(args.runs, 5)), limit=args.limit,
                              repeats=args.repeats)
    header = (f"face-align-bench --peers {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    text = header + "\n" + format_markdown(bench)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"header": header.strip(), **bench}, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
