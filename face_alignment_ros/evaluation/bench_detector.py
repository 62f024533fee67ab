"""Per-network, per-step timings of the BlazeFace detector on a 640x480 frame, both runtimes.

    python -m face_alignment_ros.evaluation.bench_detector [--runs 300] [--face-px 128 68]

The frame is the embedded astronaut portrait's head pasted into a gray 640x480 frame so that
the face box is ``--face-px`` pixels wide (one frame per size). Steps: letterbox, input tensor,
invoke, decoding (LiteRT runtime), each network whole, and ``detect()``; the MediaPipe-graph
runtime is timed whole. Every variant runs interleaved in one process at one thread; the table
gives the median and the 10th percentile (the better guide on a loaded machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from face_alignment_ros.core.face_detector import BlazeFaceDetector, blazeface_letterbox

# The astronaut's face box inside its head crop data.astronaut()[40:240, 120:320] (85 px wide).
_HEAD_FACE_PX = 85.0


def test_frame(face_px: float) -> np.ndarray:
    """A 640x480 BGR frame holding one real face about ``face_px`` pixels wide."""
    import cv2
    from skimage import data

    head = np.ascontiguousarray(data.astronaut()[40:240, 120:320, ::-1])
    scale = face_px / _HEAD_FACE_PX
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:440, :490]
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[40:40 + head.shape[0], 150:150 + head.shape[1]] = head
    return frame


def _steps(detector: BlazeFaceDetector, frame: np.ndarray) -> dict:
    """name -> zero-argument callable, for each step of the LiteRT runtime."""
    steps = {}
    for name, net in detector._nets.items():
        square, _ = blazeface_letterbox(frame, net.spec.size)
        interp = net._interpreter

        def tensor(net=net, square=square):
            np.multiply(square, np.float32(2.0 / 255.0), out=net._tensor[0])
            net._tensor -= np.float32(1.0)
            net._interpreter.set_tensor(net._input, net._tensor)

        tensor()
        steps[f"{name}: letterbox + colour"] = lambda net=net: blazeface_letterbox(frame, net.spec.size)
        steps[f"{name}: input tensor"] = tensor
        steps[f"{name}: invoke"] = interp.invoke
        steps[f"{name}: tensor + invoke + decode + weighted NMS"] = lambda net=net, square=square: net(square)
    return steps


def benchmark(face_px=(128, 68), runs: int = 300, warmup: int = 10) -> dict:
    """{variant: {step: samples_ms}} for every runtime available."""
    import cv2

    cv2.setNumThreads(1)
    runtimes = ["mediapipe"] + (["litert"] if importlib.util.find_spec("ai_edge_litert") else [])
    detectors = {r: BlazeFaceDetector(runtime=r) for r in runtimes}
    frames = {px: test_frame(px) for px in face_px}
    jobs = {}
    if "litert" in detectors:
        jobs.update({("litert", step): fn for step, fn in _steps(detectors["litert"], frames[face_px[0]]).items()})
    for runtime, det in detectors.items():
        for name in det._nets:
            jobs[(runtime, f"{name}: whole network run")] = lambda det=det, name=name: det._run(name, frames[face_px[0]])
        for px, frame in frames.items():
            jobs[(runtime, f"detect(), {px} px face")] = lambda det=det, frame=frame: det.detect(frame)
    samples = {key: [] for key in jobs}
    for i in range(warmup + runs):
        for key, fn in jobs.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                samples[key].append((time.perf_counter() - start) * 1000.0)
    return samples


def format_markdown(samples: dict) -> str:
    lines = ["| runtime | step | median ms | p10 ms |", "|---|---|---:|---:|"]
    for (runtime, step), v in samples.items():
        lines.append(f"| {runtime} | {step} | {np.median(v):.3f} | {np.percentile(v, 10):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--face-px", type=float, nargs="+", default=[128, 68])
    args = p.parse_args(argv)
    print(format_markdown(benchmark(tuple(args.face_px), args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
