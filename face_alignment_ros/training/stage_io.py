"""What every training stage shares: its work folder, seeded RNG, log, checkpoints and curve plots.

Layout: ``<work>/<stage>/`` holds ``log.txt``, ``metrics.jsonl`` (one JSON object per logged
step), ``checkpoint.pt`` or stage-specific checkpoint files, ``curves.png`` and the outputs.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np

from face_alignment_ros.core import resources

STAGES = ("fit", "synthesize", "profile", "segment", "train-dff", "box-prior", "descent", "export")
COMMANDS_FILE = "commands.txt"


class Stage:
    """A training stage's folder and bookkeeping. ``Stage("fit").path("fits.npz")``."""

    def __init__(self, name: str, work_dir: str | Path | None = None, seed: int = 0):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
        self.name = name
        self.seed = seed
        self.root = Path(work_dir) if work_dir else resources.work_dir()
        self.dir = self.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger(f"face_alignment_ros.train.{name}")
        log_file = str((self.dir / "log.txt").resolve())
        if not any(getattr(h, "baseFilename", None) == log_file for h in self.log.handlers):
            for handler in list(self.log.handlers):  # another work folder in the same process
                self.log.removeHandler(handler)
                handler.close()
            self.log.setLevel(logging.INFO)
            fmt = logging.Formatter("%(asctime)s %(name)s %(message)s")
            for handler in (logging.FileHandler(self.dir / "log.txt"), logging.StreamHandler()):
                handler.setFormatter(fmt)
                self.log.addHandler(handler)
        self._started = time.perf_counter()

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def input(self, stage: str, filename: str) -> Path:
        """An output of an earlier stage; a clear error names the command that makes it."""
        path = self.root / stage / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `face-align-train {stage}` first")
        return path

    def rng(self, offset: int = 0) -> np.random.Generator:
        """Seeded generator; also seeds python's and torch's global generators."""
        random.seed(self.seed + offset)
        try:
            import torch

            torch.manual_seed(self.seed + offset)
        except ImportError:
            pass
        return np.random.default_rng(self.seed + offset)

    def record(self, **metrics) -> None:
        """Append one step's metrics to metrics.jsonl."""
        metrics = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in metrics.items()}
        metrics.setdefault("elapsed_s", round(time.perf_counter() - self._started, 2))
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def plot_curves(self, x: str, ys: list[str], filename: str = "curves.png", title: str | None = None) -> Path:
        """Plot metrics ``ys`` against ``x`` from metrics.jsonl into a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.metrics()
        fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], ys):
            pts = [(r[x], r[key]) for r in rows if x in r and key in r]
            if pts:
                ax.plot(*zip(*pts))
            ax.set_xlabel(x)
            ax.set_title(key)
            ax.grid(alpha=0.3)
        fig.suptitle(title or f"face-align-train {self.name}")
        fig.tight_layout()
        out = self.dir / filename
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def save_json(self, filename: str, obj) -> Path:
        out = self.dir / filename
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, out)  # atomic: an interrupted run never leaves half a file
        return out

    def record_command(self, command: str) -> None:
        """Append the command that ran this stage to commands.txt: the model cards list them."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with open(self.dir / COMMANDS_FILE, "a") as f:
            f.write(f"{stamp} UTC  {command}\n")

    def commands(self) -> list[str]:
        path = self.dir / COMMANDS_FILE
        return path.read_text().splitlines() if path.exists() else []

    def elapsed(self) -> float:
        return time.perf_counter() - self._started
