"""`face-align`: align faces in an image, a folder of images or a video.

    face-align IMAGE|DIR|VIDEO [--json OUT] [--overlay OUT] [--descriptor dff|sift]
    face-align --demo [--out DIR]       # the embedded sample (scikit-image's astronaut photo)

Nothing is lost silently:
- the input and every output (--json, --overlay) are checked before any work starts;
- in a folder, every unreadable image (corrupt, truncated, not an image) is named on stderr;
- overlays of a folder keep the input's full name, ``a.jpg`` -> ``a.jpg.overlay.png``, so
  ``a.jpg`` and ``a.png`` do not overwrite each other;
- a video that yields fewer frames than its container declares (truncated) gets a warning.

Exit status: 0 all inputs aligned; 1 some inputs unreadable or a video incomplete (the
results of the others are written); 2 nothing done (bad input path, unwritable output,
unreadable image, missing or bad model).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.samples import demo_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
OVERLAY_SUFFIX = ".overlay.png"  # appended to the input's full name in a folder's overlays
EXIT_OK, EXIT_INCOMPLETE, EXIT_NOTHING_DONE = 0, 1, 2


class InputError(ValueError):
    """An input that cannot be read whole."""


class OutputError(ValueError):
    """An output that cannot be written."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="face-align", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path, help="image, folder of images, or video")
    p.add_argument("--demo", action="store_true", help="run on the embedded sample photo")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder for --demo")
    p.add_argument("--json", type=Path, help="write results as JSON (a file; for a folder/video one file)")
    p.add_argument("--overlay", type=Path,
                   help="overlay output: a PNG for an image, a folder for a folder "
                        f"(NAME{OVERLAY_SUFFIX} per image), a video file for a video")
    p.add_argument("--descriptor", choices=("dff", "sift"), default="dff")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when present, else CPU)")
    p.add_argument("--flip-average", action="store_true",
                   help="also align each face's mirrored crop and average the landmarks: more accurate, "
                        "about twice the alignment time (docs/training.md, round 9)")
    p.add_argument("--second-pass", action="store_true",
                   help="align every detected face a second time from its own landmark box: more accurate "
                        "from the detector, about twice the alignment time (docs/training.md, round 13)")
    p.add_argument("--redetect-every", type=int, default=10, help="video: detector period in frames")
    return p


# --- inputs -------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """The BGR image in ``path``; ``InputError`` saying why when it is unreadable or not whole.

    Decoded from memory on purpose: ``cv2.imread`` pads a truncated JPEG with grey rows and
    only prints a libjpeg warning, while OpenCV's in-memory decoders refuse a file that ends
    early (JPEG, PNG, WebP, TIFF, BMP alike)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise InputError(f"{path}: not a readable image (corrupt, truncated or another format)")
    return image


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: cannot open the video (corrupt, truncated or an unknown codec)")
    return cap


# --- outputs ------------------------------------------------------------------------------
def _check_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and write a scratch file in it, so an unwritable destination is found
    before any work (a path under a regular file, a read-only file system, permissions)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"cannot write the {what} in {folder}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write the {what} in {folder}: {exc.strerror or exc}") from exc


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise OutputError(f"the {what} {path} is a folder; give a file name")
    _check_folder(path.parent, what)


def _check_image_file(path: Path, what: str) -> None:
    _check_file(path, what)
    if not cv2.haveImageWriter(str(path)):
        raise OutputError(f"the {what} {path}: OpenCV cannot write images of type {path.suffix!r}; use .png")


def _write_image(path: Path, image: np.ndarray) -> None:
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    if not ok:
        raise OutputError(f"cannot write {path}")


def _write_json(path: Path, result) -> None:
    try:
        path.write_text(json.dumps(result, indent=1))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def overlay_name(image_path: Path) -> str:
    """A folder's overlay file name: the input's full name kept, so a.jpg and a.png differ."""
    return image_path.name + OVERLAY_SUFFIX


