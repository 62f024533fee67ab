"""sensor_msgs/Image <-> numpy without cv_bridge (the ROS 2 cv_bridge is not on PyPI).

Works on any object with the Image fields (rclpy messages and rosbags' deserialised ones).
"""
from __future__ import annotations

import numpy as np

# encoding -> (channels, channel order to BGR: index array or None)
ENCODINGS = {
    "bgr8": (3, None),
    "rgb8": (3, [2, 1, 0]),
    "mono8": (1, None),
    "bgra8": (4, [0, 1, 2]),
    "rgba8": (4, [2, 1, 0]),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)


class ImageConversionError(ValueError):
    """A frame that cannot be used; the message says why (logged and counted by the node)."""


def image_to_bgr(msg) -> np.ndarray:
    """uint8 BGR (H, W, 3) for colour encodings, (H, W) for mono8. Raises
    ``ImageConversionError`` for unsupported encodings, zero size, a step that does not fit the
    width, or data of the wrong length."""
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, order = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image: {width}x{height}")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than width * channels = {row_bytes} "
                                   f"({width} px of {encoding})")
    data = msg.data
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False).reshape(-1)
    if buf.size != step * height:
        kind = "truncated" if buf.size < step * height else "too long"
        raise ImageConversionError(f"image data {kind}: {buf.size} bytes, expected step * height = "
                                   f"{step} * {height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    if channels == 1:
        return np.ascontiguousarray(rows)
    pixels = rows.reshape(height, width, channels)
    if order is not None:
        pixels = pixels[:, :, order]
    return np.ascontiguousarray(pixels)


def bgr_to_image_fields(image: np.ndarray, encoding: str = "bgr8") -> dict:
    """The Image fields (height, width, encoding, is_bigendian, step, data) of a BGR or gray
    uint8 image, in ``encoding`` (one of SUPPORTED_ENCODINGS). Inverse of ``image_to_bgr``."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {encoding!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageConversionError(f"image must be uint8, got {image.dtype}")
    channels, order = ENCODINGS[encoding]
    if channels == 1:
        if image.ndim == 3:
            raise ImageConversionError("mono8 needs a (H, W) image")
        out = image
    else:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageConversionError(f"{encoding} needs a BGR (H, W, 3) image, got {image.shape}")
        if channels == 4:
            alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
            bgra = np.concatenate([image, alpha], axis=2)
            out = bgra if encoding == "bgra8" else bgra[:, :, [2, 1, 0, 3]]
        else:
            out = image if order is None else image[:, :, order]
    out = np.ascontiguousarray(out)
    return {"height": out.shape[0], "width": out.shape[1], "encoding": encoding, "is_bigendian": 0,
            "step": out.shape[1] * channels, "data": out.tobytes()}
