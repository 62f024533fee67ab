"""Face profiling (training.face_profiling, stage profile): the geometry of a photo turned with its
fitted head, on synthetic photos whose every pixel position is known."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from face_alignment_ros.common import render_format as fmt
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop
from face_alignment_ros.training import face_profiling as fp
from face_alignment_ros.training import profile_views as pv
from face_alignment_ros.training.mesh_texture import default_tools

SIZE = 128
MIDLINE_POINT = 27  # iBUG index of the nose bridge top: on the midline (its own mirror), on a smooth surface


@pytest.fixture(scope="module")
def tools():
    return default_tools()


def _photo(camera: np.ndarray, dots: list[np.ndarray], side: int = 500) -> np.ndarray:
    """Dark smooth background with a bright 7x7 dot at each position."""
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.uniform(20, 60, (side, side, 3)).astype(np.float32), (0, 0), 6)
    for p in dots:
        x, y = int(round(p[0])), int(round(p[1]))
        img[y - 3:y + 4, x - 3:x + 4] = 255.0
    return img.astype(np.uint8)


def _dot(crop: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of the bright pixels of a crop."""
    g = crop.astype(np.float32).mean(axis=2)
    w = np.clip(g - 90.0, 0, None)
    assert w.sum() > 0, "the dot is not in the crop"
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def _setup(tools, yaw_deg: float = 10.0):
    model = tools.model
    params = np.zeros(model.n_id + model.n_exp, np.float32)
    verts = model.vertices(params)
    camera = np.array([0.64, np.radians(5.0), np.radians(yaw_deg), np.radians(3.0), 250.0, 240.0], np.float32)
    return model, params, verts, camera


def test_zero_turn_reproduces_the_photo(tools):
    model, _, verts, camera = _setup(tools)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (500, 500, 3)).astype(np.float32), (0, 0), 2.0).astype(np.uint8)
    box = face_crop.canonical_crop_box(camera) + np.array([3.0, -2.0, 3.0, -2.0], np.float32)
    surface = fp.photo_surface(camera, verts, model.triangles, float(box[2] - box[0]) / SIZE)
    turned = fp.turn_points(surface, camera, fp.turned_camera(camera, 0.0))
    out = fp.render_profiled(image, surface, turned, box, SIZE)
    expected = face_crop.crop_image(image, box, SIZE)[0]
    diff = np.abs(out.astype(np.float32) - expected.astype(np.float32))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) < 3.0


