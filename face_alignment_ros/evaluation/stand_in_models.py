"""Untrained stand-in models with the shipped models' shapes: for timing and plumbing tests only.

Zero descent matrices make the cascade return the mean face at the box. Never a default: the
shipped-model loaders refuse to run without trained files; only benchmarks (timing does not
depend on weight values) and tests use these.
"""
from __future__ import annotations

from pathlib import Path


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


def trained_or_stand_in_files(folder) -> tuple[Path, Path, bool]:
    """(descent, DFF weights, trained?): the shipped DFF model files when the package has them,
    else stand-ins written to ``folder``."""
    from face_alignment_ros.core import resources

    shipped = resources.shipped_models("dff")
    if shipped.present():
        return shipped.descent, shipped.dff_weights, True
    descent, weights, _ = write_stand_in_models(folder)
    return descent, weights, False


def stand_in_aligner(descriptor: str = "dff", detector="default", device=None):
    """A FaceAligner on stand-in models (untrained DFF network, zero descent)."""
    from face_alignment_ros.core.aligner import FaceAligner
    from face_alignment_ros.core.descriptors import DffBackend, SiftBackend
    from face_alignment_ros.core.dff_extractor import DFFExtractor
    from face_alignment_ros.core.dff_network import DFFConfig, DFFNet

    backend = (DffBackend(DFFExtractor(DFFNet(DFFConfig()), device=device)) if descriptor == "dff"
               else SiftBackend(DFFConfig().input_size))
    return FaceAligner(stand_in_descent(descriptor), backend, detector=detector)


def trained_or_stand_in_aligner(descriptor: str = "dff", detector="default", threads: int | None = None,
                                runtime: str = "auto", device=None, allow_stand_in: bool = True):
    """(aligner, trained?): the shipped models (``FaceAligner.from_default``) when the package
    has them, else stand-ins (unless ``allow_stand_in`` is False: then ModelNotTrainedError),
    under the package's thread policy for ``threads``."""
    from face_alignment_ros.core import threads as thread_policy
    from face_alignment_ros.core.aligner import FaceAligner, ModelNotTrainedError

    try:
        return FaceAligner.from_default(descriptor=descriptor, device=device, detector=detector, threads=threads,
                                        runtime=runtime), True
    except ModelNotTrainedError:
        if not allow_stand_in:
            raise
        thread_policy.apply(threads)
        return stand_in_aligner(descriptor, detector, device=device), False
