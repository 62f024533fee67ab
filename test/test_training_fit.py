"""Tests of the fit stage (face_alignment_ros.training.fit_photos): synthetic recovery, fast."""
import os

import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.morphable_model import JAW

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FACE_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))


@pytest.fixture(scope="module")
def model(morphable_model):
    return morphable_model


def _synthetic(model, yaw_deg, rng, noise_px=0.5):
    params = (rng.standard_normal(model.shape_sigma.size) * model.shape_sigma * 0.7).astype(np.float32)
    camera = np.array([2.0, np.radians(8), np.radians(yaw_deg), np.radians(-5), 240.0, 260.0], np.float32)
    ids = model.contour_landmarks(cam.rotation_matrix(*camera[1:4]), params)
    targets = cam.project(camera, model.vertices(params, ids)) + rng.normal(0, noise_px, (68, 2))
    return camera, params, ids, targets.astype(np.float32)


@pytest.mark.parametrize("yaw_deg", [0.0, 30.0, 60.0, -60.0])
def test_fit_recovers_camera_and_shape(model, yaw_deg):
    from face_alignment_ros.training.fit_photos import fit_landmarks

    camera, params, ids, targets = _synthetic(model, yaw_deg, np.random.default_rng(int(yaw_deg) + 100))
    if abs(yaw_deg) >= 60:
        # the far-side jaw points are silhouette vertices, not the fixed landmark vertices
        assert (ids[JAW] != model.landmarks[JAW]).sum() >= 4
    fit = fit_landmarks(model, targets)
    angles = np.degrees(fit.camera[cam.PITCH:cam.ROLL + 1])
    assert np.allclose(angles, np.degrees(camera[1:4]), atol=3.0), angles
    assert abs(fit.camera[cam.S] / camera[cam.S] - 1) < 0.08
    assert np.allclose(fit.camera[cam.TX:], camera[cam.TX:], atol=6.0)
    assert fit.residual_nme < 0.01  # noise is 0.5 px on a ~330 px face
    # contour marching picks (nearly) the same silhouette vertices as the generator
    assert (fit.landmark_ids[JAW] == ids[JAW]).mean() >= 0.8
    # the fitted 3-D landmarks (depth included) beat the mean face (68 noisy 2-D points cannot
    # pin 50 parameters, and the prior shrinks them: a clear but modest gain is the expectation)
    truth = model.vertices(params, model.landmarks)
    err_fit = np.linalg.norm(model.vertices(fit.shape_params, model.landmarks) - truth, axis=1).mean()
    err_mean = np.linalg.norm(model.vertices(None, model.landmarks) - truth, axis=1).mean()
    assert err_fit < 0.9 * err_mean, (err_fit, err_mean)


def test_fit_is_deterministic(model):
    from face_alignment_ros.training.fit_photos import fit_landmarks

    _, _, _, targets = _synthetic(model, 20.0, np.random.default_rng(1))
    a, b = fit_landmarks(model, targets), fit_landmarks(model, targets)
    assert np.array_equal(a.camera, b.camera) and np.array_equal(a.shape_params, b.shape_params)


def test_landmark_nme_normalisation():
    from face_alignment_ros.training.fit_photos import landmark_nme

    target = np.array([[0, 0], [100, 0], [100, 25], [0, 25]], np.float32)  # sqrt(w h) = 50
    assert landmark_nme(target + [5.0, 0.0], target) == pytest.approx(0.1)


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA_DIR, "300w")), reason="../shared/data/300w absent")
def test_fit_real_photos(model):
    from face_alignment_ros.common.photo_split import list_photos
    from face_alignment_ros.common.pts_io import read_pts
    from face_alignment_ros.training.fit_photos import fit_landmarks

    photos = list_photos("all", DATA_DIR)[::150]
    nme = [fit_landmarks(model, read_pts(p.pts)).residual_nme for p in photos]
    assert np.median(nme) < 0.035 and max(nme) < 0.06, nme


def test_cli_lists_stages_and_names_missing_input(tmp_path, capsys):
    from face_alignment_ros.cli import train

    assert train.main(["--help"]) == 0
    assert "segment" in capsys.readouterr().out
    assert train.main(["no-such-stage"]) == 2
    from face_alignment_ros.training.stage_io import Stage

    with pytest.raises(FileNotFoundError, match="face-align-train fit"):
        Stage("synthesize", tmp_path).input("fit", "fits.npz")


def test_cli_records_each_stage_command_for_the_model_cards(tmp_path):
    from face_alignment_ros.cli import train
    from face_alignment_ros.training.export_models import _commands
    from face_alignment_ros.training.stage_io import Stage

    assert train.main(["descent", "--work", str(tmp_path), "--descriptor", "sift"]) == 2  # no fit yet
    assert train.main(["descent", "--work", str(tmp_path), "--descriptor", "dff"]) == 2
    ran = Stage("descent", tmp_path).commands()
    assert len(ran) == 2 and ran[0].endswith(f"face-align-train descent --work {tmp_path} --descriptor sift")
    card = _commands(Stage("export", tmp_path), ("descent",), contains="--descriptor dff")
    assert len(card) == 2 and "--descriptor dff" in card[1]