def test_turned_vertex_and_background_land_where_the_rotation_says(tools):
    model, _, verts, camera = _setup(tools)
    tv = cam.transform(camera, verts)
    point = model.landmarks[MIDLINE_POINT]
    far = np.array([100.0, 95.0])  # background: more than TURN_NONE_MM from the face, inside the window
    image = _photo(camera, [tv[point], far])
    new_camera = fp.turned_camera(camera, np.radians(35.0))
    box = face_crop.canonical_crop_box(new_camera)
    box = box + np.array([-100.0, -100.0, 100.0, 100.0], np.float32)  # wide enough to hold the far dot
    surface = fp.photo_surface(camera, verts, model.triangles, float(box[2] - box[0]) / SIZE)
    turned = fp.turn_points(surface, camera, new_camera)
    out = fp.render_profiled(image, surface, turned, box, SIZE)
    k = SIZE / float(box[2] - box[0])
    expected_point = cam.transform(face_crop.camera_image_to_crop(new_camera, box, SIZE), verts[[point]])[0, :2]
    top_left = out[: SIZE // 3, : SIZE // 3]
    face_part = out.copy()
    face_part[: SIZE // 3, : SIZE // 3] = 0
    assert np.linalg.norm(_dot(face_part) - expected_point) < 1.0
    assert np.linalg.norm(_dot(top_left) - (far - box[:2]) * k) < 1.0
    # the face vertices move exactly as the turned camera projects them
    n = surface.n_face
    assert np.allclose(turned[:n], cam.transform(new_camera, verts[surface.vertex_ids]), atol=1e-2)


@pytest.mark.parametrize("mirrored", [False, True])
def test_labels_agree_with_the_image(tools, mirrored):
    model, params, verts, camera = _setup(tools, yaw_deg=-12.0)
    image = _photo(camera, [cam.transform(camera, verts)[model.landmarks[MIDLINE_POINT]]])
    recs = pv.profile_photo(image, camera, params, 5, "train", [(0, -55.0, mirrored)], SIZE, 0, tools)
    rec = recs[0]
    assert np.linalg.norm(_dot(rec["images"]) - rec["landmarks"][MIDLINE_POINT]) < 1.0
    yaw = np.degrees(rec["camera"][cam.YAW])
    assert abs(yaw - (55.0 if mirrored else -55.0)) < 1e-3
    assert rec["yaw_bin"] == 1 and rec["landmark_visible"][MIDLINE_POINT]
    assert np.degrees(rec["camera"][cam.PITCH]) == pytest.approx(5.0, abs=1e-3)
    if not mirrored:  # the label camera projects the labelled vertex ids onto the labelled landmarks
        assert np.allclose(cam.project(rec["camera"], verts[rec["landmark_ids"]]), rec["landmarks"], atol=1e-3)
    for key, (shape, _dtype) in fmt.output_specs(SIZE).items():
        assert np.asarray(rec[key]).shape == shape, key


def test_target_yaw_keeps_the_side_and_the_range():
    rng = np.random.default_rng(0)
    for yaw0 in (-40.0, -20.0, 0.0, 3.0, 25.0):
        for _ in range(20):
            t = pv.target_yaw(yaw0, 30.0, 90.0, rng)
            assert max(30.0, abs(yaw0)) <= abs(t) <= 90.0
            if abs(yaw0) >= pv.FRONTAL_DEG:
                assert np.sign(t) == np.sign(yaw0)
    # a held-out bin below the photo's yaw: turn back by at most MAX_TURN_BACK_DEG
    assert pv.target_yaw(40.0, 0.0, 30.0, rng) == pytest.approx(30.0)
    assert pv.target_yaw(-50.0, 0.0, 30.0, rng) == pytest.approx(-35.0)


def test_head_weight_ramps_from_head_to_background():
    w = fp.head_weight(np.array([0.0, fp.TURN_FULL_MM, 0.5 * (fp.TURN_FULL_MM + fp.TURN_NONE_MM), fp.TURN_NONE_MM,
                                 1e3]))
    assert np.allclose(w, [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_stage_writes_the_render_layout_and_resumes(tmp_path, tools, monkeypatch):
    model, params, _, camera = _setup(tools)
    image = _photo(camera, [])
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), image)
    fit_dir = tmp_path / fmt.FIT_STAGE
    fit_dir.mkdir()
    n = 3
    np.savez(fit_dir / fmt.FITS_FILE, subset=np.array(["helen"] * n), name=np.array(["a", "b", "c"]),
             split=np.array(["train", "train", "heldout"]), image_path=np.array([str(photo)] * n),
             camera=np.stack([camera] * n), shape_params=np.stack([params] * n),
             landmarks=np.zeros((n, 68, 2), np.float32))
    args = argparse.Namespace(work=tmp_path, seed=0, views=2, heldout_views_per_bin=1, min_yaw=30.0, max_yaw=90.0,
                              mirror=0.5, size=64, limit=0, chunk=1, sheet_samples=4, restart=False)
    assert pv.run(args) == 0
    train = fmt.load_outputs(tmp_path, "train", fmt.PROFILE_STAGE)
    held = fmt.load_outputs(tmp_path, "heldout", fmt.PROFILE_STAGE)
    assert train["images"].shape == (4, 64, 64, 3) and held["images"].shape == (3, 64, 64, 3)
    assert np.all(np.abs(np.degrees(np.asarray(train["camera"])[:, cam.YAW])) >= 30.0 - 1e-3)
    assert list(np.asarray(held["yaw_bin"])) == [0, 1, 2]
    first = np.array(train["images"])
    prog = json.loads((tmp_path / fmt.PROFILE_STAGE / fmt.SYNTH_PROGRESS_FILE).read_text())
    assert prog["done"] == {"train": 2, "heldout": 1}
    # a resumed run with everything done changes nothing; a restart reproduces it exactly
    assert pv.run(args) == 0
    args.restart = True
    assert pv.run(args) == 0
    assert np.array_equal(np.array(fmt.load_outputs(tmp_path, "train", fmt.PROFILE_STAGE)["images"]), first)
