"""export's float16 check runs the descent models through FaceAligner.from_files."""
from types import SimpleNamespace

import cv2
import numpy as np

from face_alignment_ros.core.aligner import FaceAligner
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.evaluation.metrics import nme
from face_alignment_ros.evaluation.stand_in_models import stand_in_descent
from face_alignment_ros.training.export_models import shipped_path_nme


def test_shipped_path_nme_is_the_aligner_s_error_with_the_cut_model(tmp_path, morphable_model):
    image = np.random.default_rng(0).integers(0, 255, size=(160, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), image)
    # a stand-in SIFT model that moves the face 4 crop px right per iteration
    descent_path = tmp_path / "descent_sift.npz"
    stand_in_descent("sift", bias_px=4.0).save(descent_path)
    aligner = FaceAligner.from_files(descent_path, None, detector=None)
    truth = aligner.align(image, (40, 40, 120, 120), "landmarks").landmarks  # 3 iterations
    records = [SimpleNamespace(image_path=tmp_path / "face.png", landmarks=truth)]
    assert landmark_box(truth).shape == (4,)

    full = shipped_path_nme(descent_path, None, records, None)
    cut = shipped_path_nme(descent_path, None, records, 1)
    expected = FaceAligner.from_files(descent_path, None, detector=None)
    expected.set_descent_model(expected.descent.first(1))
    one = expected.align(image, landmark_box(truth), "landmarks").landmarks
    assert cut == round(100 * nme(one, truth, "inter_pupil"), 3)
    assert full == round(100 * nme(aligner.align(image, landmark_box(truth), "landmarks").landmarks, truth,
                                   "inter_pupil"), 3)
    assert cut != full  # the cut to the shipped iterations is applied
