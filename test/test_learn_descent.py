"""Stage descent's data: the mirror image of a training photo and its annotation (and detector
keypoints) agree; profiled views are scored per yaw bin on the rows asked for."""
import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.training.photo_records import PhotoRecord, mirror_record


def test_mirror_record_keeps_annotation_on_the_mirrored_face(morphable_model):
    camera = np.array([1.5, 0.1, 0.6, -0.2, 120.0, 90.0], np.float32)
    ids = morphable_model.contour_landmarks(cam.rotation_matrix(*camera[1:4]))
    landmarks = cam.project(camera, morphable_model.vertices(None, ids))
    image = np.zeros((200, 260, 3), np.uint8)
    image[:, :10] = 255
    record = PhotoRecord("x.png", "afw", "x", "train", landmarks, camera, np.array([40, 20, 200, 180], np.float32))
    mirrored, flipped = mirror_record(record, image)
    assert flipped[:, -10:].all() and not flipped[:, :10].any()
    assert np.allclose(mirrored.detector_box, [59, 20, 219, 180])
    ids_m = morphable_model.contour_landmarks(cam.rotation_matrix(*mirrored.camera[1:4]))
    reprojected = cam.project(mirrored.camera, morphable_model.vertices(None, ids_m))
    # inner points: within the mean face's asymmetry; jaw points move along the silhouette
    assert np.median(np.linalg.norm(reprojected - mirrored.landmarks, axis=1)) < 2.0
    assert mirrored.landmarks[36, 0] < mirrored.landmarks[45, 0]  # the right eye stays on the image left
    assert np.allclose(mirror_record(mirrored, flipped)[0].landmarks, landmarks)


def test_mirror_record_mirrors_the_detector_keypoints():
    # right eye, left eye, nose, mouth, right ear, left ear of a face turned to the image right
    keypoints = np.array([[80, 60], [120, 62], [115, 90], [105, 110], [55, 70], [140, 72]], np.float32)
    record = PhotoRecord("x.png", "afw", "x", "train", np.zeros((68, 2), np.float32), np.zeros(6, np.float32),
                         np.array([40, 20, 160, 140], np.float32), keypoints)
    mirrored, _ = mirror_record(record, np.zeros((200, 260, 3), np.uint8))
    # the right eye is still the right eye: now the mirror image of the left one
    assert np.allclose(mirrored.detector_keypoints[0], [259 - 120, 62])
    assert np.allclose(mirrored.detector_keypoints[2], [259 - 115, 90])
    assert np.allclose(mirrored.detector_keypoints[5], [259 - 55, 70])
    assert np.allclose(mirror_record(mirrored, np.zeros((200, 260, 3), np.uint8))[0].detector_keypoints, keypoints)
    assert mirror_record(PhotoRecord("x.png", "afw", "x", "train", np.zeros((68, 2), np.float32),
                                     np.zeros(6, np.float32), None), np.zeros((5, 5, 3), np.uint8))[0] \
        .detector_keypoints is None


def test_profiled_views_are_scored_per_yaw_bin_on_their_own_rows(monkeypatch):
    from types import SimpleNamespace

    from face_alignment_ros.training import learn_descent

    n = 6
    landmarks = np.zeros((n, 68, 2), np.float32)
    landmarks[:, :, 0] = np.linspace(0, 10, 68)
    landmarks[:, :, 1] = np.linspace(0, 10, 68)[None, :] * (1 + np.arange(n))[:, None]  # box grows with i
    data = {"images": np.zeros((n, 4, 4, 3), np.uint8), "landmarks": landmarks, "camera": np.zeros((n, 6), np.float32),
            "yaw_bin": np.array([1, 1, 2, 2, 1, 2], np.int8), "identity": np.array([0, 1, 0, 1, 2, 0], np.int32)}
    cascade = SimpleNamespace(initial_state=lambda size: None)
    backend = SimpleNamespace(prepare=lambda crop: None)
    # the error of a sample is its normaliser, so that each bin's mean names the samples scored
    monkeypatch.setattr(learn_descent, "run_cascade_errors", lambda c, d, s: [s.normaliser])
    sizes = [float(learn_descent.box_size(landmarks[i])) for i in range(n)]
    out = learn_descent.evaluate_profiled(cascade, backend, None, {"train": data, "heldout": data},
                                          np.array([True, False, False]))
    val = out["validation_profiled_box_nme_percent"]  # identity 0: rows 0, 2, 5
    assert set(val) == {"[30,60]", "[60,90]"} and val["[30,60]"]["count"] == 1 and val["[60,90]"]["count"] == 2
    assert val["[30,60]"]["nme_per_iteration"][0] == pytest.approx(100 * sizes[0], rel=1e-3)
    assert val["[60,90]"]["nme_per_iteration"][0] == pytest.approx(50 * (sizes[2] + sizes[5]), rel=1e-3)
    held = out["heldout_profiled_box_nme_percent"]  # every row
    assert held["[30,60]"]["count"] == 3 and held["[60,90]"]["count"] == 3
