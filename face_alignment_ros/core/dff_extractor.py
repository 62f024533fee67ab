"""Crop a face, run the DFF network once, sample descriptors at sub-pixel points.

Crop convention: the square box (x0, y0, x1, y1) in image pixels (pixel centres at integer
coordinates) maps affinely onto the N x N crop so that image point (x0, y0) lands on crop pixel
centre (0, 0) and (x1, y1) on (N, N), i.e. scale N / (x1 - x0): the crop covers [x0, x1) with
N samples. Pixels outside the image are filled with ``BORDER_REPLICATE`` (edge pixels
repeated): a constant fill would put a hard artificial edge into faces near the image border,
which a convolutional descriptor would react to; replicated borders look like smooth
background. Resampling is bilinear (``INTER_AREA`` is not available for warps); for strong
down-scaling (box more than twice the crop) the image is first pyramided down with
``cv2.pyrDown`` to avoid aliasing.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported only by the torch runtime (the ONNX path never needs it)
    import torch

    from face_alignment_ros.core.dff_network import DFFConfig, DFFNet


def crop_affine(crop_box, size: int) -> np.ndarray:
    """2x3 affine image -> crop for a square ``crop_box`` resampled to ``size`` x ``size``."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"crop box {crop_box} is empty")
    sx, sy = size / w, size / h  # equal for a square box; kept apart so a near-square box works
    return np.array([[sx, 0.0, -sx * x0], [0.0, sy, -sy * y0]], dtype=np.float64)


def apply_affine(affine: np.ndarray, points) -> np.ndarray:
    """(n, 2) points through a 2x3 affine."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"expected a gray, BGR or BGRA image, got shape {image.shape}")


def crop_image(image: np.ndarray, crop_box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 BGR crop and the 2x3 affine image -> crop (see module doc)."""
    image = _to_bgr(np.asarray(image))
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    affine = crop_affine(crop_box, size)
    src, a = image, affine.copy()
    # Anti-aliasing: halve the source while the crop is still > 2x smaller than the box.
    while a[0, 0] < 0.5 and min(src.shape[:2]) >= 4:
        src = cv2.pyrDown(src)
        # pyrDown maps source pixel centre 2i to i (centres at integers).
        a[:, :2] *= 2.0
    crop = cv2.warpAffine(src, a, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, affine


@dataclass
class DescriptorMap:
    """Full-resolution descriptors of one crop.

    ``data``: (D, N, N) float32, unit vectors along axis 0 (from the extractor a view whose
    memory is (N, N, D)). ``affine``: 2x3 image -> crop.
    """

    data: np.ndarray
    affine: np.ndarray

    def __post_init__(self):
        # (N, N, D) layout for the sampler: the 4 neighbours of a point are then 4 contiguous
        # rows of D floats. No copy when ``data`` is a transposed view of such an array.
        self._hwd = np.ascontiguousarray(self.data.transpose(1, 2, 0))

    @property
    def size(self) -> int:
        return self.data.shape[1]

    def sample(self, points_crop) -> np.ndarray:
        """(n, D) bilinear samples at (n, 2) crop-pixel points (x, y); zero rows for points
        outside [0, N-1] x [0, N-1] (or non-finite). Rows are not renormalised: blends of
        unit vectors are slightly shorter, as in the paper's interpolation."""
        return bilinear_sample(self._hwd, points_crop)

    def sample_image(self, points_image) -> np.ndarray:
        """Like ``sample`` for points given in image pixels."""
        return self.sample(apply_affine(self.affine, points_image))


def bilinear_sample(hwd: np.ndarray, points) -> np.ndarray:
    """Bilinear interpolation of an (H, W, D) array at (n, 2) points (x, y); zero outside."""
    h, w, d = hwd.shape
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)  # False for NaN too
    x = np.where(inside, x, 0.0)
    y = np.where(inside, y, 0.0)
    x0 = np.minimum(x.astype(np.intp), w - 2) if w > 1 else np.zeros_like(x, np.intp)
    y0 = np.minimum(y.astype(np.intp), h - 2) if h > 1 else np.zeros_like(y, np.intp)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    flat = hwd.reshape(h * w, d)
    i00 = y0 * w + x0
    dx = 1 if w > 1 else 0
    dy = w if h > 1 else 0
    top = flat[i00] * (1 - fx) + flat[i00 + dx] * fx
    bot = flat[i00 + dy] * (1 - fx) + flat[i00 + dy + dx] * fx
    out = top * (1 - fy) + bot * fy
    out[~inside] = 0.0
    return out


class DescriptorRunner:
    """A DFF runtime: uint8 BGR crops in, unit descriptor maps out. Subclasses implement
    ``run_crops``; the rest is shared (torch: ``DFFExtractor``; ONNX Runtime:
    ``core.dff_runtime.OnnxDffRuntime``)."""

    runtime = "abstract"
    input_size: int
    descriptor_dim: int

    def run_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(B, N, N, 3) uint8 BGR crops -> (B, N, N, D) float32 unit descriptors, C-contiguous
        (the sampler's layout)."""
        raise NotImplementedError

    def descriptor_maps(self, image_bgr: np.ndarray, crop_boxes) -> list[DescriptorMap]:
        """Several faces of one image in one forward pass."""
        crops = [crop_image(image_bgr, b, self.input_size) for b in crop_boxes]
        if not crops:
            return []
        y = self.run_crops(np.stack([c[0] for c in crops]))
        return [DescriptorMap(y[i].transpose(2, 0, 1), crops[i][1]) for i in range(len(crops))]

    def descriptor_map(self, image_bgr: np.ndarray, crop_box) -> DescriptorMap:
        """Run the network once on the crop of ``crop_box``: (D, N, N) map plus affine."""
        return self.descriptor_maps(image_bgr, [crop_box])[0]


class DFFExtractor(DescriptorRunner):
    """Runs a ``DFFNet`` on face crops with torch. The model is switched to eval mode with BN
    folded (and channels-last on CPU, measurably faster there; see docs/dff_network.md)."""

    runtime = "torch"

    def __init__(self, model: "DFFNet", config: "DFFConfig | None" = None, device=None):
        import torch

        from face_alignment_ros.core.dff_network import select_device

        self.config = config or model.config
        self.device = select_device(device)
        self.channels_last = self.device.type == "cpu"
        model = model.eval().fuse_for_inference().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._mean = np.asarray(self.config.mean, np.float32) * 255.0
        self._inv_std = 1.0 / (np.asarray(self.config.std, np.float32) * 255.0)

    @classmethod
    def from_file(cls, path, device=None) -> "DFFExtractor":
        from face_alignment_ros.core.dff_network import load_dff_weights

        model, config = load_dff_weights(path, device=device)
        return cls(model, config, device)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def descriptor_dim(self) -> int:
        return self.config.descriptor_dim

    def _normalise(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(B, N, N, 3) uint8 -> (B, 3, N, N) float32 network input (config mean/std, BGR)."""
        x = (crops_bgr.astype(np.float32) - self._mean) * self._inv_std
        return x.transpose(0, 3, 1, 2)

    def run_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self._normalise(np.asarray(crops_bgr))))
        return self._run(x)

    def _run(self, x: "torch.Tensor") -> np.ndarray:
        """(B, N, N, D) float32 C-contiguous (a channels-last net already produces it)."""
        import torch

        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self.model(x)
        return y.float().permute(0, 2, 3, 1).contiguous().cpu().numpy()
