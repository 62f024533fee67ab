"""The thread policy: one place sizes every runtime the pipeline touches."""
import cv2
import pytest

from face_alignment_ros.core import threads
from face_alignment_ros.core.face_detector import create_detector


def test_policy_gives_the_cores_to_the_network_only():
    p = threads.policy(2)
    assert (p.network, p.detector, p.opencv, p.blas, p.numba) == (2, 1, 1, 1, 1)
    assert threads.policy(None).network == min(2, threads.available_cores())
    with pytest.raises(ValueError, match="threads"):
        threads.policy(0)


def test_apply_sets_the_running_runtimes():
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        threads.apply(1)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        threads.apply(2)
        assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_onnxruntime_options():
    opts = threads.onnxruntime_session_options(2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_detector_threads():
    assert create_detector("blazeface_short", threads=1).threads == 1
    with pytest.raises(ValueError, match="one thread"):
        create_detector("blazeface_short", threads=2)
