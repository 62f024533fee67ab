"""Stage ``synthesize`` (paper Sec. III-A, as 300W-LP does): multi-view faces from fitted photos.

For each photo fitted by stage ``fit``:

1. Texture (``mesh_texture``): a colour per model vertex, sampled (bilinear) from the photo at the fitted mesh's
   projected vertices. Vertices the photo does not show well (occluded by the depth buffer, seen
   at a grazing angle, or outside the photo) take the colour of their mirror vertex across the
   face's symmetry plane when that one is seen, and the rest the colour of the nearest seen
   vertices over the mesh (breadth-first diffusion).
2. Views (``render_views``): the identity is re-rendered at random poses (yaw uniform in -90..90 degrees, pitch and
   roll normal with sigma 12 degrees clipped to +-30), expressions drawn from the 3DMM prior and a
   jittered canonical crop (+-10% scale, +-5% shift, as a detector's box would give), straight
   into an N x N crop. The face is shaded by a random directional light, jittered in colour,
   composited over a real background patch (photo regions away from the face), then blurred and
   noised mildly.

Outputs in ``<work>/synthesize/``, one set per split (``train_*`` and ``heldout_*``), all
memory-mapped ``.npy`` so that later stages read samples without loading the lot (the layout is
``common.render_format.output_specs``):

==========================  ===================  =================================================
file                        shape, dtype         content
==========================  ===================  =================================================
``{split}_images``          (n, N, N, 3) uint8   BGR render
``{split}_vertex_ids``      (n, N, N) uint16     vertex of the covering triangle with the largest
                                                 barycentric; 65535 = background
``{split}_camera``          (n, 6) float32       weak-perspective camera in crop pixels
``{split}_shape``           (n, 50) float32      40 identity then 10 expression parameters
``{split}_landmarks``       (n, 68, 2) float32   crop pixels; jaw points on the silhouette
``{split}_landmark_ids``    (n, 68) int32        vertex ids of those 68 (contour_landmarks)
``{split}_landmark_visible``(n, 68) bool         VisibilityTester on those vertices
``{split}_dense``           (n, 160, 2) float32  the 160 dense landmarks (fixed vertex ids)
``{split}_dense_visible``   (n, 160) bool        VisibilityTester on the fixed vertex ids
``{split}_identity``        (n,) int32           row of ``fit/fits.npz``
``{split}_view``            (n,) int16           view number within the identity
``{split}_yaw_bin``         (n,) int8            0: |yaw| in [0,30], 1: (30,60], 2: (60,90]
==========================  ===================  =================================================

With ``--photo-views N`` (default 4) the stage also writes ``photo_train_*`` (N jittered crops of
each training photo itself, labelled by its fit) and ``photo_heldout_*`` (one crop per held-out
photo, a monitor only), in the same layout: see ``photo_views``.

Sample ``identity * views + view`` is seeded by (seed, split, identity, view) alone, so results do
not depend on the number of workers, and a run resumes at the last checkpoint (``progress.json``,
the count of identities done per split, written atomically after the arrays are flushed).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np

from face_alignment_ros.common.render_format import (
    BACKGROUND_ID,
    FIT_STAGE,
    FITS_FILE,
    PHOTO_SPLITS,
    SPLITS,
    SYNTH_PROGRESS_FILE,
    SYNTHESIZE_STAGE,
    YAW_BINS_DEG,
    load_outputs,
    save_progress,
    start_or_resume,
)
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.threads import limit_blas_threads
from face_alignment_ros.training.mesh_texture import MeshTools, default_tools
from face_alignment_ros.training.photo_views import make_photo_views
from face_alignment_ros.training.render_views import (
    Fits,
    background_patches,
    prepare_identity,
    read_image,
    render_sample,
)
from face_alignment_ros.training.stage_io import Stage

STAGE = SYNTHESIZE_STAGE
DEFAULT_SIZE = 128
DEFAULT_TRAIN_SAMPLES = 30000
DEFAULT_PHOTO_VIEWS = 4  # crops of each training photo itself (photo_views)
DEFAULT_HELDOUT_VIEWS_PER_BIN = 12
BACKGROUND_PATCHES_PER_PHOTO = 3

# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_CTX: dict = {}


def _init_worker(ctx: dict) -> None:
    # Thread limits are set by run() before the fork: cv2.setNumThreads in a forked child whose
    # parent had a busy OpenCV pool hangs.
    _CTX.clear()
    _CTX.update(ctx)


def _render_identity(task: tuple[str, int]) -> tuple[str, int, dict, dict]:
    split, row = task
    c = _CTX
    t0, cpu0 = time.perf_counter(), time.process_time()
    ident = prepare_identity(c["fits"], row, c["tools"])
    t1, cpu1 = time.perf_counter(), time.process_time()
    views = c["views"][split]
    samples = [render_sample(ident, c["tools"], c["size"], split, v, c["seed"], c["views_per_bin"],
                             c["backgrounds"][split]) for v in range(views)]
    t2 = time.perf_counter()
    cpu2 = time.process_time()
    batch = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}
    info = dict(ident.stats, prepare_s=t1 - t0, render_s=t2 - t1, views=views,
                prepare_cpu_s=cpu1 - cpu0, render_cpu_s=cpu2 - cpu1)
    return split, row, batch, info


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def _add(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    # The dispatcher may already define shared options (--work-dir, --seed).
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--work-dir", default=None, help="work folder (default $FACE_WORK_DIR or ~/.cache/...)")
    _add(parser, "--seed", type=int, default=0, help="random seed")
    _add(parser, "--fits", default=None, help="fits file (default <work>/fit/fits.npz)")
    _add(parser, "--size", type=int, default=DEFAULT_SIZE, help="crop side in pixels (the DFF input size)")
    _add(parser, "--train-samples", type=int, default=DEFAULT_TRAIN_SAMPLES,
         help="about this many training samples; views per identity follow")
    _add(parser, "--views", type=int, default=None, help="views per training identity (overrides --train-samples)")
    _add(parser, "--heldout-views-per-bin", type=int, default=DEFAULT_HELDOUT_VIEWS_PER_BIN,
         help="held-out views per yaw bin [0,30], [30,60], [60,90] (signs alternate)")
    _add(parser, "--photo-views", type=int, default=DEFAULT_PHOTO_VIEWS,
         help="jittered crops of each training photo itself, labelled by its fit, for the DFF (0: none)")
    _add(parser, "--limit", type=int, default=0, help="use only the first N identities of each split (trials)")
    _add(parser, "--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    _add(parser, "--chunk", type=int, default=16, help="identities per checkpoint")
    _add(parser, "--restart", action="store_true", help="discard earlier outputs and start over")
    _add(parser, "--sheet-samples", type=int, default=32, help="samples on the contact sheet")


def identity_rows(fits: Fits, limit: int) -> dict:
    """Rows of the fits per split (train, heldout), the first ``limit`` of each when set."""
    rows = {s: np.flatnonzero(fits.split.astype(str) == s) for s in SPLITS}
    if limit:
        rows = {s: r[:limit] for s, r in rows.items()}
    return rows


def _build_backgrounds(fits: Fits, rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    patches = []
    for row in rows:
        try:
            image = read_image(fits, int(row))
        except (OSError, FileNotFoundError):
            continue
        patches += background_patches(image, fits.landmarks[row], size, BACKGROUND_PATCHES_PER_PHOTO, rng)
    if not patches:  # no photo readable: flat grey, so that the stage still runs
        patches = [np.full((size, size, 3), 127, np.uint8)]
    return np.stack(patches)


def run(args: argparse.Namespace) -> int:
    stage = Stage(STAGE, getattr(args, "work_dir", None), seed=getattr(args, "seed", 0))
    log = stage.log
    fits_path = Path(args.fits) if getattr(args, "fits", None) else stage.input(FIT_STAGE, FITS_FILE)
    fits = Fits.load(fits_path)
    rows = identity_rows(fits, args.limit)
    n_train = len(rows["train"])
    views = {"train": args.views or max(1, int(round(args.train_samples / max(n_train, 1)))),
             "heldout": args.heldout_views_per_bin * len(YAW_BINS_DEG)}
    config = {"fits": fits.fingerprint(), "size": args.size, "seed": stage.seed, "views": views,
              "views_per_bin": args.heldout_views_per_bin, "identities": {s: len(r) for s, r in rows.items()},
              "version": 1}
    totals = {s: len(rows[s]) * views[s] for s in SPLITS}
    resumed = start_or_resume(stage, config, totals, args.size, args.restart)
    if resumed is None:
        return 2
    done, outputs = resumed
    log.info("synthesize: %s identities, %s views each -> %s samples at %dx%d (fits %s); resuming at %s",
             {s: len(r) for s, r in rows.items()}, views, totals, args.size, args.size, fits_path, done)

    t_start = time.perf_counter()
    # One thread per process: the workers fill the cores, and spinning BLAS or OpenCV threads
    # beside them slow the many small operations several-fold.
    restore = (cv2.getNumThreads(), limit_blas_threads(1))
    cv2.setNumThreads(1)
    rng = stage.rng()
    backgrounds = {s: _build_backgrounds(fits, rows[s], args.size, rng) for s in SPLITS}
    log.info("background bank: %s patches (%.1f s)", {s: len(b) for s, b in backgrounds.items()},
             time.perf_counter() - t_start)
    tools = default_tools()
    ctx = {"fits": fits, "tools": tools, "size": args.size, "seed": stage.seed, "views": views,
           "views_per_bin": args.heldout_views_per_bin, "backgrounds": backgrounds}
    tasks = [(s, int(r)) for s in SPLITS for r in rows[s][done[s]:]]

    from tqdm import tqdm

    remaining = sum(views[s] for s, _ in tasks)
    bar = tqdm(total=sum(totals.values()), initial=sum(totals.values()) - remaining, unit="sample",
               desc="synthesize", dynamic_ncols=True)
    pool = None
    if args.workers > 1 and len(tasks) > 1:
        pool = mp.get_context("fork").Pool(args.workers, _init_worker, (ctx,))
        results = pool.imap(_render_identity, tasks, chunksize=1)
    else:
        _init_worker(ctx)
        results = map(_render_identity, tasks)
    t_loop = time.perf_counter()
    cpu = {"prepare_s": 0.0, "render_s": 0.0, "prepare_cpu_s": 0.0, "render_cpu_s": 0.0, "samples": 0,
           "identities": 0}
    chunk_stats: list[dict] = []
    try:
        for split, _row, batch, info in results:
            k = done[split]
            lo = k * views[split]
            for key, arr in batch.items():
                outputs[split][key][lo:lo + len(arr)] = arr
            done[split] = k + 1
            for key in ("prepare_s", "render_s", "prepare_cpu_s", "render_cpu_s"):
                cpu[key] += info[key]
            cpu["samples"] += info["views"]
            cpu["identities"] += 1
            chunk_stats.append(info)
            bar.update(info["views"])
            if len(chunk_stats) >= args.chunk or done[split] == len(rows[split]):
                _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop)
                chunk_stats = []
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        _CTX.clear()
        cv2.setNumThreads(restore[0])
        if restore[1] is not None:
            limit_blas_threads(restore[1])
        if chunk_stats:
            _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop)

    wall = time.perf_counter() - t_loop

    t_photos = time.perf_counter()
    photo_counts = make_photo_views(stage, fits, rows, tools, args.size, args.photo_views, stage.seed) \
        if args.photo_views > 0 else {}
    photo_s = time.perf_counter() - t_photos
    summary = {
        "counts": totals, "views": views, "size": args.size, "seed": stage.seed, "fits": str(fits_path),
        "workers": args.workers, "rendered_this_run": cpu["samples"],
        "wall_s_this_run": round(wall, 1), "total_s_this_run": round(time.perf_counter() - t_start, 1),
        "wall_ms_per_sample": round(1000 * wall / max(cpu["samples"], 1), 2),
        # worker wall time (shared machines inflate it) and worker CPU time (one core's cost)
        "worker_ms_per_sample_render": round(1000 * cpu["render_s"] / max(cpu["samples"], 1), 2),
        "worker_ms_per_identity_texture": round(1000 * cpu["prepare_s"] / max(cpu["identities"], 1), 1),
        "cpu_ms_per_sample_render": round(1000 * cpu["render_cpu_s"] / max(cpu["samples"], 1), 2),
        "cpu_ms_per_identity_texture": round(1000 * cpu["prepare_cpu_s"] / max(cpu["identities"], 1), 1),
        "cpu_ms_per_sample_all": round(1000 * (cpu["render_cpu_s"] + cpu["prepare_cpu_s"])
                                       / max(cpu["samples"], 1), 2),
    }
    if cpu["samples"] == 0 and stage.path("summary.json").exists():
        import json  # nothing rendered now: keep the timings of the run that rendered

        summary = dict(json.loads(stage.path("summary.json").read_text()), counts=totals)
    summary["photo_counts"] = photo_counts
    if photo_counts and photo_s > 1.0:
        summary["photo_views_s"] = round(photo_s, 1)
    sheets = write_sheets(stage, args.sheet_samples)
    summary["sheets"] = [str(p) for p in sheets]
    stage.save_json("summary.json", summary)
    if len(stage.metrics()) > 1:
        stage.plot_curves("samples_done", ["wall_ms_per_sample", "texture_seen", "coverage"])
    log.info("done: %s", summary)
    return 0


def _checkpoint(stage, outputs, config, done, chunk_stats, split, views, t_loop) -> None:
    save_progress(stage, outputs, config, done)
    out = outputs[split]
    hi = done[split] * views[split]
    lo = max(0, hi - sum(s["views"] for s in chunk_stats))
    coverage = float((out["vertex_ids"][lo:hi] != BACKGROUND_ID).mean()) if hi > lo else 0.0
    n = sum(s["views"] for s in chunk_stats)
    stage.record(split=split, samples_done=int(sum(done[s] * views[s] for s in SPLITS)),
                 wall_ms_per_sample=round(1000 * (time.perf_counter() - t_loop)
                                          / max(sum(done[s] * views[s] for s in SPLITS), 1), 2),
                 cpu_ms_per_sample=round(1000 * sum(s.get("render_cpu_s", s["render_s"]) for s in chunk_stats)
                                         / max(n, 1), 2),
                 texture_seen=float(np.mean([s["seen"] for s in chunk_stats])),
                 texture_mirrored=float(np.mean([s["mirrored"] for s in chunk_stats])),
                 texture_diffused=float(np.mean([s["diffused"] for s in chunk_stats])),
                 coverage=coverage)


# --------------------------------------------------------------------------------------------
# Contact sheets
# --------------------------------------------------------------------------------------------

def colourise_vertex_ids(vid: np.ndarray, tools: MeshTools) -> np.ndarray:
    """BGR picture of a vertex-id map: each vertex coloured by its mean-shape position."""
    out = np.zeros((*vid.shape, 3), np.uint8)
    fg = vid != BACKGROUND_ID
    out[fg] = tools.vertex_colours[vid[fg]]
    return out


def draw_sample(image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, scale: int = 2) -> np.ndarray:
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    pts = (landmarks + 0.5) * scale - 0.5
    for i, ((x, y), v) in enumerate(zip(pts, visible)):
        colour = (0, 255, 0) if v else (0, 0, 255)
        if i < 17:
            colour = (255, 255, 0) if v else (255, 0, 255)
        cv2.circle(big, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
    return big


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = t
    return sheet


def write_sheets(stage: Stage, count: int = 32) -> list[Path]:
    """Contact sheets of a stage that writes renders (``synthesize``, ``profile``): samples
    sorted by yaw with their 68 landmarks (jaw cyan/magenta, others green; red or magenta = not
    visible), and image | vertex-id map pairs."""
    import json


    tools = None
    written = []
    for split in (*SPLITS, *PHOTO_SPLITS):
        try:
            data = load_outputs(stage.root, split, stage.name)
        except FileNotFoundError:
            continue
        n = len(data["view"])
        if split in SPLITS:  # renders: only the samples done so far
            prog = json.loads(stage.path(SYNTH_PROGRESS_FILE).read_text())
            n = min(prog["done"][split] * prog["config"]["views"][split], n)
        if n == 0 or count <= 0:
            continue
        if tools is None:
            tools = default_tools()
        idx = np.linspace(0, n - 1, min(count, n)).astype(int)
        idx = idx[np.argsort(data["camera"][idx, cam.YAW], kind="stable")]  # left-to-right by yaw
        tiles = [draw_sample(data["images"][i], data["landmarks"][i], data["landmark_visible"][i]) for i in idx]
        path = stage.path(f"contact_sheet_{split}.png")
        cv2.imwrite(str(path), _grid(tiles, 8))
        written.append(path)
        pairs = []
        for i in idx[:: max(1, len(idx) // 8)][:8]:
            ids = colourise_vertex_ids(data["vertex_ids"][i], tools)
            pairs.append(np.concatenate([data["images"][i], ids], axis=1))
        path = stage.path(f"vertex_ids_{split}.png")
        cv2.imwrite(str(path), cv2.resize(_grid(pairs, 4), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="face-align-train synthesize", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
