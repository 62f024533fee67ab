"""Gradient-orientation histograms at given points: the fine 2D stages' descriptor.

After the cascade and its DFF 2D stage, the DFF at the landmarks carries little linear
information about the error left (docs/training.md, rounds 4 and 8): the network resolves a face
to about 4-5 px of its 128 px crop, and it has seen the training photos, so regressions learn
on better descriptors than they meet. Hand-made edge histograms have neither limit. This one
is a dense SIFT-like descriptor costing about half a millisecond for 68 points at 128 px
(OpenCV's SIFT ``compute`` builds a scale-space pyramid per call: 6.5 ms at 128 px here).

Per point: a ``grid`` x ``grid`` array of ``cell`` px cells centred on it, each holding the
gradient magnitude soft-binned into ``bins`` orientations over 360 degrees (box-filtered over the
cell, bilinearly sampled at the cell centre), normalised as SIFT normalises (unit length, clipped
at 0.2, unit length again). Points outside the image read the nearest border value. The crop
is the cascade's box at ``crop_size`` px (``HistogramLayout``); validation found 128 px (the
cascade's own crop) as good as 256 px.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

_CLIP = 0.2  # SIFT's clip against single strong edges (Lowe 2004)


@dataclass(frozen=True)
class HistogramLayout:
    """What a fine stage was learned with: the fine crop's side (px) over the same crop box as
    the cascade's, and the descriptor's cell size (fine px), grid and orientation bins. The
    defaults are the shipped model's: 4 x 4 cells of 3 px, chosen on validation over 3 x 3 of 4
    px (round 8's) and grids of 3-5 cells of 3-5 px (docs/training.md, round 11)."""
    crop_size: int = 128
    cell: int = 3
    grid: int = 4
    bins: int = 8

    @property
    def dim(self) -> int:
        return self.grid * self.grid * self.bins

    def to_dict(self) -> dict:
        return asdict(self)


def orientation_channels(gray: np.ndarray, layout: HistogramLayout) -> np.ndarray:
    """(H, W, bins) float32: gradient magnitude per orientation bin, summed over a cell around
    each pixel."""
    g = np.asarray(gray, np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    position = angle * np.float32(layout.bins / (2 * np.pi))
    channels = np.empty(g.shape + (layout.bins,), np.float32)
    for b in range(layout.bins):  # linear soft binning, circular over 360 degrees
        distance = np.abs(position - b)
        distance = np.minimum(distance, layout.bins - distance)
        channels[..., b] = magnitude * np.maximum(0.0, 1.0 - distance)
    return cv2.blur(channels, (layout.cell, layout.cell))


def histograms_at(channels: np.ndarray, points: np.ndarray, layout: HistogramLayout) -> np.ndarray:
    """(n, dim) float32 descriptors at (n, 2) points (x, y) in the channels' pixels."""
    h, w = channels.shape[:2]
    # cv2.blur's window at pixel x spans [x - cell // 2, x + (cell - 1) // 2]: for an even cell
    # its centre lies half a pixel left of x, so the cells are read half a pixel right
    centring = layout.cell // 2 - (layout.cell - 1) / 2
    offsets = (np.arange(layout.grid) - (layout.grid - 1) / 2) * layout.cell + centring
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    p = np.asarray(points, np.float64).reshape(-1, 1, 2) + np.stack([ox.ravel(), oy.ravel()], 1)[None]
    x = np.clip(np.nan_to_num(p[..., 0]), 0, w - 1).astype(np.float32).reshape(1, -1)
    y = np.clip(np.nan_to_num(p[..., 1]), 0, h - 1).astype(np.float32).reshape(1, -1)
    # bilinear, at OpenCV's 1/32 px; all channels at once (numpy indexing costs 10x more)
    v = cv2.remap(channels, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    v = v.reshape(len(p), -1)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
    v = np.minimum(v, _CLIP)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
    return v.astype(np.float32)


