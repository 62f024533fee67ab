"""The format the training stages hand on: stage folders, file names, the synthesized-sample
arrays, the background vertex id and the yaw bins.

Producers (``training.fit_photos``, ``training.synthesize``, ``training.photo_views``,
``training.profile_views``,
``training.segmentation``) and consumers (``training.train_dff``, ``training.learn_descent``,
``training.export_models``, ``evaluation.datasets``, ``evaluation.matching``) all read the names
from here, so that one cannot drift from the other.

Yaw bins: |yaw| in [0, 30], (30, 60], (60, 90] degrees, closed above (so exactly 30 degrees is
in bin 0, as the names "[0,30]" say), the bins of the paper's Tables I-II.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from face_alignment_ros.core import resources

# Stage folders and their files.
FIT_STAGE = "fit"
SYNTHESIZE_STAGE = "synthesize"
PROFILE_STAGE = "profile"                # profiled photos (training.profile_views), same layout as synthesize
SEGMENT_STAGE = "segment"
TRAIN_DFF_STAGE = "train-dff"            # writes resources.DFF_WEIGHTS_FILE
DESCENT_STAGE = "descent"                # writes resources.DESCENT_MODEL_FILES and their float32 twins
FITS_FILE = "fits.npz"                    # fit: one row per fitted photo
SEGMENTATIONS_FILE = "segmentations.npz"  # segment: random segmentations of the mean face
SYNTH_PROGRESS_FILE = "progress.json"     # synthesize, profile: config and identities done per split
PHOTO_VIEWS_FILE = "photo_views.json"     # synthesize: config and counts of the photo views
SPLITS = ("train", "heldout")
PHOTO_SPLITS = {"photo_train": "train", "photo_heldout": "heldout"}  # photo views: their photos' split

# vertex_ids of a pixel that no face covers
BACKGROUND_ID = 65535

YAW_BINS_DEG = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))
YAW_BIN_NAMES = ("[0,30]", "[30,60]", "[60,90]")


def yaw_bin(yaw_deg: float | None) -> int:
    """0, 1, 2 for |yaw| in [0,30], (30,60], (60,90]; -1 when unknown or beyond 90."""
    if yaw_deg is None or not np.isfinite(yaw_deg):
        return -1
    a = abs(float(yaw_deg))
    for i, (_, hi) in enumerate(YAW_BINS_DEG):
        if a <= hi:
            return i
    return -1


def output_specs(size: int) -> dict:
    """Per-sample (shape, dtype) of each array of a synthesized split, for N = ``size``."""
    return {
        "images": ((size, size, 3), np.uint8), "vertex_ids": ((size, size), np.uint16),
        "camera": ((6,), np.float32), "shape": ((50,), np.float32),
        "landmarks": ((68, 2), np.float32), "landmark_ids": ((68,), np.int32),
        "landmark_visible": ((68,), bool), "dense": ((160, 2), np.float32),
        "dense_visible": ((160,), bool), "identity": ((), np.int32), "view": ((), np.int16),
        "yaw_bin": ((), np.int8),
    }


def descent_float32_file(descriptor: str) -> str:
    """The float32 twin the descent stage writes beside each (float16) descent model."""
    return f"descent_{descriptor}_float32.npz"


def split_file_name(split: str, key: str) -> str:
    """The ``.npy`` file name of array ``key`` of ``split`` in the synthesize folder."""
    return f"{split}_{key}.npy"


def split_file(folder: Path, split: str, key: str) -> Path:
    """The ``.npy`` file of array ``key`` of ``split`` in a synthesize folder."""
    return Path(folder) / split_file_name(split, key)


def start_or_resume(stage, config: dict, totals: dict[str, int], size: int, restart: bool):
    """Memory maps per split for a stage that writes renders (``training.stage_io.Stage``), and
    how many sources per split are done: resumed when the stage's progress file was written with
    ``config``, started afresh (earlier outputs deleted) when there is none or ``restart``.
    Returns ``(done, outputs)``, or None after logging why when the outputs were made with other
    settings."""
    progress = stage.path(SYNTH_PROGRESS_FILE)
    done = {s: 0 for s in totals}
    fresh = restart or not progress.exists()
    if fresh:
        for p in list(stage.dir.glob("*.npy")) + [progress, stage.path("metrics.jsonl")]:
            p.unlink(missing_ok=True)
    else:
        prev = json.loads(progress.read_text())
        if prev.get("config") != config:
            stage.log.error("outputs in %s were made with other settings (%s); rerun with --restart to discard them",
                            stage.dir, prev.get("config"))
            return None
        done = prev["done"]
    outputs = {s: open_outputs(stage.dir, s, n, size, "w+" if fresh else "r+") for s, n in totals.items()}
    if fresh:
        stage.save_json(SYNTH_PROGRESS_FILE, {"config": config, "done": done})
    return done, outputs


def save_progress(stage, outputs: dict, config: dict, done: dict) -> None:
    """Checkpoint of ``start_or_resume``'s outputs: the memory maps flushed, then the progress."""
    for arrays in outputs.values():
        for arr in arrays.values():
            arr.flush()
    stage.save_json(SYNTH_PROGRESS_FILE, {"config": config, "done": done})


def open_outputs(folder: Path, split: str, n: int, size: int, mode: str) -> dict:
    """Memory maps of a split for writing: new (``mode="w+"``) or resumed (``"r+"``)."""
    out = {}
    for key, (shape, dtype) in output_specs(size).items():
        path = split_file(folder, split, key)
        if mode == "w+":
            out[key] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape))
        else:
            out[key] = np.load(path, mmap_mode="r+")
            if out[key].shape != (n, *shape):
                raise ValueError(f"{path} has shape {out[key].shape}, expected {(n, *shape)}: rerun with --restart")
    return out


def load_outputs(work_dir: str | Path | None = None, split: str = "train", stage: str = SYNTHESIZE_STAGE) -> dict:
    """Read-only memory maps of a split's samples, keyed as in ``output_specs``, from the
    folder of ``stage`` (``synthesize`` renders or ``profile`` views)."""
    folder = (Path(work_dir) if work_dir else resources.work_dir()) / stage
    return {key: np.load(split_file(folder, split, key), mmap_mode="r") for key in output_specs(1)}
