"""Optional temporal smoothing of a tracked face: the One Euro filter (Casiez, Roussel and Vogel,
"1 Euro Filter: A Simple Speed-based Low-pass Filter for Noisy Input in Interactive Systems",
CHI 2012).

A first-order low-pass filter whose cutoff grows with the signal's speed, so that a slow signal
(jitter) is smoothed hard and a fast one follows with little lag. For a sample x at time t,
dt after the previous one:

    alpha(fc) = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)        (exponential smoothing factor)
    v = (x - x_prev_filtered) / dt;  v_hat = v_hat_prev + alpha(d_cutoff) (v - v_hat_prev)
    fc = min_cutoff + beta * |v_hat|
    x_hat = x_hat_prev + alpha(fc) (x - x_hat_prev)

A face moves as one body, so one cutoff serves all of it, from its speed: the landmarks' RMS
speed in face spans per second (the size-free unit, so the settings suit near and far faces) or
the head's rotation speed in radians per second, whichever is larger. The landmarks, the
scale (in log), the image translation and the rotation are then filtered with that one alpha.
The rotation is filtered on the rotation group: the step from the filtered rotation towards the
new one is alpha times the rotation between them (a slerp), so the result is always a rotation.
Shape and expression parameters are not filtered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.transform import Rotation

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.aligner import FaceResult
from face_alignment_ros.core.face_crop import FACE_SPAN_MM


@dataclass(frozen=True)
class OneEuroSettings:
    min_cutoff: float = 1.0  # Hz: the cutoff of a face at rest (lower: steadier, more lag)
    beta: float = 10.0       # Hz added per face span (or radian) per second of motion
    d_cutoff: float = 1.0    # Hz: the cutoff of the speed estimate itself

    def __post_init__(self):
        for name in ("min_cutoff", "d_cutoff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 Hz, got {value}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")


def smoothing_factor(dt: float, cutoff_hz: float) -> float:
    """alpha of an exponential low-pass with this cutoff at this sample period."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class FaceSmoother:
    """One Euro filter of one face's landmarks and pose (its camera w). One per track."""

    def __init__(self, settings: OneEuroSettings):
        self.settings = settings
        self._t: float | None = None
        self._landmarks = self._log_scale = self._translation = self._rotation = None
        self._landmark_speed = np.zeros((0, 2))
        self._angular_speed = np.zeros(3)

    def __call__(self, t: float, face: FaceResult) -> FaceResult:
        """``face`` with smoothed landmarks and camera. The first sample, and a sample whose
        time does not advance (a replayed or unstamped stream), restart the filter there."""
        rotation = Rotation.from_matrix(np.asarray(face.rotation, np.float64))
        landmarks = np.asarray(face.landmarks, np.float64)
        log_scale = math.log(float(face.camera[cam.S]))
        translation = np.asarray(face.camera[cam.TX:cam.TY + 1], np.float64)
        dt = None if self._t is None else t - self._t
        if dt is None or not (math.isfinite(dt) and dt > 0):
            self._t, self._landmarks, self._log_scale = t, landmarks, log_scale
            self._translation, self._rotation = translation, rotation
            self._landmark_speed, self._angular_speed = np.zeros_like(landmarks), np.zeros(3)
            return face
        s = self.settings
        a_speed = smoothing_factor(dt, s.d_cutoff)
        self._landmark_speed += a_speed * ((landmarks - self._landmarks) / dt - self._landmark_speed)
        turn = (self._rotation.inv() * rotation).as_rotvec()  # in the filtered head's frame
        self._angular_speed += a_speed * (turn / dt - self._angular_speed)
        span_px = math.exp(self._log_scale) * FACE_SPAN_MM
        speed = max(float(np.sqrt(np.mean(np.sum(self._landmark_speed ** 2, axis=1)))) / span_px,
                    float(np.linalg.norm(self._angular_speed)))
        a = smoothing_factor(dt, s.min_cutoff + s.beta * speed)
        self._t = t
        self._landmarks = self._landmarks + a * (landmarks - self._landmarks)
        self._log_scale += a * (log_scale - self._log_scale)
        self._translation = self._translation + a * (translation - self._translation)
        self._rotation = self._rotation * Rotation.from_rotvec(a * turn)
        camera = np.array([math.exp(self._log_scale), *cam.rotation_angles(self._rotation.as_matrix()),
                           *self._translation], np.float32)
        return replace(face, landmarks=self._landmarks.astype(np.float32), camera=camera)
