"""Stage ``fit``: fit the 3DMM (weak-perspective camera, 40 identity, 10 expression) to the 68
landmarks of every 300-W photo, train and held-out alike (held-out fits only serve to render
held-out validation identities; each row records its split).

Per photo, ``N_ALTERNATIONS`` rounds of
  1. contour marching: ``model.contour_landmarks(R, p)`` moves each jaw landmark to the
     silhouette vertex of the current pose and shape (jaw points on a photo are outline points);
  2. camera: ``core.camera.fit_camera`` on those vertices of the current shape;
  3. shape: ``core.shape_fit.fit_shape`` (paper eq. 6-8) on all 68 points.

Output ``<work>/fit/fits.npz``, one row per photo:
  subset, name, split ('train' | 'heldout'), image_path    str arrays (n,)
  camera (n, 6)            (s, pitch, yaw, roll, tx, ty) in image pixels, radians
  shape_params (n, 50)     alpha (40, mm) then beta (10)
  residual_nme (n,)        mean landmark error / sqrt(w * h) of the annotated landmark box
  landmarks (n, 68, 2)     annotated landmarks (pixels of the photo)
  fitted_landmarks (n, 68, 2)  projection of the fitted landmark vertices
  landmark_ids (n, 68)     vertex ids after contour marching (jaw = silhouette vertices)
  image_size (n, 2)        (height, width) of the photo
  regularisation ()        the lambda of eq. 8 used
Plus ``summary.json``, ``residual_hist.png``, ``overlay_*.png`` and ``lambda_sweep.json``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from face_alignment_ros.common.render_format import FITS_FILE
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.mesh_topology import front_facing
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.shape_fit import fit_shape
from face_alignment_ros.evaluation.pts_io import read_pts
from face_alignment_ros.training.photo_split import SUBSETS, list_photos
from face_alignment_ros.training.stage_io import Stage

N_ALTERNATIONS = 10
# lambda of eq. 8 in mm^2 (see shape_fit.fit_shape) is the MAP weight for Gaussian landmark
# noise of sqrt(lambda) mm per coordinate. Chosen self-consistently on the 300-W photos (sweep in
# lambda_sweep.json): the fit's RMS residual is 2.74 mm (7.5 mm^2) at lambda 7 and 2.87 mm
# (8.2 mm^2) at lambda 10, so lambda = 8 matches its own residual; the shape parameters then
# average (p / sigma)^2 ~ 0.7, a plausible posterior mean. lambda <= 1 over-fits (~4 sigma^2).
DEFAULT_REGULARISATION = 8.0
SWEEP_VALUES = (0.3, 1.0, 3.0, 8.0, 30.0, 100.0)


@dataclass
class LandmarkFit:
    camera: np.ndarray          # (6,) image pixels
    shape_params: np.ndarray    # (50,)
    landmark_ids: np.ndarray    # (68,) vertex ids after contour marching
    projected: np.ndarray       # (68, 2) fitted landmark positions
    residual_nme: float         # mean point error / sqrt(w h) of the target landmark box


def landmark_nme(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean point-to-point error over sqrt(w * h) of the target's landmark box."""
    x0, y0, x1, y1 = landmark_box(target)
    norm = float(np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)))
    return float(np.linalg.norm(predicted - target, axis=1).mean() / norm)


def fit_landmarks(model: MorphableModel, targets: np.ndarray, regularisation: float = DEFAULT_REGULARISATION,
                  n_alternations: int = N_ALTERNATIONS) -> LandmarkFit:
    """Contour-aware alternating fit of camera and shape to (68, 2) landmarks in pixels."""
    targets = np.asarray(targets, np.float32)
    sigma = model.shape_sigma
    params = np.zeros(len(sigma), np.float32)
    ids = model.landmarks
    camera = cam.fit_camera(targets, model.vertices(None, ids))
    for _ in range(n_alternations):
        ids = model.contour_landmarks(cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]), params)
        mean, basis = model.basis_rows(ids)
        camera = cam.fit_camera(targets, mean + basis @ params)
        params = fit_shape(targets, camera, mean, basis, sigma, regularisation)
    # Final marching so that the reported ids and residual match the final camera and shape.
    ids = model.contour_landmarks(cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]), params)
    projected = cam.project(camera, model.vertices(params, ids))
    return LandmarkFit(camera, params, ids, projected, landmark_nme(projected, targets))


def _fit_all(model, photos_pts, regularisation, desc, n_alternations=N_ALTERNATIONS):
    from tqdm import tqdm

    return [fit_landmarks(model, pts, regularisation, n_alternations)
            for pts in tqdm(photos_pts, desc=desc, unit="photo", mininterval=1.0)]


def _summary(values: np.ndarray) -> dict:
    return {"count": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values)),
            "p90": float(np.percentile(values, 90)), "max": float(values.max())}


