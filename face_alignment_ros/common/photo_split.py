"""The fixed train / held-out split of the 300-W photos, shared by training and evaluation.

A seeded 10% of each subset (AFW, HELEN train) is held out by photo *identity*: crops of the
same source photo (``NAME_1``, ``NAME_2``) stay on the same side. Training never reads the
held-out side; every accuracy figure names the split it used.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from face_alignment_ros.core import resources

SUBSETS = ("afw", "helen_train")
HELD_OUT_PERCENT = 10
SPLIT_NAME = "300w-heldout10"  # how figures name the held-out split


@dataclass(frozen=True)
class Photo:
    subset: str
    name: str
    image: Path
    pts: Path


def source_id(name: str) -> str:
    """Source photo of a crop: '1130084326_2' -> '1130084326'."""
    return name.rsplit("_", 1)[0]


def hashed_percentile(key: str) -> int:
    """A stable pseudo-random number in [0, 100) for ``key``: the same on every machine and
    Python version (a hash, not a random draw), so splits never move."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100


def is_held_out(subset: str, name: str) -> bool:
    return hashed_percentile(f"{subset}/{source_id(name)}") < HELD_OUT_PERCENT


def list_photos(split: str, data_dir: str | Path | None = None, subsets=SUBSETS) -> list[Photo]:
    """Photos of ``split`` ('train', 'heldout' or 'all'), sorted by subset and name."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, not {split!r}")
    root = Path(data_dir) if data_dir else resources.data_dir()
    if root is None or not (root / "300w").is_dir():
        raise FileNotFoundError(
            "300-W photos not found: set FACE_DATA_DIR to the folder holding 300w/ "
            "(default ../shared/data beside the repository)"
        )
    photos = []
    for subset in subsets:
        for pts in sorted((root / "300w" / subset).glob("*.pts")):
            image = pts.with_suffix(".jpg")
            if not image.exists():
                image = pts.with_suffix(".png")
            held = is_held_out(subset, pts.stem)
            if split == "all" or held == (split == "heldout"):
                photos.append(Photo(subset, pts.stem, image, pts))
    return photos
