"""`face-align-bench`: per-stage timings (median, p95) at 1 and 2 threads, printed and saved."""
from __future__ import annotations

import argparse
import json
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
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--markdown", type=Path, help="write the figures as a markdown table")
    args = p.parse_args(argv)

    from face_alignment_ros.cli.align import demo_image
    from face_alignment_ros.evaluation.bench_pipeline import benchmark, format_markdown

    image = demo_image() if args.image is None else cv2.imread(str(args.image))
    if image is None:
        print(f"face-align-bench: cannot read {args.image}", file=sys.stderr)
        return 2
    descriptors = ("dff", "sift") if args.descriptor == "both" else (args.descriptor,)
    results = benchmark(image, descriptors, tuple(args.threads), args.runs)
    header = (f"face-align-bench {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"image {image.shape[1]}x{image.shape[0]}, {args.runs} runs\n")
    text = header + "\n" + format_markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"header": header.strip(), "results": results}, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
