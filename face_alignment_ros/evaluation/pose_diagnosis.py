"""Why the head pose is off: three experiments on held-out renders of known pose (issue 13).

    python -m face_alignment_ros.evaluation.pose_diagnosis [--per-bin N] [--work DIR]

1. Shape-pose ambiguity of the contour-aware fit: camera and shape fitted (``PoseRefiner``,
   10 sweeps from the frontal mean face) to each render's *true* 68 landmarks (300-W convention,
   jaw on the silhouette). The pose error left when the landmarks are perfect.
2. Weak perspective: the 3DMM's landmarks projected by a pinhole camera (focal 1000 px) at 0.3 to
   3 m, fitted the same way; signed yaw error by true |yaw|.
3. Domain shift: the shipped DFF cascade on the renders as they are and degraded (Gaussian blur
   sigma 1.5 px, noise sigma 10 grey levels: features unlike its training), with and without the
   pose refinement; signed yaw error (``yaw shrink``, negative: towards frontal) per yaw bin.
"""
from __future__ import annotations

import argparse

import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.pose_refinement import PoseRefiner
from face_alignment_ros.evaluation import head_pose, metrics

FIT_SWEEPS = 10
FIT_REGULARISATION = 8.0  # the fit stage's lambda
DISTANCES_MM = (300.0, 500.0, 1000.0, 3000.0)
YAWS_DEG = (15.0, 30.0, 45.0, 60.0, 75.0)
BLUR_PX, NOISE = 1.5, 10.0


def _frontal_camera(points: np.ndarray, model) -> np.ndarray:
    return cam.fit_camera(points, model.vertices(None, model.landmarks))


def fit_to_landmarks(model, points: np.ndarray) -> np.ndarray:
    """Rotation of the contour-aware camera + shape fit to (68, 2) landmarks."""
    refiner = PoseRefiner(model, iterations=FIT_SWEEPS)
    params = np.zeros(model.n_id + model.n_exp, np.float32)
    camera, _ = refiner.refine(points, _frontal_camera(points, model), params, None, FIT_REGULARISATION)
    return cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1])


def _bins(rows: list[dict]) -> str:
    out = []
    for b, name in enumerate(metrics.YAW_BIN_NAMES):
        s = head_pose.summarise_pose([r for r in rows if metrics.yaw_bin(r["yaw_deg"]) == b])
        out.append(f"{name} geodesic {s['geodesic_mean']:5.2f} yaw shrink {s['yaw_shrink']:+6.2f}")
    return " | ".join(out)


def ambiguity(dataset, model) -> str:
    rows = []
    for s in dataset:
        rows.append(dict(head_pose.pose_errors(fit_to_landmarks(model, s.landmarks), s.rotation), yaw_deg=s.yaw_deg))
    return "1. fit to the true landmarks: " + _bins(rows)


def weak_perspective(model, seed: int = 0, faces: int = 10) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for z in DISTANCES_MM:
        errs = {}
        for yaw in YAWS_DEG:
            e = []
            for k in range(faces):
                sign = 1.0 if k % 2 else -1.0
                params = (rng.standard_normal(model.n_id + model.n_exp) * model.shape_sigma * 0.7).astype(np.float32)
                pitch, roll = np.radians(rng.normal(0, 8, 2))
                rot = cam.rotation_matrix(pitch, np.radians(sign * yaw), roll)
                pts = model.vertices(params, model.contour_landmarks(rot, params)) @ rot.T
                pts[:, 2] += z
                image = 1000.0 * pts[:, :2] / pts[:, 2:3] + 300.0
                fitted = np.degrees(cam.rotation_angles(fit_to_landmarks(model, image))[1])
                e.append(sign * (fitted - sign * yaw))
            errs[yaw] = float(np.mean(e))
        lines.append(f"2. pinhole at {z / 1000:.1f} m, signed yaw error by |yaw| "
                     + ", ".join(f"{y:.0f}: {v:+.2f}" for y, v in errs.items()))
    return lines


def domain_shift(dataset, aligner, seed: int = 0) -> list[str]:
    import cv2

    rng = np.random.default_rng(seed)
    refiner = aligner.pose_refiner or PoseRefiner(aligner.model)
    lines = []
    for degraded in (False, True):
        rows = {"cascade": [], "refined": []}
        for s in dataset:
            image = s.image
            if degraded:
                noisy = cv2.GaussianBlur(image.astype(np.float32), (0, 0), BLUR_PX) + rng.normal(0, NOISE, image.shape)
                image = np.clip(noisy, 0, 255).astype(np.uint8)
            for name, ref in (("cascade", None), ("refined", refiner)):
                aligner.pose_refiner = ref
                face = aligner.align(image, landmark_box(s.landmarks), box_kind="landmarks")
                rows[name].append(dict(head_pose.pose_errors(face.rotation, s.rotation), yaw_deg=s.yaw_deg))
        for name, rr in rows.items():
            lines.append(f"3. {'degraded' if degraded else 'clean':8s} renders, {name:7s}: " + _bins(rr))
    aligner.pose_refiner = refiner
    return lines


def main(argv=None) -> int:
    from face_alignment_ros.core.aligner import FaceAligner
    from face_alignment_ros.evaluation.datasets import synthetic_renders

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-bin", type=int, default=40, help="renders per yaw bin")
    p.add_argument("--work", default=None, help="training work folder holding synthesize/ (default $FACE_WORK_DIR)")
    args = p.parse_args(argv)
    dataset = synthetic_renders("heldout", args.work, per_bin=args.per_bin)
    aligner = FaceAligner.from_default(detector=None)
    print(f"{len(dataset)} held-out renders ({args.per_bin} per yaw bin)")
    print(ambiguity(dataset, aligner.model))
    for line in weak_perspective(aligner.model) + domain_shift(dataset, aligner):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
