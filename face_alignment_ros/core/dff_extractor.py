"""Run the DFF network on face crops and sample its descriptors at sub-pixel crop points.

The crops come from ``core.face_crop.crop_image`` (one crop convention for the whole package);
the runtime only runs the network on the crop it is given.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:  # torch is imported only by the torch runtime (the ONNX path never needs it)
    from face_alignment_ros.core.dff_network import DFFConfig, DFFNet


@dataclass
class DescriptorMap:
    """Full-resolution descriptors of one crop.

    ``data``: (D, N, N) float32, unit vectors along axis 0 (from the extractor a view whose
    memory is (N, N, D)).
    """

    data: np.ndarray

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


def _upsample_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index of a bilinear resize n_in -> n_out with half-pixel centres (torch's
    ``interpolate(..., align_corners=False)``, ONNX Resize ``half_pixel``): the two input indices
    and the weight of the second."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.intp), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _upsample_tap_table(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """``_upsample_taps`` as (N, 2) head indices and (N, 2) weights per map index, read-only:
    the same for every crop of a runtime, so made once."""
    lo, hi, lam = _upsample_taps(n_out, n_in)
    taps = np.ascontiguousarray(np.stack([lo, hi], 1), np.int64)
    weights = np.ascontiguousarray(np.stack([1 - lam, lam], 1), np.float32)
    taps.setflags(write=False)
    weights.setflags(write=False)
    return taps, weights


def full_maps(heads: np.ndarray, size: int) -> np.ndarray:
    """(B, N, N, D) full unit maps from (B, M, M, D) head maps (``HeadDescriptorMap.full``)."""
    if not len(heads):
        return np.zeros((0, size, size, heads.shape[-1]), np.float32)
    return np.stack([HeadDescriptorMap(h, size).full() for h in heads])


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length along the last axis (torch ``F.normalize``, eps 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


class HeadDescriptorMap:
    """The descriptors of one crop from the network's head map (``DFFNet.head_map``, (M, M, D)
    channels-last, M = N / decoder_stride): the full (N, N) map of ``DFFNet.forward`` is its
    bilinear upsampling, L2-normalised per pixel. ``sample`` computes those pixels at the 4
    neighbours of each point only, which gives what ``DescriptorMap.sample`` gives on the full
    map (to float rounding) at a small fraction of the cost; ``data`` builds the full map."""

    def __init__(self, head: np.ndarray, size: int):
        self.head = np.ascontiguousarray(head, np.float32)
        self._m = self.head.shape[0]
        self._flat = self.head.reshape(self._m * self._m, -1)
        self._size = int(size)
        self._taps, self._tap_weights = _upsample_tap_table(self._size, self._m)

    @property
    def size(self) -> int:
        return self._size

    @property
    def data(self) -> np.ndarray:
        """(D, N, N) full map (a view of an (N, N, D) array), as ``DescriptorMap.data``."""
        return self.full().transpose(2, 0, 1)

    def full(self) -> np.ndarray:
        """(N, N, D) float32 C-contiguous unit descriptors: the network's full-resolution output."""
        (lo, hi), (w0, w1) = self._taps.T, self._tap_weights.T
        rows = self.head[lo] * w0[:, None, None] + self.head[hi] * w1[:, None, None]  # (N, M, D)
        full = rows[:, lo] * w0[None, :, None] + rows[:, hi] * w1[None, :, None]      # (N, N, D)
        return np.ascontiguousarray(_unit(full), np.float32)

    def sample(self, points_crop) -> np.ndarray:
        """(n, D) bilinear samples of the full map at (n, 2) crop-pixel points, zero outside
        (``bilinear_sample``'s rule)."""
        points = np.ascontiguousarray(np.asarray(points_crop, dtype=np.float64).reshape(-1, 2))
        out = np.zeros((len(points), self._flat.shape[1]), np.float32)
        _head_samples(self._flat, self._m, self._taps, self._tap_weights, points, self._size, out)
        return out


@njit(cache=True, nogil=True)
def _head_samples(flat, m, taps, tap_weights, points, n, out):
    """``HeadDescriptorMap.sample``: per point, the 4 full-map pixels around it, each the
    bilinear blend of its 2 x 2 head-map taps, L2-normalised, then blended bilinearly. A kernel:
    in numpy the dozen small array operations cost 4x the arithmetic."""
    d = flat.shape[1]
    step = 1 if n > 1 else 0
    pixel = np.empty(d, np.float32)
    for i in range(points.shape[0]):
        x, y = points[i, 0], points[i, 1]
        if not (x >= 0 and y >= 0 and x <= n - 1 and y <= n - 1):  # NaN fails too
            continue
        x0 = min(int(x), n - 2) if n > 1 else 0
        y0 = min(int(y), n - 2) if n > 1 else 0
        fx, fy = np.float32(x - x0), np.float32(y - y0)
        for a in range(2):
            row = y0 + a * step
            wy = fy if a else 1 - fy
            for c in range(2):
                col = x0 + c * step
                wx = fx if c else 1 - fx
                pixel[:] = 0
                for b in range(2):
                    for e in range(2):
                        w = tap_weights[row, b] * tap_weights[col, e]
                        src = taps[row, b] * m + taps[col, e]
                        for j in range(d):
                            pixel[j] += w * flat[src, j]
                norm = np.float32(0)
                for j in range(d):
                    norm += pixel[j] * pixel[j]
                scale = wy * wx / max(np.sqrt(norm), np.float32(1e-12))
                for j in range(d):
                    out[i, j] += scale * pixel[j]


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

    def descriptor_maps(self, crops_bgr) -> list[DescriptorMap]:
        """Several (N, N, 3) uint8 BGR crops in one forward pass."""
        if not len(crops_bgr):
            return []
        y = self.run_crops(np.stack(crops_bgr))
        return [DescriptorMap(y[i].transpose(2, 0, 1)) for i in range(len(y))]

    def descriptor_map(self, crop_bgr: np.ndarray) -> DescriptorMap:
        """Run the network once on one (N, N, 3) uint8 BGR crop: its (D, N, N) map."""
        return self.descriptor_maps([crop_bgr])[0]


class DFFExtractor(DescriptorRunner):
    """Runs a ``DFFNet`` on face crops with torch. The model is switched to eval mode with BN
    folded (and channels-last on CPU, measurably faster there; see docs/dff_network.md)."""

    runtime = "torch"

    def __init__(self, model: DFFNet, config: DFFConfig | None = None, device=None):
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
    def from_file(cls, path, device=None) -> DFFExtractor:
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
        return self._run(crops_bgr, self.model)

    def descriptor_maps(self, crops_bgr) -> list[DescriptorMap | HeadDescriptorMap]:
        """As ``DescriptorRunner.descriptor_maps``, from the head maps finished at the points
        sampled (``HeadDescriptorMap``), as ONNX Runtime runs a schema-2 graph."""
        if self.config.decoder_stride == 1 or not len(crops_bgr):
            return super().descriptor_maps(crops_bgr)
        return [HeadDescriptorMap(h, self.input_size) for h in self.head_maps(np.stack(crops_bgr))]

    def head_maps(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(B, M, M, D) head maps (``DFFNet.head_map``): what a schema-2 inference graph returns."""
        return self._run(crops_bgr, self.model.head_map)

    def _run(self, crops_bgr: np.ndarray, forward) -> np.ndarray:
        """``forward`` (the network, or its head map) on the crops, as (B, H, W, D) float32
        C-contiguous (a channels-last net already produces it)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self._normalise(np.asarray(crops_bgr)))).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = forward(x)
        return y.float().permute(0, 2, 3, 1).contiguous().cpu().numpy()
