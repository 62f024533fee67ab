"""face-align-eval end to end on a one-image folder, and the peers on the demo photo."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from face_alignment_ros.common.pts_io import write_pts


@pytest.fixture(scope="module")
def demo():
    """The demo photo and a rough 68-point 'ground truth' (an ellipse in its face box)."""
    from face_alignment_ros.common.samples import demo_image

    img = demo_image()
    x0, y0, x1, y1 = 180, 85, 270, 175  # the astronaut's face, roughly (MediaPipe landmark box)
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t), (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1)
    return img, pts.astype(np.float32)


@pytest.fixture
def one_image_folder(tmp_path, demo):
    """A data folder holding the demo photo and its rough points."""
    img, pts = demo
    data = tmp_path / "data"
    data.mkdir()
    cv2.imwrite(str(data / "astronaut.png"), img)
    write_pts(data / "astronaut.pts", pts)
    return data


def test_cli_writes_outputs(tmp_path, one_image_folder, capsys):
    from face_alignment_ros.cli.evaluate import main

    data = one_image_folder
    out = tmp_path / "out"
    assert main(["--data", str(data), "--methods", "ours-sift", "--protocols", "given_box", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Ours (SIFT)" in printed and "1/1" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["results"][0]["summary"]["ours-sift"]["given_box"]["images"] == 1
    assert (out / "per_image.csv").exists() and (out / "ced_data_given_box.png").exists()


def test_cli_flip_average_and_second_pass_reach_our_aligner(tmp_path, one_image_folder, capsys):
    from face_alignment_ros.cli.evaluate import main

    args = ["--data", str(one_image_folder), "--methods", "ours-sift", "--protocols", "given_box", "--flip-average",
            "--second-pass", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert "| Ours (SIFT), flip-averaged, second pass" in capsys.readouterr().out


def test_cli_detector_choice_reaches_our_aligner(tmp_path, one_image_folder, capsys):
    from face_alignment_ros.cli.evaluate import main

    args = ["--data", str(one_image_folder), "--methods", "ours-sift", "--protocols", "detector", "--detector",
            "cascade", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| Ours (SIFT), cascade detector" in printed and "1/1" in printed
    with pytest.raises(SystemExit) as refused:
        main(args[:-3] + ["no-such-detector", "--out", str(tmp_path / "out")])
    assert refused.value.code == 2 and "unknown detector 'no-such-detector'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["dlib-ert", "mediapipe-facemesh"])
def test_peer_on_demo(name, demo):
    from face_alignment_ros.evaluation import peers

    if name not in peers.available_methods():
        pytest.skip(f"{name} not installed (optional extra: pip install .[eval])")
    img, pts = demo
    m = peers.create_method(name)
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    pred = m.align_box(img, box)
    assert pred is not None and pred.landmarks.shape == (68, 2)
    centre = pred.landmarks.mean(0)
    assert np.all(np.abs(centre - (box[:2] + box[2:]) / 2) < 30)
    # iBUG order: the subject's right eye (36-41) is on the image left
    assert pred.landmarks[36:42, 0].mean() < pred.landmarks[42:48, 0].mean()
    dets = m.detect_and_align(img)
    assert len(dets) >= 1
    m.close()
