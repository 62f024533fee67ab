"""`face-align`: align faces in an image, a folder of images or a video.

    face-align IMAGE|DIR|VIDEO [--json OUT] [--overlay OUT] [--descriptor dff|sift]
    face-align --demo [--out DIR]       # the embedded sample (scikit-image's astronaut photo)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def demo_image() -> np.ndarray:
    """The embedded default input: a public-domain portrait shipped with scikit-image."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="face-align", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path, help="image, folder of images, or video")
    p.add_argument("--demo", action="store_true", help="run on the embedded sample photo")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder for --demo")
    p.add_argument("--json", type=Path, help="write results as JSON (a file; for a folder/video one file)")
    p.add_argument("--overlay", type=Path,
                   help="overlay output: a PNG for an image, a folder for a folder, a video file for a video")
    p.add_argument("--descriptor", choices=("dff", "sift"), default="dff")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when present, else CPU)")
    p.add_argument("--redetect-every", type=int, default=10, help="video: detector period in frames")
    return p


def _frame_record(faces) -> list[dict]:
    return [f.to_dict() for f in faces]


def run_image(aligner, image: np.ndarray, overlay: Path | None):
    from face_alignment_ros.core.overlay import draw_faces

    start = time.perf_counter()
    faces = aligner.detect_and_align(image)
    elapsed = time.perf_counter() - start
    if overlay:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(overlay), draw_faces(image, faces))
    return faces, elapsed


def run_folder(aligner, folder: Path, overlay_dir: Path | None) -> dict:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    results = {}
    for path in tqdm(files, desc="images", unit="img"):
        image = cv2.imread(str(path))
        if image is None:
            results[path.name] = {"error": "unreadable image"}
            continue
        faces, _ = run_image(aligner, image, overlay_dir / f"{path.stem}.png" if overlay_dir else None)
        results[path.name] = _frame_record(faces)
    return results


def run_video(aligner, path: Path, overlay: Path | None, redetect_every: int) -> list:
    from face_alignment_ros.core.overlay import draw_faces
    from face_alignment_ros.core.tracker import FaceTracker

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    tracker = FaceTracker(aligner, redetect_every=redetect_every)
    writer, frames = None, []
    with tqdm(total=total, desc="frames", unit="frame") as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            tracks = tracker.process(frame)
            frames.append([dict(t.face.to_dict(), face_id=t.face_id) for t in tracks])
            if overlay:
                if writer is None:
                    overlay.parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(str(overlay), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (frame.shape[1], frame.shape[0]))
                writer.write(draw_faces(frame, [t.face for t in tracks]))
            bar.update(1)
    cap.release()
    if writer is not None:
        writer.release()
    return frames


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.demo and args.input is None:
        _parser().error("give an input (image, folder or video) or --demo")
    from face_alignment_ros.core.aligner import FaceAligner, ModelNotTrainedError
    from face_alignment_ros.core.morphable_model import ModelFileError

    try:
        aligner = FaceAligner.from_default(descriptor=args.descriptor, device=args.device)
    except (ModelNotTrainedError, ModelFileError) as exc:
        print(f"face-align: {exc}", file=sys.stderr)
        return 2

    if args.demo:
        args.out.mkdir(parents=True, exist_ok=True)
        overlay = args.overlay or args.out / "astronaut_overlay.png"
        json_path = args.json or args.out / "astronaut.json"
        faces, elapsed = run_image(aligner, demo_image(), overlay)
        result = {"input": "skimage.data.astronaut()", "faces": _frame_record(faces), "seconds": elapsed}
        for i, f in enumerate(faces):
            pitch, yaw, roll = (np.degrees(a) for a in f.camera[1:4])
            print(f"face {i}: score {f.score:.2f} confidence {f.confidence:.2f} "
                  f"yaw {yaw:+.1f} pitch {pitch:+.1f} roll {roll:+.1f} deg, {int(f.visible.sum())}/68 visible")
        print(f"{len(faces)} face(s) in {elapsed * 1000:.0f} ms; overlay {overlay}; json {json_path}")
    elif args.input.is_dir():
        result = run_folder(aligner, args.input, args.overlay)
        json_path = args.json
        print(f"{len(result)} images aligned")
    elif args.input.suffix.lower() in VIDEO_SUFFIXES:
        result = run_video(aligner, args.input, args.overlay, args.redetect_every)
        json_path = args.json
        print(f"{len(result)} frames aligned")
    else:
        image = cv2.imread(str(args.input))
        if image is None:
            print(f"face-align: cannot read image {args.input}", file=sys.stderr)
            return 2
        faces, elapsed = run_image(aligner, image, args.overlay)
        result = {"input": str(args.input), "faces": _frame_record(faces), "seconds": elapsed}
        json_path = args.json
        print(json.dumps(result) if json_path is None else f"{len(faces)} face(s) in {elapsed * 1000:.0f} ms")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
