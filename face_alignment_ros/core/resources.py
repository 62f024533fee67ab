"""Where the package finds its files: shipped assets, the converted 3DMM, data and work folders."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
REPO_ROOT = PACKAGE_DIR.parent

MORPHABLE_MODEL_FILE = "morphable_model.npz"
DFF_WEIGHTS_FILE = "dff_weights.pt"
DESCENT_MODEL_FILES = {"dff": "descent_dff.npz", "sift": "descent_sift.npz"}

TRAIN_HINT = (
    "Train it with `face-align-train all` (see docs/training.md), "
    "or run `make setup` on a checkout that ships the trained models."
)


def morphable_model_path() -> Path:
    """The converted 3DMM: $FACE_MORPHABLE_MODEL, else the package assets folder."""
    env = os.environ.get("FACE_MORPHABLE_MODEL")
    return Path(env) if env else ASSETS_DIR / MORPHABLE_MODEL_FILE


def data_dir() -> Path | None:
    """Shared training data: $FACE_DATA_DIR, else ../shared/data beside the repo, else None."""
    env = os.environ.get("FACE_DATA_DIR")
    if env:
        return Path(env)
    guess = REPO_ROOT.parent / "shared" / "data"
    return guess if guess.is_dir() else None


def work_dir() -> Path:
    """Training work folder, outside the repository."""
    env = os.environ.get("FACE_WORK_DIR")
    return Path(env) if env else Path.home() / ".cache" / "face_alignment_ros" / "work"


@dataclass(frozen=True)
class ShippedModels:
    """The model files the package ships for one descriptor (absent in a checkout that has not
    trained). ``dff_weights`` is None for a descriptor that needs no network (SIFT)."""

    descriptor: str
    descent: Path
    dff_weights: Path | None

    def files(self) -> list[Path]:
        return [p for p in (self.descent, self.dff_weights) if p is not None]

    def missing(self) -> list[Path]:
        return [p for p in self.files() if not p.exists()]

    def present(self) -> bool:
        return not self.missing()


def shipped_models(descriptor: str = "dff") -> ShippedModels:
    """Which model files ship for ``descriptor`` ("dff" or "sift"): the one place their paths
    are built."""
    if descriptor not in DESCENT_MODEL_FILES:
        raise ValueError(f"descriptor must be one of {sorted(DESCENT_MODEL_FILES)}, not {descriptor!r}")
    weights = ASSETS_DIR / DFF_WEIGHTS_FILE if descriptor == "dff" else None
    return ShippedModels(descriptor, ASSETS_DIR / DESCENT_MODEL_FILES[descriptor], weights)


def trained_models_present(descriptor: str = "dff") -> bool:
    """Whether the package ships the trained files this descriptor needs."""
    return shipped_models(descriptor).present()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (pairs a DFF descent model with the weights it was learned on)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
