"""Stage descent's data: the mirror image of a training photo and its annotation agree."""
import numpy as np

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
