"""The cascaded regression of Sec. III-C: the algorithm alone, in crop pixels.

Each iteration k:
  1. samples descriptors at the 160 dense vertices projected by the current 3DMM and camera,
     zero where a vertex is hidden;
  2. applies the descent directions (eq. 4, 5) to the 68 targets X and the camera w;
  3. re-fits the shape parameters to X (eq. 6-8), jaw points sliding on the silhouette;
  4. recomputes visibility with the depth buffer.

``Cascade.run`` is the one loop over the iterations: the aligner, the descent learner's
evaluation (errors from the state's ``history``) and the stage benchmark (timing through the
per-iteration hook) all run it. The descent learner fits each iteration's regressor with the same
``features`` and ``update``, so training and inference share one code path.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.face_crop import FACE_SPAN_MM, initial_camera
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.shape_fit import fit_shape
from face_alignment_ros.core.visibility import VisibilityTester

# sampler(points (n, 2) crop px, camera (6,) crop px) -> (n, D) descriptors
Sampler = Callable[[np.ndarray, np.ndarray], np.ndarray]
# hook(k, part) -> a context manager entered around ``part`` of iteration k (0-based), ``part``
# one of ITERATION_PARTS: the whole iteration, then in it the sampling, the regression and the
# shape re-fit with visibility. Used to time or watch the loop without writing it again.
IterationHook = Callable[[int, str], AbstractContextManager]
ITERATION_PARTS = ("iteration", "features", "regression", "update")
# Fit residual (fraction of the face span) at which the confidence falls to 1/e.
CONFIDENCE_RESIDUAL_SCALE = 0.02


def _no_hook(k: int, part: str) -> AbstractContextManager:
    return nullcontext()


@dataclass
class CascadeState:
    landmarks: np.ndarray          # X: (68, 2) crop px
    camera: np.ndarray             # w: (6,) crop px
    shape_params: np.ndarray       # (50,) identity then expression
    dense_visible: np.ndarray      # (160,) bool
    history: list = field(default_factory=list)  # X after each iteration


class Cascade:
    def __init__(self, model: MorphableModel, visibility: VisibilityTester | None = None):
        self.model = model
        self.visibility = visibility or VisibilityTester(model)
        self._dense = model.subset(model.dense_landmarks)
        self._initial: dict[int, CascadeState] = {}  # the mean-face start per crop size

    # --- geometry -------------------------------------------------------------------------
    def dense_points(self, state: CascadeState) -> np.ndarray:
        """The 160 dense vertices of the current shape, model frame (160, 3)."""
        return self._dense.vertices(state.shape_params)

    def landmark_ids(self, camera: np.ndarray, shape_params: np.ndarray) -> np.ndarray:
        """The 68 vertex ids under this pose, jaw on the silhouette."""
        return self.model.contour_landmarks(cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]), shape_params)

    def model_landmarks(self, camera: np.ndarray, shape_params: np.ndarray) -> np.ndarray:
        """Projection of the fitted 3DMM's 68 landmarks (crop px)."""
        mean, basis = self.model.landmark_rows(self.landmark_ids(camera, shape_params))
        return cam.project(camera, mean + basis @ np.asarray(shape_params, np.float32))

    def refit_shape(self, targets: np.ndarray, camera: np.ndarray, shape_params: np.ndarray,
                    regularisation: float) -> np.ndarray:
        """Eq. 6-8 against the 68 targets; the jaw correspondence follows the current pose."""
        mean, basis = self.model.landmark_rows(self.landmark_ids(camera, shape_params))
        return fit_shape(targets, camera, mean, basis, self.model.shape_sigma, regularisation)

    def dense_visibility(self, camera: np.ndarray, shape_params: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return self.visibility.visible(camera, shape_params, dense)

    # --- the cascade ----------------------------------------------------------------------
    def initial_state(self, crop_size: int, camera: np.ndarray | None = None,
                      shape_params: np.ndarray | None = None) -> CascadeState:
        """Mean shape (or given shape) under the canonical crop camera (or a given camera)."""
        if camera is None and shape_params is None and crop_size in self._initial:
            start = self._initial[crop_size]  # the same every frame: computed once
            return replace(start, landmarks=start.landmarks.copy(), camera=start.camera.copy(),
                           shape_params=start.shape_params.copy(), dense_visible=start.dense_visible.copy(),
                           history=[])
        w = initial_camera(crop_size) if camera is None else np.asarray(camera, np.float32).copy()
        p = np.zeros(self.model.n_id + self.model.n_exp, np.float32) if shape_params is None \
            else np.asarray(shape_params, np.float32).copy()
        state = CascadeState(landmarks=self.model_landmarks(w, p), camera=w, shape_params=p,
                             dense_visible=np.ones(len(self.model.dense_landmarks), bool))
        state.dense_visible = self.dense_visibility(w, p, self.dense_points(state))
        if camera is None and shape_params is None:
            self._initial[crop_size] = state
            return self.initial_state(crop_size)
        return state

    def features(self, sampler: Sampler, state: CascadeState) -> np.ndarray:
        """phi: descriptors at the projected dense vertices, zero where hidden, flattened."""
        points = cam.project(state.camera, self.dense_points(state))
        desc = np.asarray(sampler(points, state.camera), np.float32)
        desc = desc * state.dense_visible[:, None]
        return desc.reshape(-1)

    def update(self, state: CascadeState, delta_x: np.ndarray, delta_w: np.ndarray,
               regularisation: float) -> CascadeState:
        """Apply a descent step, re-fit the shape and recompute visibility."""
        x = state.landmarks + np.asarray(delta_x, np.float32).reshape(-1, 2)
        w = state.camera + np.asarray(delta_w, np.float32).reshape(-1)
        w[cam.S] = max(float(w[cam.S]), 1e-3)  # a regression step must never flip the face
        p = self.refit_shape(x, w, state.shape_params, regularisation)
        new = replace(state, landmarks=x, camera=w, shape_params=p, history=state.history + [x])
        new.dense_visible = self.dense_visibility(w, p, self.dense_points(new))
        return new

    def run(self, descent: DescentModel, sampler: Sampler, state: CascadeState,
            iterations: int | None = None, hook: IterationHook | None = None) -> CascadeState:
        """Run the descent's iterations (or the first ``iterations``) from ``state``; the
        result's ``history`` holds X after each one. ``hook``: see ``IterationHook``."""
        count = descent.iterations if iterations is None else min(iterations, descent.iterations)
        hook = hook or _no_hook
        for k in range(count):
            with hook(k, "iteration"):
                with hook(k, "features"):
                    phi = self.features(sampler, state)
                with hook(k, "regression"):
                    delta_x, delta_w = descent.step(k, phi)
                with hook(k, "update"):
                    state = self.update(state, delta_x, delta_w, descent.regularisation)
        return state

    def confidence(self, state: CascadeState) -> float:
        """1 for a self-consistent fit, falling towards 0 as the regressed targets disagree
        with the fitted 3DMM or the last step was still large (the fit had not converged)."""
        span = float(state.camera[cam.S]) * FACE_SPAN_MM
        if not np.isfinite(span) or span <= 0:
            return 0.0
        model_points = self.model_landmarks(state.camera, state.shape_params)
        residual = np.linalg.norm(state.landmarks - model_points, axis=1).mean()
        last_step = 0.0
        if len(state.history) >= 2:
            last_step = np.linalg.norm(state.history[-1] - state.history[-2], axis=1).mean()
        score = (residual + last_step) / span
        return float(np.exp(-score / CONFIDENCE_RESIDUAL_SCALE))
