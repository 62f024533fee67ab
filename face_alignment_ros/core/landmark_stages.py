"""Final 2D stages after the cascade, free of the shape model.

The cascade's 68 targets are bound to the 3DMM between iterations (eq. 6-8 re-fit them), so
what the model cannot express (e.g. 300-W's hand-placed jaw line) stays in the output. A final
stage regresses a 2D displacement of the 68 landmarks from the descriptors sampled *at those
landmarks*, SDM-style, with the same ridge regression as the cascade. It moves only the output
landmarks: camera, shape, mesh and ``landmarks_3d`` stay the cascade's fit.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from face_alignment_ros.core.cascade import CascadeState, Sampler
from face_alignment_ros.core.descent_model import DescentModel


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
