"""Reader and writer for the 300-W ``.pts`` landmark format.

The format (iBUG 300-W)::

    version: 1
    n_points: 68
    {
    x y
    ...
    }

Coordinates are image pixels. The 300-W files use 1-based pixel coordinates in the original
release; the copies under ``../shared/data/300w`` are 0-based (see that folder's README), and
this module reads and writes numbers as they are, without shifting.
"""
from __future__ import annotations

import os

import numpy as np

PathLike = str | os.PathLike[str]


def read_pts(path: PathLike) -> np.ndarray:
    """Read a 300-W ``.pts`` file into an ``(n_points, 2)`` float32 array (``(68, 2)`` for iBUG).

    Raises ``ValueError`` for a malformed file (missing braces, wrong point count, bad numbers).
    """
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    n_points = None
    try:
        start = lines.index("{")
        end = lines.index("}", start + 1)
    except ValueError as exc:
        raise ValueError(f"{path}: not a .pts file (no '{{' ... '}}' block)") from exc
    for ln in lines[:start]:
        key, _, value = ln.partition(":")
        if key.strip().lower() == "n_points":
            n_points = int(value)
    try:
        pts = np.array([[float(v) for v in ln.split()] for ln in lines[start + 1:end]],
                       dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{path}: bad coordinate line") from exc
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{path}: every point line must hold two numbers")
    if n_points is not None and pts.shape[0] != n_points:
        raise ValueError(f"{path}: header says {n_points} points, file has {pts.shape[0]}")
    return pts


def write_pts(path: PathLike, points: np.ndarray) -> None:
    """Write an ``(n, 2)`` array as a 300-W ``.pts`` file (version 1)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points must be finite")
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")