def _plot_histogram(stage: Stage, nme: np.ndarray, split: np.ndarray, subset: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, max(float(np.percentile(nme, 99.5)) * 1.1, 1e-3), 50) * 100
    for name in np.unique(subset):
        ax.hist(nme[subset == name] * 100, bins=bins, alpha=0.6, label=f"{name} ({(subset == name).sum()})")
    ax.axvline(np.median(nme) * 100, color="k", ls="--", lw=1, label=f"median {np.median(nme) * 100:.2f}%")
    ax.set_xlabel("fit residual: mean landmark error / sqrt(w h) of landmark box [%]")
    ax.set_ylabel("photos")
    ax.set_title(f"3DMM fit residual, {len(nme)} photos ({(split == 'heldout').sum()} held out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(stage.path("residual_hist.png"), dpi=100)
    plt.close(fig)


def draw_fit(model: MorphableModel, image: np.ndarray, camera: np.ndarray, params: np.ndarray,
             targets: np.ndarray, projected: np.ndarray, label: str = "", size: int = 320) -> np.ndarray:
    """Photo with the front-facing decimated mesh (grey), annotations (green) and fitted
    landmarks (red), resized to ``size`` x ``size``."""
    import cv2

    h, w = image.shape[:2]
    k = size / max(h, w)
    canvas = np.zeros((size, size, 3), np.uint8)
    small = cv2.resize(image, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    canvas[: small.shape[0], : small.shape[1]] = small
    mesh = cam.project(camera, model.vertices(params, model.decimated)) * k
    tri = model.decimated_triangles[front_facing(mesh, model.decimated_triangles)]
    overlay = canvas.copy()
    cv2.polylines(overlay, [np.round(mesh[t] * 16).astype(np.int32) for t in tri], True,
                  (200, 200, 200), 1, cv2.LINE_AA, shift=4)
    canvas = cv2.addWeighted(overlay, 0.35, canvas, 0.65, 0)
    for (x, y), (px, py) in zip(targets * k, projected * k):
        cv2.line(canvas, (round(x), round(y)), (round(px), round(py)), (0, 255, 255), 1, cv2.LINE_AA)
        cv2.circle(canvas, (round(x), round(y)), 2, (0, 255, 0), -1, cv2.LINE_AA)
        cv2.circle(canvas, (round(px), round(py)), 2, (0, 0, 255), -1, cv2.LINE_AA)
    if label:
        cv2.putText(canvas, label, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, label, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _overlay_grid(stage: Stage, model, data: dict, rows: np.ndarray, filename: str, cols: int = 4) -> None:
    import cv2

    tiles = []
    for i in rows:
        image = cv2.imread(str(data["image_path"][i]), cv2.IMREAD_COLOR)
        yaw = np.degrees(data["camera"][i, cam.YAW])
        label = f"{data['subset'][i]}/{data['name'][i]} yaw {yaw:+.0f} nme {100 * data['residual_nme'][i]:.1f}%"
        tiles.append(draw_fit(model, image, data["camera"][i], data["shape_params"][i], data["landmarks"][i],
                              data["fitted_landmarks"][i], label))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)])
    cv2.imwrite(str(stage.path(filename)), grid)


