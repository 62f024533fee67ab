"""Stage ``profile``: large-pose training images made as 300W-LP made them ("face profiling",
Zhu et al., 3DDFA), from each photo and its fit (stage ``fit``).

Each photo's whole head region (face, hair, ears, neck) is turned with its fitted face to a
larger yaw and re-rendered, background included (``training.face_profiling``), instead of a
textured mask on a pasted background (stage ``synthesize``). The head turns the way it already
faces (the side the photo shows stays in view; a near-frontal photo, |yaw| < 5 degrees, turns
either way), so the target |yaw| is never below the photo's own; pitch, roll and expression stay
the fit's. Half the views (``--mirror``) are then mirrored left-right, so that both yaw signs are
covered by every photo.

- training photos: ``--views`` views each, target |yaw| uniform in [``--min-yaw``, ``--max-yaw``]
  (but at least the photo's |yaw|);
- held-out photos (``300w-heldout10``; never trained on): ``--heldout-views-per-bin`` views per
  yaw bin, target |yaw| uniform in the bin (from the photo's |yaw| when that lies in the bin; a
  photo beyond a bin's top turns back to it, by 15 degrees at most): the evaluation's proxy for
  real large-pose photos (``face-align-eval --data profiled-heldout``).

The crop is the turned face's canonical crop jittered like the renders' (``render_views.
jittered_crop_box``); the labels (camera in crop pixels, shape, 68 landmarks with the jaw on
the silhouette and their visibility, dense points, vertex ids) come from the turned fit exactly,
in the renders' layout (``common.render_format.output_specs``) in ``<work>/profile/``. Samples
are seeded by (seed, split, photo, view); the run resumes at its last checkpoint
(``progress.json``).
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from face_alignment_ros.common.render_format import (
    BACKGROUND_ID,
    FIT_STAGE,
    FITS_FILE,
    PROFILE_STAGE,
    SPLITS,
    YAW_BINS_DEG,
    save_progress,
    start_or_resume,
    yaw_bin,
)
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop
from face_alignment_ros.core.morphable_model import IBUG68_MIRROR
from face_alignment_ros.core.threads import limit_blas_threads
from face_alignment_ros.training import face_profiling
from face_alignment_ros.training.mesh_texture import MeshTools, default_tools
from face_alignment_ros.training.render_views import (
    Fits,
    jittered_crop_box,
    read_image,
    sample_record,
    sample_rng,
    visible_surface,
)
from face_alignment_ros.training.stage_io import Stage
from face_alignment_ros.training.synthesize import identity_rows, write_sheets

FRONTAL_DEG = 5.0        # a photo within this of frontal may turn either way
MAX_TURN_BACK_DEG = 15.0  # held-out bin below a photo's yaw: turn back by at most this


def target_yaw(yaw0_deg: float, lo: float, hi: float, rng: np.random.Generator) -> float:
    """Target yaw (degrees, signed) for a photo at ``yaw0_deg``: |yaw| uniform in [lo, hi] but
    not below the photo's own (not turning back by more than MAX_TURN_BACK_DEG), in the
    direction the photo already faces."""
    a0 = abs(yaw0_deg)
    sign = float(np.sign(yaw0_deg)) if a0 >= FRONTAL_DEG else (1.0 if rng.random() < 0.5 else -1.0)
    start = min(max(lo, a0), hi)
    target = rng.uniform(start, hi) if hi > start else hi
    return sign * max(target, a0 - MAX_TURN_BACK_DEG)


def mirror_sample(rec: dict, tv: np.ndarray, visible_all, tools: MeshTools) -> dict:
    """The left-right mirror of a sample: image flipped, landmarks reordered (``IBUG68_MIRROR``),
    camera mirrored (``camera.mirror_camera``: the face taken as symmetric, as for the descent's
    mirrored photos), vertex ids through the mesh's mirror map. ``tv``: the unmirrored view's
    vertices in crop pixels; ``visible_all(ids)``: visibility of vertex ids in that view."""
    size = rec["images"].shape[1]
    mirror = tools.mirror
    out = dict(rec)
    out["images"] = np.ascontiguousarray(rec["images"][:, ::-1])
    vid = np.ascontiguousarray(rec["vertex_ids"][:, ::-1])
    fg = vid != BACKGROUND_ID
    vid[fg] = mirror[vid[fg]]
    out["vertex_ids"] = vid
    out["camera"] = cam.mirror_camera(rec["camera"], size)
    lm = rec["landmarks"][IBUG68_MIRROR].copy()
    lm[:, 0] = size - 1.0 - lm[:, 0]
    out["landmarks"] = lm
    out["landmark_ids"] = mirror[rec["landmark_ids"][IBUG68_MIRROR]].astype(np.int32)
    out["landmark_visible"] = rec["landmark_visible"][IBUG68_MIRROR].copy()
    dense_src = mirror[tools.model.dense_landmarks]  # the vertex shown where each dense point lands
    dense = tv[dense_src, :2].copy()
    dense[:, 0] = size - 1.0 - dense[:, 0]
    out["dense"] = dense
    out["dense_visible"] = visible_all(dense_src)
    return out


def profile_photo(image: np.ndarray, camera: np.ndarray, params: np.ndarray, row: int, split: str,
                  targets: list[tuple[int, float, bool]], size: int, seed: int, tools: MeshTools) -> list[dict]:
    """Profiled views of one photo: ``targets`` are (view, target yaw in degrees, mirrored)."""
    model = tools.model
    verts = model.vertices(params)
    out = []
    surface = None
    for view, target_deg, mirrored in targets:
        rng = sample_rng(seed, split, row, view)
        new_camera = face_profiling.turned_camera(camera, np.radians(target_deg) - float(camera[cam.YAW]))
        box = jittered_crop_box(new_camera, rng)
        output_px = float(box[2] - box[0]) / size
        if surface is None:  # one surface per photo: its vertex density suits every jittered box
            surface = face_profiling.photo_surface(camera, verts, model.triangles, output_px)
        turned = face_profiling.turn_points(surface, camera, new_camera)
        crop = face_profiling.render_profiled(image, surface, turned, box, size)
        camera_crop = face_crop.camera_image_to_crop(new_camera, box, size)
        tv = cam.transform(camera_crop, verts)
        vid, _, _, _ = visible_surface(tv, model.triangles, size)
        bin_ = yaw_bin(np.degrees(camera_crop[cam.YAW]))
        rec = sample_record(tools, crop, vid, camera_crop, np.asarray(params, np.float32), verts, tv, row, view, bin_)
        if mirrored:
            rec = mirror_sample(rec, tv, lambda ids, c=camera_crop: tools.visibility.visible(c, params, verts[ids]),
                                tools)
        out.append(rec)
    return out


def view_plan(split: str, row: int, yaw0_deg: float, views: int, per_bin: int, lo: float, hi: float,
              mirror: float, seed: int) -> list[tuple[int, float, bool]]:
    """(view, target yaw, mirrored) of each view of a photo; seeded per photo."""
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1, row])
    plan = []
    for v in range(views):
        if split == "train":
            b_lo, b_hi = lo, hi
        else:
            b_lo, b_hi = YAW_BINS_DEG[min(v // per_bin, len(YAW_BINS_DEG) - 1)]
        plan.append((v, target_yaw(yaw0_deg, b_lo, b_hi, rng), bool(rng.random() < mirror)))
    return plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--views", type=int, default=4, help="profiled views per training photo")
    parser.add_argument("--heldout-views-per-bin", type=int, default=2, help="views per yaw bin per held-out photo")
    parser.add_argument("--min-yaw", type=float, default=30.0, help="training views: smallest target |yaw| (deg)")
    parser.add_argument("--max-yaw", type=float, default=90.0, help="training views: largest target |yaw| (deg)")
    parser.add_argument("--mirror", type=float, default=0.5, help="fraction of views mirrored left-right")
    parser.add_argument("--size", type=int, default=128, help="crop side (the descent's and network's input)")
    parser.add_argument("--limit", type=int, default=0, help="only this many photos per split (smoke runs)")
    parser.add_argument("--chunk", type=int, default=50, help="photos between checkpoints")
    parser.add_argument("--sheet-samples", type=int, default=48, help="samples per contact sheet")
    parser.add_argument("--restart", action="store_true", help="discard earlier outputs")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    stage = Stage(PROFILE_STAGE, args.work, args.seed)
    log = stage.log
    fits = Fits.load(stage.input(FIT_STAGE, FITS_FILE))
    rows = identity_rows(fits, args.limit)
    views = {"train": args.views, "heldout": args.heldout_views_per_bin * len(YAW_BINS_DEG)}
    config = {"fits": fits.fingerprint(), "size": args.size, "seed": stage.seed, "views": views,
              "views_per_bin": args.heldout_views_per_bin, "yaw": [args.min_yaw, args.max_yaw],
              "mirror": args.mirror, "photos": {s: len(r) for s, r in rows.items()}, "version": 1}
    totals = {s: len(rows[s]) * views[s] for s in SPLITS}
    resumed = start_or_resume(stage, config, totals, args.size, args.restart)
    if resumed is None:
        return 2
    done, outputs = resumed
    log.info("profile: %s photos, %s views each -> %s samples at %d px; resuming at %s",
             config["photos"], views, totals, args.size, done)

    restore = (cv2.getNumThreads(), limit_blas_threads(1))
    cv2.setNumThreads(1)
    tools = default_tools()
    t0 = time.perf_counter()
    made = 0
    bar = tqdm(total=sum(totals.values()), initial=sum(done[s] * views[s] for s in SPLITS), unit="view",
               desc="profile", dynamic_ncols=True)
    try:
        for split in SPLITS:
            since = 0
            for k in range(done[split], len(rows[split])):
                row = int(rows[split][k])
                camera = fits.camera[row]
                plan = view_plan(split, row, float(np.degrees(camera[cam.YAW])), views[split],
                                 args.heldout_views_per_bin, args.min_yaw, args.max_yaw, args.mirror, stage.seed)
                recs = profile_photo(read_image(fits, row), camera, fits.shape_params[row], row, split, plan,
                                     args.size, stage.seed, tools)
                for j, rec in enumerate(recs):
                    for key, arr in outputs[split].items():
                        arr[k * views[split] + j] = rec[key]
                done[split] = k + 1
                made += len(recs)
                since += 1
                bar.update(len(recs))
                if since >= args.chunk or done[split] == len(rows[split]):
                    _checkpoint(stage, outputs, config, done, made, t0)
                    since = 0
    finally:
        bar.close()
        cv2.setNumThreads(restore[0])
        if restore[1] is not None:
            limit_blas_threads(restore[1])
    wall = time.perf_counter() - t0
    summary = {"counts": totals, "views": views, "size": args.size, "seed": stage.seed,
               "made_this_run": made, "wall_s_this_run": round(wall, 1),
               "wall_ms_per_view": round(1000 * wall / max(made, 1), 1),
               "yaw_bin_counts": {s: np.bincount(np.asarray(outputs[s]["yaw_bin"]) + 1, minlength=4)[1:].tolist()
                                  for s in SPLITS}}
    summary["sheets"] = [str(p) for p in write_sheets(stage, args.sheet_samples)]
    stage.save_json("summary.json", summary)
    log.info("done: %s", summary)
    return 0


def _checkpoint(stage: Stage, outputs: dict, config: dict, done: dict, made: int, t0: float) -> None:
    save_progress(stage, outputs, config, done)
    stage.record(views_done=int(sum(done[s] * config["views"][s] for s in SPLITS)),
                 wall_ms_per_view=round(1000 * (time.perf_counter() - t0) / max(made, 1), 1))
