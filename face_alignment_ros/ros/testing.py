"""Helpers for tests, the demo and benchmarks: waiting on conditions, a per-process ROS domain,
and stand-in model files (untrained DFF network, zero descent matrices of the right shapes)
for when the trained models are not shipped yet."""
from __future__ import annotations

import os
import time
from pathlib import Path


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def domain_id(offset: int) -> int:
    """A ROS domain for one test module (offset 0..3) that differs between concurrent test
    processes on the machine with high probability; within [10, 101] (valid on Linux)."""
    return 10 + (os.getpid() % 23) * 4 + offset % 4


def trained_models_available(descriptor: str = "dff") -> bool:
    from face_alignment_ros.core import resources

    need = [resources.ASSETS_DIR / resources.DESCENT_MODEL_FILES[descriptor]]
    if descriptor == "dff":
        need.append(resources.ASSETS_DIR / resources.DFF_WEIGHTS_FILE)
    return all(p.exists() for p in need)


def stand_in_descent(descriptor: str = "dff", bias_px: float = 0.0, iterations: int = 3):
    """Zero descent matrices: the cascade returns the mean face at the box (shifted right by
    ``bias_px`` crop pixels per iteration when non-zero; lets tests tell two models apart)."""
    import numpy as np

    from face_alignment_ros.core.descent_model import DescentModel
    from face_alignment_ros.core.dff_network import DFFConfig
    from face_alignment_ros.core.face_crop import BoxPrior
    from face_alignment_ros.core.morphable_model import N_DENSE, N_LANDMARKS

    cfg = DFFConfig()
    dim = cfg.descriptor_dim if descriptor == "dff" else 128
    crop = cfg.input_size
    d = N_DENSE * dim
    b_x = np.zeros((iterations, 2 * N_LANDMARKS), np.float32)
    b_x[:, 0::2] = bias_px
    return DescentModel(R_X=np.zeros((iterations, 2 * N_LANDMARKS, d), np.float32), b_X=b_x,
                        R_w=np.zeros((iterations, 6, d), np.float32), b_w=np.zeros((iterations, 6), np.float32),
                        descriptor=descriptor, descriptor_dim=dim, crop_size=crop, regularisation=10.0,
                        box_priors={"detector": BoxPrior(log_scale=0.28)}, provenance={"stand-in": True})


def write_stand_in_models(folder, bias_px: float = 0.0) -> tuple[Path, Path, str]:
    """(descent .npz, DFF weights .pt, descent sha256) of an untrained stand-in in ``folder``."""
    from face_alignment_ros.core.dff_network import DFFConfig, DFFNet, save_dff_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "dff_stand_in.pt"
    if not weights.exists():
        import torch

        torch.manual_seed(0)
        save_dff_weights(weights, DFFNet(DFFConfig()), provenance={"stand-in": "untrained, timing and plumbing only"})
    descent_path = folder / f"descent_stand_in_{bias_px:g}.npz"
    sha = stand_in_descent(bias_px=bias_px).save(descent_path)
    return descent_path, weights, sha


def model_files(folder) -> tuple[Path, Path, bool]:
    """(descent, DFF weights, trained?): the shipped models when present, else stand-ins."""
    from face_alignment_ros.core import resources

    if trained_models_available():
        return (resources.ASSETS_DIR / resources.DESCENT_MODEL_FILES["dff"],
                resources.ASSETS_DIR / resources.DFF_WEIGHTS_FILE, True)
    descent, weights, _ = write_stand_in_models(folder)
    return descent, weights, False