# --- work ---------------------------------------------------------------------------------
def _frame_record(faces) -> list[dict]:
    return [f.to_dict() for f in faces]


def run_image(aligner, image: np.ndarray, overlay: Path | None):
    from face_alignment_ros.core.overlay import draw_faces

    start = time.perf_counter()
    faces = aligner.detect_and_align(image)
    elapsed = time.perf_counter() - start
    if overlay:
        _write_image(overlay, draw_faces(image, faces))
    return faces, elapsed


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) of a folder, sorted; sub-folders are not entered."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def run_folder(aligner, files: list[Path], overlay_dir: Path | None) -> tuple[dict, list[str]]:
    """Results per file name ({"error": why} for a failed one) and the failures' messages."""
    results, failures = {}, []
    for path in tqdm(files, desc="images", unit="img"):
        try:
            image = read_image(path)
            faces, _ = run_image(aligner, image, overlay_dir / overlay_name(path) if overlay_dir else None)
        except (InputError, OutputError) as exc:
            results[path.name] = {"error": str(exc)}
            failures.append(str(exc))
            tqdm.write(f"face-align: {exc}", file=sys.stderr)
            continue
        results[path.name] = _frame_record(faces)
    return results, failures


def run_video(aligner, cap: cv2.VideoCapture, writer: cv2.VideoWriter | None, redetect_every: int,
              total: int | None = None) -> list:
    """Track faces through every frame ``cap`` yields; overlays to ``writer`` when given.
    ``total``: the container's frame count, for the progress bar."""
    from face_alignment_ros.core.overlay import draw_faces
    from face_alignment_ros.core.tracker import FaceTracker

    tracker = FaceTracker(aligner, redetect_every=redetect_every)
    frames = []
    with tqdm(total=total, desc="frames", unit="frame") as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            tracks = tracker.process(frame)
            frames.append([dict(t.face.to_dict(), face_id=t.face_id) for t in tracks])
            if writer is not None:
                writer.write(draw_faces(frame, [t.face for t in tracks]))
            bar.update(1)
    return frames


def _declared_frames(cap: cv2.VideoCapture) -> int | None:
    """The container's frame count; None where it does not say (streams, some formats)."""
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return count if count > 0 else None


def _open_video_writer(path: Path, cap: cv2.VideoCapture) -> cv2.VideoWriter:
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OutputError(f"cannot write the overlay video {path} (use .mp4)")
    return writer


def _fail(message: str) -> int:
    print(f"face-align: {message}", file=sys.stderr)
    return EXIT_NOTHING_DONE


def _load_aligner(args):
    from face_alignment_ros.core.aligner import FaceAligner

    return FaceAligner.from_default(descriptor=args.descriptor, device=args.device, flip_average=args.flip_average,
                                    second_pass=args.second_pass)


class _Job:
    """One run of the command, its input opened and its outputs checked before any work."""

    def __init__(self, args):
        self.args = args
        self.cap: cv2.VideoCapture | None = None
        self.writer: cv2.VideoWriter | None = None

    def run(self, aligner) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
        if self.writer is not None:
            self.writer.release()


class _DemoJob(_Job):
    def __init__(self, args):
        super().__init__(args)
        _check_folder(args.out, "demo output")
        self.overlay = args.overlay or args.out / "astronaut_overlay.png"
        self.json_path = args.json or args.out / "astronaut.json"
        _check_image_file(self.overlay, "overlay")
        _check_file(self.json_path, "JSON output")

    def run(self, aligner) -> int:
        faces, elapsed = run_image(aligner, demo_image(), self.overlay)
        for i, f in enumerate(faces):
            pitch, yaw, roll = (np.degrees(a) for a in f.camera[1:4])
            print(f"face {i}: score {f.score:.2f} confidence {f.confidence:.2f} "
                  f"yaw {yaw:+.1f} pitch {pitch:+.1f} roll {roll:+.1f} deg, {int(f.visible.sum())}/68 visible")
        _write_json(self.json_path, {"input": "skimage.data.astronaut()", "faces": _frame_record(faces),
                                     "seconds": elapsed})
        print(f"{len(faces)} face(s) in {elapsed * 1000:.0f} ms; overlay {self.overlay}; json {self.json_path}")
        return EXIT_OK


