"""Learning the final 2D stages: the ridge path, the stage learner on a toy problem, augmentation,
the saved passes a resumed run reuses."""
from types import SimpleNamespace

import numpy as np
import pytest

from face_alignment_ros.training.descent_regression import ridge_regression
from face_alignment_ros.training.learn_landmark_stages import augment_crop, learn_stages, ridge_path


@pytest.mark.parametrize("chunk", [7, 2048])  # the Gram matrix summed in parts, or at once
def test_ridge_path_matches_ridge_regression(chunk):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 30)).astype(np.float32), rng.normal(size=(200, 4))
    for lam, (r, b) in zip((0.01, 1.0, 100.0), ridge_path(x, y, (0.01, 1.0, 100.0), chunk=chunk)):
        r2, b2 = ridge_regression(x, y, lam)
        np.testing.assert_allclose(r, r2, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, b2, rtol=1e-4, atol=1e-5)


class _OffsetSampler:
    """The toy 'descriptor' at a point is its offset from the truth of sample ``i``."""

    def __init__(self, i, targets):
        self.i, self.targets = i, targets

    def __call__(self, points, camera):
        return np.asarray(points, np.float32) - self.targets[self.i]


def _toy(n=400, seed=0):
    """One linear 2D stage removes the cascade's error exactly: the learner must find it."""
    rng = np.random.default_rng(seed)
    targets = rng.uniform(30, 90, (n, 68, 2)).astype(np.float32)
    starts = targets + rng.normal(0, 3, (n, 68, 2)).astype(np.float32)
    crops = [np.stack([np.full((4, 4), i // 256), np.full((4, 4), i % 256), np.zeros((4, 4))], -1).astype(np.uint8)
             for i in range(n)]  # a crop names its sample
    def prepare(crop):
        return _OffsetSampler(256 * int(crop[0, 0, 0]) + int(crop[0, 0, 1]), targets)

    backend = SimpleNamespace(dim=2, crop_size=4, prepare=prepare)
    cascade = SimpleNamespace(initial_state=lambda size: None,
                              run=lambda descent, sampler, state: SimpleNamespace(landmarks=starts[sampler.i],
                                                                                  camera=np.zeros(6)))
    return targets, crops, backend, cascade


def test_one_stage_learns_the_toy_correction():
    targets, crops, backend, cascade = _toy()
    n = len(crops)
    groups = np.array(["train"] * 300 + ["train-aug"] * 30 + ["val"] * 40 + ["heldout-detector"] * 30)
    data = {"targets": targets, "normalisers": np.full(n, 10.0, np.float32), "groups": groups,
            "yaw_bins": np.full(n, -1)}
    ctx = {"backend": backend, "cascade": cascade, "descent": None, "crops": crops}
    out = learn_stages(ctx, data, stages=2, workers=1)
    for variant in ("clean", "augmented"):
        before, after = out[variant]["nme"][0], out[variant]["nme"][1]
        assert before["val"]["all"] > 10 * after["val"]["all"]
        assert after["heldout-detector"]["all"] < 0.1 * before["heldout-detector"]["all"]
        assert out[variant]["lambda"][0] == 0.01
        assert set(after["val"]) >= {"jaw", "brows", "nose", "eyes", "mouth", "median", "count"}
        assert len(out[variant]["nme"]) == 3  # before, after stage 1, after stage 2
    assert set(learn_stages(ctx, data, stages=1, workers=1, variants=("clean",))) == {"clean"}


def test_augmentation_keeps_the_crop_format_and_is_seeded():
    crop = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a = augment_crop(crop, np.random.default_rng(5))
    b = augment_crop(crop, np.random.default_rng(5))
    assert a.shape == crop.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, crop)


def test_evaluation_counts_the_final_2d_stages():
    """Stage descent's evaluation (and export's float16 check) must run the 2D stages too."""
    from face_alignment_ros.common.stand_in_models import stand_in_aligner
    from face_alignment_ros.training.descent_regression import TrainingSample
    from face_alignment_ros.training.learn_descent import run_cascade_errors

    aligner = stand_in_aligner("sift", detector=None)
    descent = aligner.descent
    r = np.zeros((1, 136, descent.landmark_feature_dim), np.float32)
    b = np.zeros((1, 136), np.float32)
    b[0, 0::2] = 5.0  # every point 5 px right
    staged = descent.with_landmark_stages(r, b)
    state = aligner.cascade.initial_state(descent.crop_size)
    end = aligner.cascade.run(descent, lambda p, c: np.zeros((len(p), descent.descriptor_dim)), state)
    sample = TrainingSample(make_sampler=lambda: (lambda p, c: np.zeros((len(p), descent.descriptor_dim))),
                            state=state, target_landmarks=end.landmarks, target_camera=end.camera, normaliser=1.0)
    errors = run_cascade_errors(aligner.cascade, staged, sample)
    assert len(errors) == descent.iterations + 2
    assert errors[-2] < 1e-3 and abs(errors[-1] - 5.0) < 1e-3


def test_saved_passes_are_reused_only_for_the_samples_and_cascade_they_were_saved_for(tmp_path):
    from face_alignment_ros.training.learn_landmark_stages import SavedPasses
    from face_alignment_ros.training.stage_io import Stage

    stage = Stage("descent", tmp_path)
    name = "landmark_stage_dff_pass{k}.npz"
    starts = np.arange(6, dtype=np.float32)
    SavedPasses(stage, name, "key-a", resume=True)(0, {"starts": starts})
    np.testing.assert_array_equal(SavedPasses(stage, name, "key-a", resume=True)(0)["starts"], starts)
    assert "key" not in SavedPasses(stage, name, "key-a", resume=True)(0)
    assert SavedPasses(stage, name, "key-b", resume=True)(0) is None  # another cascade or other samples
    assert SavedPasses(stage, name, "key-a", resume=False)(0) is None  # not resuming
    assert SavedPasses(stage, name, "key-a", resume=True)(1) is None  # never saved
    np.savez(stage.path("landmark_stage_dff_pass0.npz"), starts=starts)  # saved before passes carried a key
    assert SavedPasses(stage, name, "key-a", resume=True)(0) is None
