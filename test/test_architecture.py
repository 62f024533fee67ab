"""The floor plan of docs/ARCHITECTURE.md, kept: import-linter's contracts (pyproject.toml) over
the package's imports, those inside functions included; and ruff's lint of the whole repository
(its rules in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_imports_keep_the_floor_plan():
    run = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_finds_nothing():
    run = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
