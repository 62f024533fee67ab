"""Speed and memory of this project's aligners and the peers, in one run, on the same images.

Each (method, threads, device) runs in a fresh child process (``spawn``) so that its peak
resident memory (``peak_rss_mb``: interpreter and imported libraries included) is its own. Per image, the child times
``align_box`` (given landmark box, no detector), ``detect_and_align`` (own detector) and
``track`` (video mode on the image as a still video: each method's own tracking, the first
frame untimed; methods without a video mode have none). Absolute
times on a shared machine move between runs, so the report gives speed as ratios to the peers
measured in the same run. Thread limits: the package's thread policy (core/threads.py) for this
project's aligners; dlib is single-threaded; MediaPipe's TFLite runtime keeps its own thread
pool (not limited).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np

from face_alignment_ros.common.process_memory import peak_rss_mb


def _child(method_name: str, threads: int, device: str | None, images: list, boxes: list, runs: int,
           warmup: int, queue) -> None:
    try:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        from face_alignment_ros.evaluation.peers import OursMethod, create_method

        if method_name.startswith("ours-"):
            kind = method_name.split("-", 1)[1]
            method = OursMethod(kind, aligner=_cuda_aligner(kind, device)) if device else OursMethod(kind)
        else:
            method = create_method(method_name)
        method.set_threads(threads)
        times: dict[str, list] = {"given_box": [], "detect_and_align": [], "tracking": []}
        sync = _cuda_sync if device else (lambda: None)
        for r in range(warmup + runs):
            for img, box in zip(images, boxes):
                t = time.perf_counter()
                method.align_box(img, box)
                sync()
                t1 = time.perf_counter()
                method.detect_and_align(img)
                sync()
                t2 = time.perf_counter()
                if r >= warmup:
                    times["given_box"].append((t1 - t) * 1000)
                    times["detect_and_align"].append((t2 - t1) * 1000)
        try:  # video mode: each image as a still video, the first frame (detection) untimed
            for img in images:
                method.reset_tracking()
                for r in range(1 + runs):
                    t = time.perf_counter()
                    method.track(img)
                    sync()
                    if r:
                        times["tracking"].append((time.perf_counter() - t) * 1000)
        except NotImplementedError:
            times.pop("tracking")
        out = {k: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "samples": len(v)}
               for k, v in times.items()}
        out["peak_rss_mb"] = peak_rss_mb()
        out["trained"] = method.trained
        out["label"] = method.label
        queue.put(out)
    except Exception as exc:  # reported, not raised: the other methods still run
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _cuda_sync():
    import torch

    torch.cuda.synchronize()


def _cuda_aligner(kind: str, device: str):
    from face_alignment_ros.common.stand_in_models import trained_or_stand_in_aligner

    return trained_or_stand_in_aligner(kind, device=device)[0]


def bench_images(limit: int = 10, data_dir=None) -> tuple[list, list, str]:
    """(images, given boxes, description): held-out 300-W photos with their landmark boxes, or
    the demo photo with its detector box when the shared data is absent."""
    from face_alignment_ros.core.face_crop import landmark_box

    try:
        from face_alignment_ros.evaluation.datasets import heldout_300w

        ds = heldout_300w(data_dir, limit)
        samples = list(ds)
        return ([s.image for s in samples], [landmark_box(s.landmarks) for s in samples],
                f"{len(samples)} photos of {ds.name} (crops, longer side <= 512 px)")
    except FileNotFoundError:
        from face_alignment_ros.common.samples import demo_image
        from face_alignment_ros.core.face_detector import create_detector

        img = demo_image()
        return [img], [np.asarray(create_detector().detect(img)[0].box)], "the demo photo (512x512)"


def benchmark_methods(methods: list[str], threads=(1, 2), runs: int = 3, warmup: int = 1, limit: int = 10,
                      cuda: bool | None = None, data_dir=None, repeats: int = 1) -> dict:
    """With ``repeats`` > 1 every (method, threads, device) is measured that many times in
    turn and the run with the lowest detect + align median is kept: on a shared machine the
    least disturbed one of each, so that ratios compare like with like."""
    images, boxes, what = bench_images(limit, data_dir)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    configs = [(m, t, None) for m in methods for t in threads]
    if cuda:
        configs += [(m, max(threads), "cuda") for m in methods if m == "ours-dff"]
    ctx = mp.get_context("spawn")
    results = {}
    for _ in range(repeats):
        for name, t, device in configs:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(name, t, device, images, boxes, runs, warmup, q))
            p.start()
            res = q.get()
            p.join()
            key = f"{name}/threads={t}" + (f"/{device}" if device else "")
            old = results.get(key)
            if old is None or "error" in old or ("error" not in res and res["detect_and_align"]["median_ms"]
                                                 < old["detect_and_align"]["median_ms"]):
                results[key] = {"method": name, "threads": t, "device": device or "cpu", **res}
    return {"images": what, "runs": runs, "repeats": repeats, "results": results, "ratios": speed_ratios(results)}


def speed_ratios(results: dict, ours=("ours-dff", "ours-sift")) -> dict:
    """time(ours) / time(peer), per thread count and timing kind: < 1 means ours is faster."""
    out = {}
    for r in results.values():
        if r["method"] not in ours or r["device"] != "cpu" or "error" in r:
            continue
        for p in results.values():
            if p["method"] in ours or p["threads"] != r["threads"] or p["device"] != "cpu" or "error" in p:
                continue
            for kind in ("given_box", "detect_and_align", "tracking"):
                if kind not in r or kind not in p:
                    continue
                out.setdefault(f"{r['method']} / {p['method']}", {}).setdefault(f"threads={r['threads']}", {})[kind] = \
                    round(r[kind]["median_ms"] / p[kind]["median_ms"], 3)
    return out


def format_markdown(bench: dict) -> str:
    lines = [f"Images: {bench['images']}, {bench['runs']} timed passes each, "
             f"best of {bench.get('repeats', 1)} runs.", "",
             "| method | threads | device | given box, median ms (p95) | detect + align, median ms (p95) "
             "| tracking (video mode), median ms (p95) | peak RSS MB |",
             "|---|---:|---|---:|---:|---:|---:|"]

    def cell(r, kind):
        return f"{r[kind]['median_ms']:.1f} ({r[kind]['p95_ms']:.1f})" if kind in r else "-"

    for r in bench["results"].values():
        if "error" in r:
            lines.append(f"| {r['method']} | {r['threads']} | {r['device']} | error: {r['error']} | | | |")
            continue
        lines.append(f"| {r['label']} | {r['threads']} | {r['device']} | {cell(r, 'given_box')} | "
                     f"{cell(r, 'detect_and_align')} | {cell(r, 'tracking')} | {r['peak_rss_mb']:.0f} |")
    if bench["ratios"]:
        lines += ["", "Speed ratios, time(ours) / time(peer), same run (< 1: ours faster):", "",
                  "| ours / peer | threads | given box | detect + align | tracking |", "|---|---:|---:|---:|---:|"]
        for pair, per in bench["ratios"].items():
            for t, r in per.items():
                tr = f"{r['tracking']:.2f}" if "tracking" in r else "-"
                lines.append(f"| {pair} | {t.split('=')[1]} | {r['given_box']:.2f} | "
                             f"{r['detect_and_align']:.2f} | {tr} |")
    return "\n".join(lines) + "\n"


def plot_speed(bench: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in bench["results"].values() if "error" not in r]
    if not rows:
        return
    labels = [f"{r['method']}\n{r['threads']}t {r['device']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.6))
    ax.bar(x - 0.2, [r["given_box"]["median_ms"] for r in rows], 0.4, label="given box")
    ax.bar(x + 0.2, [r["detect_and_align"]["median_ms"] for r in rows], 0.4, label="detect + align")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("median ms per face")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
