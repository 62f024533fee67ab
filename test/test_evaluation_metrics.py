"""Metrics against hand-computed values (common/metrics.py)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from face_alignment_ros.common import metrics


def face() -> np.ndarray:
    """68 points: eye centres (0, 0) and (10, 0) (inter-pupil 10), outer corners (-2, 0) and
    (12, 0) (inter-ocular 14), landmark box 40 x 40 (box size 40)."""
    gt = np.zeros((68, 2), np.float32)
    gt[36:42] = [(-2, 0), (0, 1), (0, 1), (2, 0), (0, -1), (0, -1)]
    gt[42:48] = gt[36:42] + [10, 0]
    gt[0], gt[16] = (-10, -20), (30, 20)
    return gt


def test_normalisers():
    gt = face()
    assert metrics.inter_pupil(gt) == pytest.approx(10.0)
    assert metrics.inter_ocular(gt) == pytest.approx(14.0)
    assert metrics.box_size(gt) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        metrics.normaliser(gt, "face_width")


def test_nme_shift_3_4():
    gt = face()
    pred = gt + [3, 4]  # every point 5 px off
    assert metrics.nme(pred, gt, "inter_pupil") == pytest.approx(0.5)
    assert metrics.nme(pred, gt, "inter_ocular") == pytest.approx(5 / 14)
    assert metrics.nme(pred, gt, "box") == pytest.approx(0.125)
    assert np.isnan(metrics.nme(None, gt))


def test_nme_visible_inner():
    gt = face()
    pred = gt.copy()
    pred[20] += [6, 8]   # 10 px on one inner point
    pred[3] += [100, 0]  # jaw: never counted
    visible = np.ones(68, bool)
    assert metrics.nme_visible_inner(pred, gt, visible, "box") == pytest.approx(10 / 51 / 40)
    visible[20] = False
    assert metrics.nme_visible_inner(pred, gt, visible, "box") == pytest.approx(0.0)
    visible[:] = False
    assert np.isnan(metrics.nme_visible_inner(pred, gt, visible))


def test_yaw_bins():
    assert [metrics.yaw_bin(y) for y in (0, -30, 30.01, 60, -60.5, 90, 95, None, float("nan"))] == \
        [0, 0, 1, 1, 2, 2, -1, -1, -1]
    s = metrics.yaw_bin_summary([0.01, 0.03, 0.02, 0.06, 0.10, float("nan")], [5, -25, 45, 70, -89, 10])
    assert s["bins"]["[0,30]"] == {"count": 3, "missing": 1, "mean": pytest.approx(0.02)}
    assert s["bins"]["[30,60]"]["mean"] == pytest.approx(0.02)
    assert s["bins"]["[60,90]"]["mean"] == pytest.approx(0.08)
    assert s["mean"] == pytest.approx(0.04)
    assert s["std"] == pytest.approx(np.sqrt(0.0008))
    empty = metrics.yaw_bin_summary([0.01], [5])
    assert np.isnan(empty["mean"]) and empty["bins"]["[60,90]"]["count"] == 0


def test_ced_auc_failure():
    errors = [0.0, 0.04, float("nan")]  # NaN: no output, a failure
    x, y = metrics.ced_curve(errors)
    assert x[0] == 0 and x[-1] == pytest.approx(0.08)
    assert y[0] == pytest.approx(1 / 3) and y[-1] == pytest.approx(2 / 3)
    # area = 1/3 * 0.08 + 1/3 * 0.04, over 0.08
    assert metrics.auc(errors) == pytest.approx(0.5, abs=1e-3)
    assert metrics.failure_rate([0.0, 0.04, float("nan"), 0.09]) == pytest.approx(0.5)
    assert metrics.auc([1.0]) == 0.0
    s = metrics.summarise([0.02, 0.04, float("nan")])
    assert s["count"] == 3 and s["missing"] == 1 and s["mean"] == pytest.approx(0.03)
    assert s["failure@0.08"] == pytest.approx(1 / 3)


def test_matching_helpers():
    cand = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    query = np.array([[0.9, 0.1], [-0.8, -0.1], [0.1, 0.7]], np.float32)
    assert metrics.nearest_neighbours(query, cand, chunk=2).tolist() == [0, 2, 1]
    a = np.zeros((4, 3))
    b = np.array([[0, 0, 1], [4.9, 0, 0], [5.0, 0, 0], [0, 30, 0]])
    assert metrics.correct_match_rate(a, b) == pytest.approx(0.5)


def test_per_image_csv(tmp_path):
    path = metrics.write_per_image_csv(tmp_path / "sub" / "rows.csv",
                                       [{"image": "a", "nme": 0.0123456789}, {"image": "b", "found": 0}])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"image": "a", "nme": "0.0123457", "found": ""}, {"image": "b", "nme": "", "found": "0"}]
