"""Final 2D stages after the cascade, free of the shape model.

The cascade's 68 targets are bound to the 3DMM between iterations (eq. 6-8 re-fit them), so
what the model cannot express (e.g. 300-W's hand-placed jaw line) stays in the output. A final
stage regresses a 2D displacement of the 68 landmarks from the descriptors sampled *at those
landmarks*, SDM-style, with the same ridge regression as the cascade. It moves only the output
landmarks: camera, shape, mesh and ``landmarks_3d`` stay the cascade's fit.

Fine 2D stages follow, the same regression on gradient-orientation histograms read at the
landmarks from a grey crop of the image over the same box (core/gradient_histograms.py; 128 px
by default, the cascade's own crop): edges locate what the DFF's resolution no longer does.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import cv2
import numpy as np

from face_alignment_ros.core.cascade import CascadeState, Sampler
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.face_crop import crop_image
from face_alignment_ros.core.gradient_histograms import HistogramLayout, histograms_at, orientation_channels


def landmark_features(sampler: Sampler, landmarks: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """psi: the descriptors at the 68 landmarks (crop px), flattened (zero outside the crop)."""
    return np.asarray(sampler(np.asarray(landmarks, np.float32), camera), np.float32).reshape(-1)


def refine_landmarks(descent: DescentModel, sampler: Sampler, state: CascadeState,
                     stages: int | None = None) -> CascadeState:
    """Apply the descent model's final 2D stages (all, or the first ``stages``) to the state's
    68 landmarks; each new set is appended to the history."""
    n = descent.landmark_iterations if stages is None else min(stages, descent.landmark_iterations)
    for k in range(n):
        x = state.landmarks + descent.landmark_step(k, landmark_features(sampler, state.landmarks, state.camera))
        state = replace(state, landmarks=x.astype(np.float32), history=state.history + [x])
    return state


# The annotated training photos reach about 45 deg of yaw: the annotation offset and shape stage
# learned on them apply in full up to there and fade out by 60 deg, beyond which only fitted
# labels were seen, and the fitted shape stage takes over
ANNOTATION_YAW_DEG = (45.0, 60.0)


def output_convention(descent: DescentModel, landmarks: np.ndarray, yaw: float) -> np.ndarray:
    """The output landmarks: ``landmarks`` (crop pixels) in the annotators' convention (the
    descent model's annotation offset and shape stage) up to the yaw (radians) that the annotated
    photos cover, in the 3DMM's fitted one (its fitted shape stage) beyond, blended between."""
    if not descent.has_output_stages:
        return landmarks
    full, zero = np.radians(ANNOTATION_YAW_DEG)
    weight = float(np.clip((zero - abs(float(yaw))) / (zero - full), 0.0, 1.0))
    moves = np.zeros_like(landmarks)
    if descent.annotation_offset is not None:
        moves += weight * descent.annotation_offset
    if weight > 0 and descent.has_shape_stage("annotation_shape"):
        moves += weight * descent.shape_step("annotation_shape", landmarks)
    if weight < 1 and descent.has_shape_stage("fitted_shape"):
        moves += (1 - weight) * descent.shape_step("fitted_shape", landmarks)
    return (landmarks + moves).astype(np.float32)


def fitted_convention(descent: DescentModel, landmarks: np.ndarray) -> np.ndarray:
    """``landmarks`` (crop pixels) moved by the descent model's fitted shape stage, if any: the
    points in the 3DMM's own convention, for the pose refit to fit."""
    if not descent.has_shape_stage("fitted_shape"):
        return landmarks
    return (landmarks + descent.shape_step("fitted_shape", landmarks)).astype(np.float32)


def fine_crop(image_bgr: np.ndarray, crop_box, layout: HistogramLayout, crop: np.ndarray | None = None) -> np.ndarray:
    """The grey fine crop of the same box as the cascade's crop (``layout.crop_size`` px); the
    cascade's own ``crop`` serves where it has that size."""
    if crop is None or crop.shape[0] != layout.crop_size:
        crop = crop_image(image_bgr, crop_box, layout.crop_size)[0]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)


def mirror_fine_crop(gray_fine: np.ndarray, crop_size: int) -> np.ndarray:
    """The fine crop of the mirrored crop: crop x -> crop_size - 1 - x is, in fine pixels,
    u -> (crop_size - 1) s - u (s = fine / crop size), not the fine crop's own flip."""
    side = gray_fine.shape[1]
    flip = np.float32([[-1, 0, (crop_size - 1) * side / crop_size], [0, 1, 0]])
    return cv2.warpAffine(gray_fine, flip, (side, gray_fine.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def fine_points(landmarks: np.ndarray, crop_size: int, layout: HistogramLayout) -> np.ndarray:
    """Landmarks in the cascade's crop pixels -> the fine crop's pixels: both crops map the same
    box linearly onto their pixels, so points just scale."""
    return np.asarray(landmarks, np.float64) * (layout.crop_size / crop_size)


def refine_fine(descent: DescentModel, gray_fine: np.ndarray, state: CascadeState,
                stages: int | None = None) -> CascadeState:
    """Apply the descent model's fine 2D stages to the state's landmarks, reading ``gray_fine``
    (``fine_crop`` of the face's crop box): its local ones, then its global ones (all, or the
    first ``stages``)."""
    n = descent.fine_iterations if stages is None else min(stages, descent.fine_iterations)
    steps = [partial(descent.local_step, k) for k in range(descent.local_iterations)] + \
        [partial(descent.fine_step, k) for k in range(n)]
    channels = orientation_channels(gray_fine, descent.fine_layout) if steps else None
    for step in steps:  # each reads the (68, H) histograms at the current landmarks
        h = histograms_at(channels, fine_points(state.landmarks, descent.crop_size, descent.fine_layout),
                          descent.fine_layout)
        x = state.landmarks + step(h)
        state = replace(state, landmarks=x.astype(np.float32), history=state.history + [x])
    return state
