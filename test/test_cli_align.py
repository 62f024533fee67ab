"""`face-align`: every unreadable input reported, distinct overlay names, outputs checked first."""
import json

import cv2
import numpy as np
import pytest

from face_alignment_ros.cli import align
from face_alignment_ros.common.samples import demo_image


@pytest.fixture(scope="module")
def shipped_aligner():
    from face_alignment_ros.core.aligner import FaceAligner

    return FaceAligner.from_default()


@pytest.fixture
def aligner(shipped_aligner, monkeypatch):
    """The shipped aligner, loaded once for the module; counts the command's loads."""
    loads = []

    def load(args):
        loads.append(args)
        return shipped_aligner

    monkeypatch.setattr(align, "_load_aligner", load)
    return loads


@pytest.fixture(scope="module")
def face_jpeg_bytes():
    ok, buf = cv2.imencode(".jpg", demo_image())
    assert ok
    return buf.tobytes()


def _small_image(seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (7, 7), 2)


def test_folder_reports_every_unreadable_image_and_fails(tmp_path, aligner, face_jpeg_bytes, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), _small_image())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    # a real photo cut at 70%: cv2.imread would hand back a grey-padded image and "0 faces"
    (folder / "truncated.jpg").write_bytes(face_jpeg_bytes[: len(face_jpeg_bytes) * 7 // 10])
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "r.json"
    rc = align.main([str(folder), "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == align.EXIT_INCOMPLETE
    for name in ("corrupt.png", "truncated.jpg", "empty.jpg"):
        assert name in err
    result = json.loads(out.read_text())
    assert result["good.png"] == []
    assert all("error" in result[n] for n in ("corrupt.png", "truncated.jpg", "empty.jpg"))


def test_clean_folder_exits_zero(tmp_path, aligner, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), _small_image())
    assert align.main([str(tmp_path)]) == align.EXIT_OK
    assert "1 of 1 images aligned" in capsys.readouterr().out


def test_same_stem_images_get_distinct_overlays(tmp_path, aligner):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), _small_image(1))
    cv2.imwrite(str(folder / "a.png"), _small_image(2))
    overlays = tmp_path / "overlays"
    assert align.main([str(folder), "--overlay", str(overlays)]) == align.EXIT_OK
    assert sorted(p.name for p in overlays.iterdir()) == ["a.jpg.overlay.png", "a.png.overlay.png"]
    from_jpg = cv2.imread(str(overlays / "a.jpg.overlay.png"))
    from_png = cv2.imread(str(overlays / "a.png.overlay.png"))
    assert not np.array_equal(from_jpg, from_png)


def _blocker(tmp_path):
    """A regular file: any path under it is unwritable, even for root."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("option, kind", [("--json", "file"), ("--overlay", "folder")])
def test_unwritable_outputs_of_a_folder_stop_before_any_work(tmp_path, aligner, capsys, option, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _small_image())
    target = _blocker(tmp_path) / ("r.json" if kind == "file" else "overlays")
    assert align.main([str(folder), option, str(target)]) == align.EXIT_NOTHING_DONE
    assert "is a file, not a folder" in capsys.readouterr().err
    assert aligner == [], "the model must not even be loaded"


@pytest.mark.parametrize("overlay", ["sub/out.png", "out.xyz"])
def test_unwritable_overlay_of_an_image_stops_before_any_work(tmp_path, aligner, capsys, overlay):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _small_image())
    target = (_blocker(tmp_path) / overlay) if overlay.startswith("sub") else tmp_path / overlay
    assert align.main([str(image), "--overlay", str(target)]) == align.EXIT_NOTHING_DONE
    assert "overlay" in capsys.readouterr().err
    assert aligner == []


def test_an_overlay_folder_that_is_a_file_is_refused(tmp_path, aligner, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _small_image())
    assert align.main([str(folder), "--overlay", str(_blocker(tmp_path))]) == align.EXIT_NOTHING_DONE
    assert "is a file" in capsys.readouterr().err and aligner == []


def test_truncated_single_image_is_refused(tmp_path, aligner, face_jpeg_bytes, capsys):
    image = tmp_path / "cut.jpg"
    image.write_bytes(face_jpeg_bytes[: len(face_jpeg_bytes) // 2])
    assert align.main([str(image)]) == align.EXIT_NOTHING_DONE
    assert "cut.jpg" in capsys.readouterr().err


def _video(path, frames=20):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.roll(_small_image(), 4 * i, axis=1))
    writer.release()


def test_truncated_video_warns_and_fails(tmp_path, aligner, capsys):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    _video(whole)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "frames.json"
    assert align.main([str(whole), "--json", str(out)]) == align.EXIT_OK
    assert len(json.loads(out.read_text())) == 20
    rc = align.main([str(cut), "--json", str(out)])
    captured = capsys.readouterr()
    read = len(json.loads(out.read_text()))
    assert rc == align.EXIT_INCOMPLETE and 0 < read < 20
    assert f"yielded {read} of the 20 frames" in captured.err and "truncated" in captured.err


def test_missing_input_gets_a_message_not_a_traceback(tmp_path, aligner, capsys):
    assert align.main([str(tmp_path / "missing.mp4")]) == align.EXIT_NOTHING_DONE
    assert "missing.mp4: no such file or folder" in capsys.readouterr().err
    unreadable = tmp_path / "garbage.mp4"
    unreadable.write_bytes(b"\x00" * 1000)
    assert align.main([str(unreadable)]) == align.EXIT_NOTHING_DONE
    assert "cannot open the video" in capsys.readouterr().err
    assert aligner == []


def test_flip_average_and_second_pass_options_reach_the_aligner(tmp_path):
    args = align._parser().parse_args([str(tmp_path / "x.jpg"), "--flip-average", "--second-pass"])
    loaded = align._load_aligner(args)
    assert loaded.flip_average and loaded.second_pass
    plain = align._parser().parse_args([str(tmp_path / "x.jpg")])
    assert not plain.flip_average and not plain.second_pass
