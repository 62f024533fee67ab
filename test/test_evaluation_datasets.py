"""Evaluation readers on tiny folders written here (evaluation/datasets.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_alignment_ros.common.pts_io import write_pts
from face_alignment_ros.evaluation import datasets


def _points(offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.uniform(10, 50, (68, 2)) + offset).astype(np.float32)


def test_300w_folder(tmp_path):
    for i, suffix in enumerate((".jpg", ".png")):
        cv2.imwrite(str(tmp_path / f"face{i}{suffix}"), np.full((64, 64, 3), 100 + i, np.uint8))
        write_pts(tmp_path / f"face{i}.pts", _points(i))
    write_pts(tmp_path / "orphan.pts", _points())  # no image: ignored
    ds = datasets.open_dataset(tmp_path)
    assert ds.kind == "300w" and len(ds) == 2
    samples = list(ds)
    assert [s.name for s in samples] == ["face0", "face1"]
    assert samples[1].image.shape == (64, 64, 3) and samples[1].yaw_deg is None
    np.testing.assert_allclose(samples[1].landmarks, _points(1), atol=1e-3)
    assert len(datasets.read_300w_folder(tmp_path, limit=1)) == 1


def test_aflw2000_mat(tmp_path):
    from scipy.io import savemat

    pts = _points()
    pt3d = np.vstack([pts.T, np.zeros((1, 68))])  # 3 x 68, as AFLW2000-3D stores it
    pose = np.array([[0.1, -0.5, 0.05, 30.0, 40.0, 0.0, 0.001]])  # pitch, yaw, roll (rad), t, scale
    savemat(tmp_path / "image00002.mat", {"pt3d_68": pt3d, "Pose_Para": pose})
    cv2.imwrite(str(tmp_path / "image00002.jpg"), np.zeros((64, 64, 3), np.uint8))
    label = datasets.read_aflw2000_mat(tmp_path / "image00002.mat")
    np.testing.assert_allclose(label["landmarks"], pts, atol=1e-4)
    assert label["yaw_deg"] == pytest.approx(np.degrees(-0.5))
    np.testing.assert_allclose(label["pose_para"], pose[0])
    ds = datasets.open_dataset(tmp_path)
    assert ds.kind == "aflw2000"
    (s,) = list(ds)
    assert s.yaw_deg == pytest.approx(-28.6479, abs=1e-3) and s.name == "image00002"
    np.testing.assert_allclose(s.landmarks_3d, pts, atol=1e-4)
    assert s.rotation.shape == (3, 3) and np.allclose(s.rotation @ s.rotation.T, np.eye(3), atol=1e-6)
    savemat(tmp_path / "bad.mat", {"pt3d_68": pt3d})
    with pytest.raises(ValueError):
        datasets.read_aflw2000_mat(tmp_path / "bad.mat")


def test_synthetic_renders(tmp_path):
    from face_alignment_ros.common.render_format import SYNTHESIZE_STAGE as STAGE
    from face_alignment_ros.common.render_format import open_outputs

    folder = tmp_path / STAGE
    folder.mkdir()
    out = open_outputs(folder, "heldout", 6, 8, "w+")
    out["yaw_bin"][:] = [0, 0, 1, 1, 2, 2]
    out["camera"][:, 2] = np.radians([10, -20, 40, 50, 70, -85])
    out["identity"][:] = [0, 0, 0, 1, 1, 1]
    out["landmarks"][:] = _points()
    out["landmark_visible"][:] = True
    for v in out.values():
        v.flush()
    ds = datasets.open_dataset("synthetic-heldout", limit=1, work_dir=tmp_path)
    samples = list(ds)
    assert len(ds) == 3 and [s.meta["yaw_bin"] for s in samples] == [0, 1, 2]
    assert samples[2].yaw_deg == pytest.approx(70, abs=1e-4)  # first of its bin
    assert samples[0].image.shape == (8, 8, 3) and samples[0].visible.all()
    assert len(datasets.synthetic_renders(work_dir=tmp_path)) == 6


def test_profiled_photos_read_from_stage_profile(tmp_path):
    from face_alignment_ros.common.render_format import PROFILE_STAGE, open_outputs
    from face_alignment_ros.core import camera as cam

    folder = tmp_path / PROFILE_STAGE
    folder.mkdir()
    out = open_outputs(folder, "heldout", 3, 8, "w+")
    out["yaw_bin"][:] = [0, 1, 2]
    out["camera"][:] = [[0.5, 0.1, np.radians(y), 0.05, 4, 4] for y in (20, -45, 80)]
    out["landmarks"][:] = _points()
    for v in out.values():
        v.flush()
    with pytest.raises(FileNotFoundError):  # the renders are another stage's
        datasets.open_dataset("synthetic-heldout", work_dir=tmp_path)
    ds = datasets.open_dataset("profiled-heldout", work_dir=tmp_path)
    samples = list(ds)
    assert ds.name == "profiled-heldout" and ds.kind == "profiled" and len(ds) == 3
    assert [round(s.yaw_deg) for s in samples] == [20, -45, 80]
    assert np.allclose(samples[1].rotation, cam.rotation_matrix(0.1, np.radians(-45), 0.05), atol=1e-6)
    # the same views labelled as AFLW2000-3D labels photos: its given box is that of the fixed points
    aflw = datasets.open_dataset("profiled-heldout-aflw", work_dir=tmp_path)
    assert aflw.name == "profiled-heldout-aflw" and aflw.kind == "aflw2000" and len(aflw) == 3
    for a, s in zip(aflw, samples):
        np.testing.assert_array_equal(a.landmarks, s.landmarks_3d)
        np.testing.assert_array_equal(a.rotation, s.rotation)
        assert a.visible is None


def test_missing_folder():
    with pytest.raises(FileNotFoundError):
        datasets.open_dataset("/nonexistent/folder")


def test_heldout_split(data_dir):
    from face_alignment_ros.common.photo_split import SPLIT_NAME

    ds = datasets.heldout_300w(data_dir)
    assert ds.name == SPLIT_NAME and len(ds) == 113
    first = next(iter(datasets.heldout_300w(data_dir, limit=1)))
    assert first.landmarks.shape == (68, 2) and first.image.ndim == 3
