"""Descriptor back-ends of the cascade: the DFF network, or SIFT for the paper's ablation.

A back-end turns a face crop into a ``Sampler``: a function of (points, camera) in crop pixels
that returns one descriptor row per point.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import resources
from face_alignment_ros.core.cascade import Sampler
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.dff_extractor import DescriptorMap
from face_alignment_ros.core.morphable_model import ModelFileError

# SIFT keypoint size on the face, in millimetres (about 5 px on a 128 px crop; OpenCV's
# descriptor window is about 6 times the size): the keypoint size follows the face scale.
SIFT_PATCH_MM = 8.0


class DescriptorBackend(Protocol):
    kind: str
    dim: int
    crop_size: int

    def prepare(self, crop_bgr: np.ndarray) -> Sampler: ...

    def prepare_many(self, crops_bgr: list[np.ndarray]) -> list[Sampler]: ...


class DffBackend:
    """Runs the DFF network once per crop (the faces of one frame in one batch); samples
    bilinearly at sub-pixel points. ``extractor``: a ``DescriptorRunner`` (ONNX Runtime or
    torch, ``core.dff_runtime``)."""
    kind = "dff"

    def __init__(self, extractor):
        self.extractor = extractor
        self.dim = extractor.descriptor_dim
        self.crop_size = extractor.input_size

    @classmethod
    def from_file(cls, weights: str | Path, device=None, threads: int | None = None,
                  runtime: str = "auto") -> DffBackend:
        from face_alignment_ros.core.dff_runtime import load_dff_runtime

        return cls(load_dff_runtime(weights, device=device, threads=threads, runtime=runtime))

    def prepare(self, crop_bgr: np.ndarray) -> Sampler:
        return self.prepare_many([crop_bgr])[0]

    def prepare_many(self, crops_bgr: list[np.ndarray]) -> list[Sampler]:
        """The crops (N x N x 3 uint8 BGR, already warped) go straight into the network."""
        return [_map_sampler(m) for m in self.extractor.descriptor_maps(crops_bgr)]


def _map_sampler(descriptors: DescriptorMap) -> Sampler:
    return lambda points, camera: descriptors.sample(points)


class SiftBackend:
    """OpenCV SIFT at the projected points, keypoint size tied to the face scale."""
    kind = "sift"

    def __init__(self, crop_size: int, patch_mm: float = SIFT_PATCH_MM):
        from face_alignment_ros.core.sift_descriptor import SiftDescriptor

        self.sift = SiftDescriptor()
        self.dim = self.sift.dim
        self.crop_size = crop_size
        self.patch_mm = patch_mm

    def prepare(self, crop_bgr: np.ndarray) -> Sampler:
        gray = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY) if crop_bgr.ndim == 3 else crop_bgr
        return lambda points, camera: self.sift.compute(gray, points, self.patch_mm * float(camera[cam.S]))

    def prepare_many(self, crops_bgr: list[np.ndarray]) -> list[Sampler]:
        return [self.prepare(c) for c in crops_bgr]


def create_backend(descent: DescentModel, dff_weights: str | Path | None = None, device=None,
                   threads: int | None = None, runtime: str = "auto") -> DescriptorBackend:
    """The back-end a descent model was trained with. ``threads``, ``runtime``: the DFF
    network's (``core.threads``, ``core.dff_runtime.load_dff_runtime``)."""
    if descent.descriptor == "sift":
        return SiftBackend(descent.crop_size, float(descent.extra.get("sift_patch_mm", SIFT_PATCH_MM)))
    if dff_weights is None:
        raise ValueError("a DFF descent model needs the DFF weights file (dff_weights=...)")
    check_dff_pairing(descent, dff_weights)
    return DffBackend.from_file(dff_weights, device=device, threads=threads, runtime=runtime)


def check_dff_pairing(descent: DescentModel, dff_weights: str | Path) -> None:
    """A DFF descent model only fits the descriptors it was learned on: refuse other weights.
    Models that predate the recorded hash are not checked."""
    if not Path(dff_weights).is_file():
        raise ModelFileError(f"DFF weights file {str(dff_weights)!r} does not exist")
    expected = descent.extra.get("dff_weights_sha256")
    if expected and resources.file_sha256(dff_weights) != expected:
        raise ModelFileError(
            f"{dff_weights} is not the DFF network this descent model was learned on "
            f"(sha256 {expected[:12]}...); use the matching weights or re-run "
            "`face-align-train descent --descriptor dff`")
