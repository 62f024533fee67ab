"""Evaluation runner, outputs, matching and peers plumbing with fake methods and data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.evaluation import evaluate as ev
from face_alignment_ros.evaluation import peers
from face_alignment_ros.evaluation.datasets import Dataset, Sample


def _gt(shift: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([50 + 20 * np.cos(t) + shift, 50 + 25 * np.sin(t)], 1).astype(np.float32)


class Fake(peers.Method):
    """Returns the ground truth of the box's sample shifted by 1 px; detects every face but the
    one whose image value is 7."""
    name, label = "fake", "Fake"

    def align_box(self, image, box, box_kind="landmarks"):
        return peers.Prediction(_gt(1) + [box[0] - 30, box[1] - 25])  # the gt box is (30, 25, 70, 75)

    def detect_and_align(self, image):
        if image[0, 0, 0] == 7:
            return []
        lm = _gt(1)
        return [peers.Prediction(lm, landmark_box(lm))]


class Crash(peers.Method):
    name, label = "crash", "Crash"

    def align_box(self, image, box, box_kind="landmarks"):
        raise RuntimeError("boom")

    def detect_and_align(self, image):
        return []


def _dataset(yaws=(10.0, 45.0, 80.0)) -> Dataset:
    def it():
        for i, y in enumerate(yaws):
            yield Sample(np.full((100, 100, 3), 7 if i == 2 else 0, np.uint8), _gt(), y, f"s{i}",
                         visible=np.ones(68, bool))
    return Dataset("fake-set", "synthetic", len(yaws), it)


def test_evaluate_rows_and_summary(tmp_path):
    res = ev.evaluate(_dataset(), [Fake(), Crash()], progress=False)
    rows = res["rows"]
    assert len(rows) == 3 * 2 * 2
    fake = res["summary"]["fake"]
    # 1 px off everywhere: box NME = 1 / sqrt(40 * 50)
    assert fake["given_box"]["box"]["mean"] == pytest.approx(1 / np.sqrt(40 * 50), rel=1e-3)
    assert fake["detector"]["found"] == 2 and fake["detector"]["missed"] == 1
    assert fake["given_box"]["yaw_bins_box"]["bins"]["[60,90]"]["count"] == 1
    assert "visible_inner_box" in fake["given_box"]
    crash = res["summary"]["crash"]["given_box"]
    assert crash["box"]["missing"] == 3 and crash["box"]["failure@0.08"] == 1.0
    assert any("boom" in r.get("error", "") for r in rows)
    files = ev.write_outputs([res], tmp_path, {"command": "test"})
    assert (tmp_path / "per_image.csv").read_text().count("\n") == len(rows) + 1
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["command"] == "test"
    assert (tmp_path / "ced_fake-set_given_box.png").exists() and (tmp_path / "nme_vs_yaw_fake-set.png").exists()
    assert len(files) >= 5
    table = ev.format_tables(res)
    assert "| Fake |" in table and "[60,90]" in table


class JawOff(Fake):
    """Moves only the 17 jaw points, by 2 px."""
    name, label = "jaw-off", "Jaw off"

    def align_box(self, image, box, box_kind="landmarks"):
        lm = _gt() + [box[0] - 30, box[1] - 25]
        lm[:17] += [2.0, 0.0]
        return peers.Prediction(lm)


def test_photos_are_scored_per_landmark_group():
    data = _dataset((None, None))
    photos = Dataset("fake-photos", "300w", len(data), data._iter)
    res = ev.evaluate(photos, [JawOff()], protocols=("given_box",), progress=False)
    groups = res["summary"]["jaw-off"]["given_box"]["inter_pupil_groups"]
    gt = _gt()
    pupil = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
    assert groups["jaw"] == pytest.approx(2.0 / pupil, rel=1e-4)
    assert all(groups[g] == 0.0 for g in ("brows", "nose", "eyes", "mouth"))
    assert all(f"nme_inter_pupil_{g}" in res["rows"][0] for g in groups)
    table = ev.format_tables(res)
    assert "per landmark group" in table and f"| Jaw off | {100 * 2.0 / pupil:.2f} | 0.00 |" in table


def test_mediapipe_mapping():
    m = peers.MEDIAPIPE_TO_IBUG68
    assert m.shape == (68,) and len(set(m.tolist())) == 68 and m.min() >= 0 and m.max() < 468


def test_box_rule():
    box = peers._map_box((0, 0, 100, 200), (0.1, -0.05, 1.2, 0.9))
    np.testing.assert_allclose(box, [0, 0, 120, 180], atol=1e-4)


def test_available_methods():
    names = peers.available_methods()
    assert names[:2] == ["ours-dff", "ours-sift"] and set(names) <= set(peers.METHODS)
    with pytest.raises(ValueError):
        peers.create_method("nope")


def test_speed_ratios_and_markdown():
    from face_alignment_ros.common.process_memory import peak_rss_mb
    from face_alignment_ros.evaluation.bench_peers import format_markdown, speed_ratios

    def r(method, ms):
        return {"method": method, "threads": 1, "device": "cpu", "label": method, "peak_rss_mb": 100.0,
                "given_box": {"median_ms": ms, "p95_ms": ms},
                "detect_and_align": {"median_ms": 2 * ms, "p95_ms": 2 * ms}}
    results = {"a": r("ours-dff", 30.0), "b": r("dlib-ert", 10.0)}
    ratios = speed_ratios(results)
    assert ratios == {"ours-dff / dlib-ert": {"threads=1": {"given_box": 3.0, "detect_and_align": 3.0}}}
    text = format_markdown({"images": "x", "runs": 1, "results": results, "ratios": ratios})
    assert "| ours-dff / dlib-ert | 1 | 3.00 | 3.00 |" in text
    assert peak_rss_mb() > 10


class _ColourExtractor:
    """Descriptor = a unit 2-vector coding the pixel's colour, so equal colours match exactly."""

    def descriptor_map(self, crop):
        from face_alignment_ros.core.dff_extractor import DescriptorMap

        # vertex ids < 256
        t = (crop[:, :, 0].astype(np.float32) + 256 * crop[:, :, 1].astype(np.float32)) * (2 * np.pi / 300)
        return DescriptorMap(np.stack([np.cos(t), np.sin(t)]))


def test_synthetic_view_matching():
    from face_alignment_ros.evaluation import matching

    n = 16
    vid_a = np.arange(n * n, dtype=np.uint16).reshape(n, n)
    vid_b = np.roll(vid_a, 2, axis=1)
    vid_b[:, :2] = matching.BACKGROUND_ID
    vids = np.stack([vid_a, vid_b])
    images = np.zeros((2, n, n, 3), np.uint8)
    images[..., 0] = vids % 256
    images[..., 1] = vids // 256
    data = {"images": images, "vertex_ids": vids, "identity": np.array([0, 0]),
            "camera": np.array([[0.5, 0, 0, 0, 8, 8], [0.5, 0, np.radians(20), 0, 8, 8]], np.float32)}
    mean_shape = np.stack([np.arange(n * n) * 10.0, np.zeros(n * n), np.zeros(n * n)], 1)
    describer = matching.Describer(_ColourExtractor())
    summary, examples = matching.synthetic_matching(describer, data, mean_shape, pairs_per_bin=5, queries=50)
    assert summary["dff"]["0-30"] == {"pairs": 1, "correct_match_rate": 1.0}
    assert summary["dff"]["60-90"]["pairs"] == 0
    assert 0.0 <= summary["sift"]["0-30"]["correct_match_rate"] <= 1.0
    assert len(examples) == 1 and examples[0]["bin"] == "0-30"
