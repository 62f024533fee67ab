"""Per-stage timings of the alignment pipeline on one face: detector, crop, DFF (or SIFT),
each cascade iteration, visibility. Median and p95 over repeated runs, per thread count.

Timing does not depend on the weights' values, so when no trained model is shipped yet the
benchmark uses an untrained network and zero descent matrices of the right shapes, and says so.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from face_alignment_ros.common.stand_in_models import trained_or_stand_in_aligner
from face_alignment_ros.core import threads as thread_policy
from face_alignment_ros.core.aligner import FaceAligner
from face_alignment_ros.core.face_crop import crop_image


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


def _timing_hook(timer: StageTimer):
    """A ``Cascade.run`` hook timing each iteration and its parts under the table's stage names."""
    names = {"features": "  features (sampling)", "regression": "  regression (eq. 4-5)",
             "update": "  shape fit + visibility"}
    return lambda k, part: timer(f"iteration {k + 1}" if part == "iteration" else names[part])


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
                crop_box = aligner.crop_box(det.box, "detector", det.keypoints)
                crop = crop_image(image, crop_box, n)[0]
            with t(f"descriptor ({aligner.descriptor})"):
                sampler = aligner.backend.prepare(crop)
            state = cascade.run(descent, sampler, cascade.initial_state(n), hook=_timing_hook(t))
            with t("visibility (alone)"):
                cascade.visibility.visible(state.camera, state.shape_params, cascade.dense_points(state))
    # video mode: the face starts from the previous frame's result, no detector
    previous = aligner.align(image, detections[0].box, keypoints=detections[0].keypoints)
    for i in range(warmup + runs):
        t = timer if i >= warmup else StageTimer()
        with t("tracked frame (video mode, no detector)"):
            previous = aligner.align(image, None, previous=previous)
    return timer.summary()


def benchmark(image: np.ndarray, descriptors=("dff", "sift"), threads=(1, 2), runs: int = 30,
              repeats: int = 1, runtimes=("auto",)) -> dict:
    """Per-stage figures per descriptor, DFF runtime and thread count (``core.threads``
    policy; one aligner per count because the network runtime sizes its pool when created).
    With ``repeats`` > 1 the variants are measured in turn that many times and the block with
    the lowest total median is kept per variant: on a shared machine, the least disturbed one."""
    variants = {}
    for descriptor in descriptors:
        for runtime in (runtimes if descriptor == "dff" else ("auto",)):
            name = descriptor if runtime == "auto" else f"{descriptor} [{runtime}]"
            for n in threads:
                aligner = trained_or_stand_in_aligner(descriptor, threads=n, runtime=runtime)
                variants[f"{name}/threads={n}"] = (n, aligner)
    results = {}
    for _ in range(repeats):
        for key, (n_threads, (aligner, trained)) in variants.items():
            thread_policy.apply(n_threads)
            runtime = getattr(getattr(aligner.backend, "extractor", None), "runtime", key.split("/")[0])
            stages = time_pipeline(aligner, image, runs)
            if key not in results or stages["total"]["median_ms"] < results[key]["stages"]["total"]["median_ms"]:
                results[key] = {"trained": trained, "runtime": runtime, "stages": stages}
    return results


def format_markdown(results: dict) -> str:
    """One table per descriptor, the thread counts side by side (median ms, p95 in brackets)."""
    lines = []
    by_descriptor: dict[str, dict] = {}
    for key, res in results.items():
        descriptor, threads = key.split("/")
        by_descriptor.setdefault(descriptor, {})[threads] = res
    for descriptor, per in by_descriptor.items():
        first = next(iter(per.values()))
        note = "" if first["trained"] else " (untrained stand-in weights: timing only)"
        if first.get("runtime") and first["runtime"] not in descriptor:
            note += f", network on {first['runtime']}"
        cols = list(per)
        lines += [f"### {descriptor}{note}", "",
                  "| stage | " + " | ".join(f"{c.replace('=', ' ')}: median ms (p95)" for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for stage in first["stages"]:
            cells = [f"{per[c]['stages'][stage]['median_ms']:.2f} ({per[c]['stages'][stage]['p95_ms']:.2f})"
                     if stage in per[c]["stages"] else "-" for c in cols]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