def _sweep(stage: Stage, model, pts_list, rng, count: int) -> list[dict]:
    """Residual and prior energy of the fits at several lambdas on a random photo subset."""
    pick = rng.choice(len(pts_list), size=min(count, len(pts_list)), replace=False)
    sigma = model.shape_sigma
    out = []
    for lam in SWEEP_VALUES:
        fits = _fit_all(model, [pts_list[i] for i in pick], lam, f"lambda {lam:g}")
        nme = np.array([f.residual_nme for f in fits])
        # residual in model millimetres per coordinate: the MAP-consistent lambda is its square
        rms_mm = np.array([np.sqrt(np.mean((f.projected - pts_list[i]) ** 2)) / f.camera[cam.S]
                           for f, i in zip(fits, pick)])
        z2 = np.array([np.mean((f.shape_params / sigma) ** 2) for f in fits])
        row = {"lambda": lam, "nme_mean": float(nme.mean()), "nme_median": float(np.median(nme)),
               "rms_residual_mm": float(np.sqrt(np.mean(rms_mm ** 2))),
               "prior_z2_mean": float(z2.mean()), "prior_z2_p90": float(np.percentile(z2, 90)),
               "max_abs_z_p90": float(np.percentile([np.abs(f.shape_params / sigma).max() for f in fits], 90))}
        stage.log.info("lambda sweep: %s", {k: round(v, 4) for k, v in row.items()})
        stage.record(sweep_lambda=lam, **{k: v for k, v in row.items() if k != "lambda"})
        out.append(row)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regularisation", type=float, default=DEFAULT_REGULARISATION,
                        help="lambda of eq. 8 in mm^2 (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=N_ALTERNATIONS,
                        help="camera/shape alternations per photo (default %(default)s)")
    parser.add_argument("--sweep", type=int, default=150, metavar="N",
                        help="photos for the lambda sweep report; 0 skips it (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="fit only the first N photos (debugging)")


def run(args: argparse.Namespace) -> int:
    import cv2

    stage = Stage("fit", args.work, args.seed)
    stage.path("metrics.jsonl").unlink(missing_ok=True)  # a rerun recomputes everything
    rng = stage.rng()
    model = MorphableModel.load()
    photos = list_photos("all", args.data, SUBSETS)
    if args.limit:
        photos = photos[: args.limit]
    held = {(p.subset, p.name) for p in list_photos("heldout", args.data, SUBSETS)}
    stage.log.info("fitting %d photos (%d held out), lambda %g, %d alternations", len(photos),
                   sum((p.subset, p.name) in held for p in photos), args.regularisation, args.iterations)
    pts_list = [read_pts(p.pts) for p in photos]
    if any(p.shape != (68, 2) for p in pts_list):
        bad = [str(ph.pts) for ph, p in zip(photos, pts_list) if p.shape != (68, 2)]
        raise ValueError(f"photos without 68 landmarks: {bad[:5]}")

    sweep = _sweep(stage, model, pts_list, rng, args.sweep) if args.sweep else []
    if sweep:
        stage.save_json("lambda_sweep.json", sweep)

    fits = _fit_all(model, pts_list, args.regularisation, "fit", n_alternations=args.iterations)
    sizes = []
    for p in photos:
        image = cv2.imread(str(p.image), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise OSError(f"cannot read {p.image}")
        sizes.append(image.shape[:2])
    data = {
        "subset": np.array([p.subset for p in photos]),
        "name": np.array([p.name for p in photos]),
        "split": np.array(["heldout" if (p.subset, p.name) in held else "train" for p in photos]),
        "image_path": np.array([str(p.image) for p in photos]),
        "camera": np.stack([f.camera for f in fits]).astype(np.float32),
        "shape_params": np.stack([f.shape_params for f in fits]).astype(np.float32),
        "residual_nme": np.array([f.residual_nme for f in fits], np.float32),
        "landmarks": np.stack(pts_list).astype(np.float32),
        "fitted_landmarks": np.stack([f.projected for f in fits]).astype(np.float32),
        "landmark_ids": np.stack([f.landmark_ids for f in fits]).astype(np.int32),
        "image_size": np.array(sizes, np.int32),
        "regularisation": np.float32(args.regularisation),
    }
    tmp = stage.path("fits.tmp.npz")
    np.savez_compressed(tmp, **data)
    tmp.replace(stage.path(FITS_FILE))

    nme = data["residual_nme"]
    sigma = model.shape_sigma
    z2 = np.mean((data["shape_params"] / sigma) ** 2, axis=1)
    summary = {"regularisation": args.regularisation, "alternations": args.iterations,
               "all": _summary(nme), "prior_z2_mean": float(z2.mean()),
               "abs_yaw_deg": _summary(np.degrees(np.abs(data["camera"][:, cam.YAW]))),
               "seconds": round(stage.elapsed(), 1)}
    for key, mask in [("train", data["split"] == "train"), ("heldout", data["split"] == "heldout")] + \
            [(s, data["subset"] == s) for s in SUBSETS]:
        if mask.any():
            summary[key] = _summary(nme[mask])
    summary["lambda_sweep"] = sweep
    stage.save_json("summary.json", summary)
    for key in ("all", "train", "heldout", *SUBSETS):
        if key in summary:
            s = summary[key]
            stage.log.info("residual NME %-11s n=%4d mean %.2f%% median %.2f%% p90 %.2f%% max %.2f%%", key,
                           s["count"], 100 * s["mean"], 100 * s["median"], 100 * s["p90"], 100 * s["max"])
    stage.record(photos=len(photos), nme_mean=summary["all"]["mean"], nme_median=summary["all"]["median"],
                 nme_p90=summary["all"]["p90"], nme_max=summary["all"]["max"])

    _plot_histogram(stage, nme, data["split"], data["subset"])
    n = len(photos)
    grid_rng = np.random.default_rng(args.seed + 1)
    _overlay_grid(stage, model, data, np.sort(grid_rng.choice(n, size=min(16, n), replace=False)),
                  "overlay_random.png")
    _overlay_grid(stage, model, data, np.argsort(-np.abs(data["camera"][:, cam.YAW]))[:16], "overlay_profile.png")
    _overlay_grid(stage, model, data, np.argsort(-nme)[:16], "overlay_worst.png")
    stage.log.info("wrote %s, overlays and residual_hist.png in %s (%.1f s)", stage.path(FITS_FILE),
                   stage.dir, stage.elapsed())
    return 0

