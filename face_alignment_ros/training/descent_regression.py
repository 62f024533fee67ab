"""Learning the generic descent directions: ridge regressions of Sec. III-C4 (eq. 9-11).

The learner drives the same ``Cascade.features`` / ``Cascade.update`` as inference, so every
iteration's regressor is trained on the states the previous regressors really produce
("update the generic face model between iterations").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.cascade import Cascade, CascadeState, Sampler
from face_alignment_ros.core.descent_model import DescentModel

DEFAULT_LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class TrainingSample:
    """One perturbed initialisation: its descriptor sampler factory, start and ground truth
    (all crop pixels). ``make_sampler`` is called once per iteration, so heavy descriptor maps
    need not stay in memory."""
    make_sampler: Callable[[], Sampler]
    state: CascadeState
    target_landmarks: np.ndarray   # (68, 2)
    target_camera: np.ndarray      # (6,)
    normaliser: float = 1.0        # e.g. inter-pupil distance, for reporting NME


def wrap_angles(delta_w: np.ndarray) -> np.ndarray:
    """Camera differences with the angle components wrapped to (-pi, pi]."""
    out = np.array(delta_w, np.float32)
    angles = out[..., cam.PITCH:cam.ROLL + 1]
    out[..., cam.PITCH:cam.ROLL + 1] = (angles + np.pi) % (2 * np.pi) - np.pi
    return out


def ridge_regression(features: np.ndarray, targets: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Paper eq. 9-11: R, b = argmin sum ||y - R phi - b||^2 + lam' ||R||^2, closed form.

    lam is relative: lam' = lam * trace(Phi_c^T Phi_c) / D, so one grid of lambdas fits any
    descriptor. Returns R (T, D) and b (T,). Uses the dual form when samples < dimensions.
    """
    phi = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mu_phi, mu_y = phi.mean(axis=0), y.mean(axis=0)
    phi_c, y_c = phi - mu_phi, y - mu_y
    n, d = phi_c.shape
    scale = max(float(np.einsum("ij,ij->", phi_c, phi_c)) / d, 1e-12)
    reg = lam * scale
    if n < d:
        alpha = np.linalg.solve(phi_c @ phi_c.T + reg * np.eye(n), y_c)
        r = (phi_c.T @ alpha).T
    else:
        r = np.linalg.solve(phi_c.T @ phi_c + reg * np.eye(d), phi_c.T @ y_c).T
    b = mu_y - r @ mu_phi
    return r.astype(np.float32), b.astype(np.float32)


def landmark_error(states: Sequence[CascadeState], samples: Sequence[TrainingSample]) -> float:
    """Mean normalised landmark error (NME) of states against their targets."""
    return float(np.mean([np.linalg.norm(st.landmarks - s.target_landmarks, axis=1).mean() / s.normaliser
                          for st, s in zip(states, samples)]))


def _features(cascade: Cascade, samples, states, desc: str) -> np.ndarray:
    return np.stack([cascade.features(s.make_sampler(), st)
                     for s, st in tqdm(list(zip(samples, states)), desc=desc, leave=False)])


def learn_descent(cascade: Cascade, train: Sequence[TrainingSample], validation: Sequence[TrainingSample],
                  iterations: int, regularisation: float, lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                  report: Callable[[dict], None] | None = None, **model_fields) -> DescentModel:
    """Learn ``iterations`` regressors; lambda chosen per iteration by validation NME.

    ``regularisation`` is the shape prior weight of eq. 6-8 used between iterations;
    ``model_fields`` are the DescentModel's other fields (descriptor, descriptor_dim,
    crop_size, box_priors, provenance, extra).
    """
    states = [s.state for s in train]
    val_states = [s.state for s in validation]
    mats = {k: [] for k in ("R_X", "b_X", "R_w", "b_w")}
    record = {"iteration": 0, "train_nme": landmark_error(states, train),
              "val_nme": landmark_error(val_states, validation)}
    if report:
        report(record)
    for k in range(iterations):
        phi = _features(cascade, train, states, f"features it{k + 1} train")
        phi_val = _features(cascade, validation, val_states, f"features it{k + 1} val")
        dx = np.stack([(s.target_landmarks - st.landmarks).reshape(-1) for s, st in zip(train, states)])
        dw = wrap_angles(np.stack([s.target_camera - st.camera for s, st in zip(train, states)]))
        best = None
        for lam in lambdas:
            r, b = ridge_regression(phi, np.concatenate([dx, dw], axis=1), lam)
            trial = [cascade.update(st, r[:dx.shape[1]] @ f + b[:dx.shape[1]], r[dx.shape[1]:] @ f + b[dx.shape[1]:],
                                    regularisation) for st, f in zip(val_states, phi_val)]
            err = landmark_error(trial, validation)
            if best is None or err < best[0]:
                best = (err, lam, r, b, trial)
        err, lam, r, b, val_states = best
        nx = dx.shape[1]
        mats["R_X"].append(r[:nx])
        mats["b_X"].append(b[:nx])
        mats["R_w"].append(r[nx:])
        mats["b_w"].append(b[nx:])
        states = [cascade.update(st, r[:nx] @ f + b[:nx], r[nx:] @ f + b[nx:], regularisation)
                  for st, f in zip(states, phi)]
        record = {"iteration": k + 1, "lambda": lam, "train_nme": landmark_error(states, train), "val_nme": err}
        if report:
            report(record)
    return DescentModel(R_X=np.stack(mats["R_X"]), b_X=np.stack(mats["b_X"]), R_w=np.stack(mats["R_w"]),
                        b_w=np.stack(mats["b_w"]), regularisation=regularisation, **model_fields)
