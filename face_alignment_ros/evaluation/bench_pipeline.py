"""Per-stage timings of the alignment pipeline on one face: detector, crop, DFF (or SIFT),
each cascade iteration, visibility. Median and p95 over repeated runs, per thread count.

Timing does not depend on the weights' values, so when no trained model is shipped yet the
benchmark uses an untrained network and zero descent matrices of the right shapes, and says so.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from face_alignment_ros.core.aligner import FaceAligner, ModelNotTrainedError
from face_alignment_ros.core.dff_extractor import crop_image
from face_alignment_ros.evaluation.stand_in_models import stand_in_aligner


def load_aligner(descriptor: str, detector="default") -> tuple[FaceAligner, bool]:
    """(aligner, trained?)."""
    try:
        return FaceAligner.from_default(descriptor=descriptor, detector=detector), True
    except ModelNotTrainedError:
        return stand_in_aligner(descriptor, detector), False


class StageTimer:
    def __init__(self):
        self.samples: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.samples.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)

    def summary(self) -> dict:
        return {k: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "runs": len(v)}
                for k, v in self.samples.items()}


def time_pipeline(aligner: FaceAligner, image: np.ndarray, runs: int = 30, warmup: int = 3) -> dict:
    """Time each stage of detect -> crop -> descriptor -> K iterations on ``image``."""
    timer = StageTimer()
    cascade, descent, n = aligner.cascade, aligner.descent, aligner.descent.crop_size
    detections = aligner.detect(image)
    if not detections:
        raise ValueError("the benchmark image has no detectable face")
    for i in range(warmup + runs):
        t = timer if i >= warmup else StageTimer()
        with t("total"):
            with t("detector"):
                det = aligner.detect(image)[0]
            with t("crop"):
                crop_box = aligner.crop_box(det.box)
                crop = crop_image(image, crop_box, n)[0]
            with t(f"descriptor ({aligner.descriptor})"):
                sampler = aligner.backend.prepare(crop)
            state = cascade.initial_state(n)
            for k in range(descent.iterations):
                with t(f"iteration {k + 1}"):
                    with t("  features (sampling)"):
                        phi = cascade.features(sampler, state)
                    with t("  regression (eq. 4-5)"):
                        dx, dw = descent.step(k, phi)
                    with t("  shape fit + visibility"):
                        state = cascade.update(state, dx, dw, descent.regularisation)
            with t("visibility (alone)"):
                cascade.visibility.visible(state.camera, state.shape_params, cascade.dense_points(state))
    return timer.summary()


def benchmark(image: np.ndarray, descriptors=("dff", "sift"), threads=(1, 2), runs: int = 30) -> dict:
    results = {}
    for descriptor in descriptors:
        aligner, trained = load_aligner(descriptor)
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            import cv2

            cv2.setNumThreads(n_threads)
            results[f"{descriptor}/threads={n_threads}"] = {"trained": trained,
                                                           "stages": time_pipeline(aligner, image, runs)}
    return results


def format_markdown(results: dict) -> str:
    lines = []
    for key, res in results.items():
        note = "" if res["trained"] else " (untrained stand-in weights: timing only)"
        lines += [f"### {key}{note}", "", "| stage | median ms | p95 ms |", "|---|---:|---:|"]
        for stage, r in res["stages"].items():
            lines.append(f"| {stage} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)