class _FolderJob(_Job):
    def __init__(self, args):
        super().__init__(args)
        if args.overlay:
            if args.overlay.exists() and not args.overlay.is_dir():
                raise OutputError(f"the overlay folder {args.overlay} is a file; give a folder for a folder input")
            _check_folder(args.overlay, "overlays")
        self.files, others = image_files(args.input)
        if others:
            print(f"face-align: ignoring {len(others)} file(s) without an image suffix in {args.input}",
                  file=sys.stderr)

    def run(self, aligner) -> int:
        result, failures = run_folder(aligner, self.files, self.args.overlay)
        if self.args.json:
            _write_json(self.args.json, result)
        aligned = len(self.files) - len(failures)
        print(f"{aligned} of {len(self.files)} images aligned")
        if failures:
            print(f"face-align: {len(failures)} image(s) could not be read or written:", file=sys.stderr)
            for message in failures:
                print(f"  {message}", file=sys.stderr)
            return EXIT_INCOMPLETE
        return EXIT_OK


class _VideoJob(_Job):
    def __init__(self, args):
        super().__init__(args)
        if args.overlay:
            _check_file(args.overlay, "overlay video")
        self.cap = _open_video(args.input)
        self.declared = _declared_frames(self.cap)
        if args.overlay:
            try:
                self.writer = _open_video_writer(args.overlay, self.cap)
            except OutputError:
                self.close()
                raise

    def run(self, aligner) -> int:
        frames = run_video(aligner, self.cap, self.writer, self.args.redetect_every, self.declared)
        if self.args.json:
            _write_json(self.args.json, frames)
        declared = self.declared
        if declared is not None and len(frames) < declared:
            print(f"{len(frames)} of {declared} frames aligned")
            print(f"face-align: warning: {self.args.input} yielded {len(frames)} of the {declared} frames "
                  "its container declares; the file is probably truncated or damaged", file=sys.stderr)
            return EXIT_INCOMPLETE
        print(f"{len(frames)} frames aligned")
        return EXIT_OK


class _ImageJob(_Job):
    def __init__(self, args):
        super().__init__(args)
        if args.overlay:
            _check_image_file(args.overlay, "overlay")
        self.image = read_image(args.input)

    def run(self, aligner) -> int:
        faces, elapsed = run_image(aligner, self.image, self.args.overlay)
        result = {"input": str(self.args.input), "faces": _frame_record(faces), "seconds": elapsed}
        if self.args.json:
            _write_json(self.args.json, result)
            print(f"{len(faces)} face(s) in {elapsed * 1000:.0f} ms")
        else:
            print(json.dumps(result))
        return EXIT_OK


def _prepare(args) -> _Job:
    """Check the input and every output; raises InputError or OutputError before any work."""
    if args.demo:
        return _DemoJob(args)
    if not args.input.exists():
        raise InputError(f"{args.input}: no such file or folder")
    if args.json:
        _check_file(args.json, "JSON output")
    if args.input.is_dir():
        return _FolderJob(args)
    if args.input.suffix.lower() in VIDEO_SUFFIXES:
        return _VideoJob(args)
    return _ImageJob(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.demo and args.input is None:
        _parser().error("give an input (image, folder or video) or --demo")
    from face_alignment_ros.core.aligner import ModelNotTrainedError
    from face_alignment_ros.core.morphable_model import ModelFileError

    try:
        job = _prepare(args)
    except (InputError, OutputError) as exc:
        return _fail(str(exc))
    try:
        aligner = _load_aligner(args)
    except (ModelNotTrainedError, ModelFileError) as exc:
        job.close()
        return _fail(str(exc))
    try:
        return job.run(aligner)
    except OutputError as exc:
        return _fail(str(exc))
    finally:
        job.close()


if __name__ == "__main__":
    sys.exit(main())
