"""Stage synthesize: texture fill, hole closing, and a tiny end-to-end run on synthetic photos
(determinism, resume, output layout). The data test runs only where stage fit's output exists."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_alignment_ros.common import render_format as fmt
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import resources
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.training import mesh_texture as texture
from face_alignment_ros.training import render_views as views
from face_alignment_ros.training import synthesize as syn


@pytest.fixture(scope="module")
def tools():
    return texture.default_tools()


def test_mirror_map_flips_x(tools):
    mean = tools.model.mean
    side = np.abs(mean[:, 0]) > 10.0
    assert np.all(np.sign(mean[tools.mirror[side], 0]) == -np.sign(mean[side, 0]))
    assert np.mean(tools.mirror[tools.mirror] == np.arange(len(mean))) > 0.9
    err = np.linalg.norm(mean[tools.mirror] * [-1, 1, 1] - mean, axis=1)
    assert np.median(err) < 2.0


def test_fill_texture_mirrors_then_diffuses(tools):
    mean = tools.model.mean
    colours = np.zeros((len(mean), 3), np.float32)
    colours[:, 2] = 200.0  # red everywhere seen
    seen = mean[:, 0] > 0  # only the image-right half
    seen &= mean[:, 1] > -40  # and not the top of the forehead
    filled, stats = texture.fill_texture(colours, seen, tools)
    assert np.all(np.isfinite(filled))
    used = np.unique(tools.model.triangles)
    assert np.allclose(filled[used], [0, 0, 200], atol=1.0)
    assert stats["mirrored"] > 0.2 and stats["diffused"] > 0.0
    assert abs(stats["seen"] + stats["mirrored"] + stats["diffused"] - 1.0) < 1e-6


def test_close_holes_fills_enclosed_background():
    tri_id = np.full((20, 20), -1, np.int32)
    tri_id[3:17, 3:17] = 7
    tri_id[8:12, 8:12] = -1  # a hole through the mesh
    bary = np.zeros((20, 20, 3), np.float32)
    bary[tri_id >= 0] = [1, 0, 0]
    views._close_holes(tri_id, bary)
    assert np.all(tri_id[3:17, 3:17] == 7)
    assert np.all(tri_id[:3] == -1)
    assert np.allclose(bary[10, 10], [1, 0, 0])


def _synthetic_fits(tmp_path: Path, model: MorphableModel) -> Path:
    rng = np.random.default_rng(1)
    rows = {k: [] for k in ("subset", "name", "split", "image_path", "camera", "shape_params", "landmarks")}
    for i, split in enumerate(["train", "train", "heldout"]):
        image = cv2.GaussianBlur(rng.integers(0, 255, (160, 180, 3), dtype=np.uint8), (0, 0), 3)
        path = tmp_path / f"photo{i}.png"
        cv2.imwrite(str(path), image)
        camera = np.array([0.45, 0.05, 0.3 * (i - 1), 0.0, 90.0, 80.0], np.float32)
        params = np.concatenate([rng.standard_normal(40) * model.id_sigma * 0.5, np.zeros(10)]).astype(np.float32)
        ids = model.contour_landmarks(cam.rotation_matrix(*camera[1:4]), params)
        for key, value in zip(rows, ("afw", f"p{i}", split, str(path), camera, params,
                                     cam.project(camera, model.vertices(params, ids)))):
            rows[key].append(value)
    out = tmp_path / "fits.npz"
    np.savez(out, **{k: np.array(v) for k, v in rows.items()})
    return out


def _args(work: Path, fits: Path, **over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    syn.add_arguments(parser)
    args = parser.parse_args(["--work-dir", str(work), "--fits", str(fits), "--size", "32", "--views", "2",
                              "--heldout-views-per-bin", "1", "--workers", "1", "--chunk", "1",
                              "--sheet-samples", "4"])
    for k, v in over.items():
        setattr(args, k, v)
    return args


def test_stage_runs_deterministically_and_resumes(tmp_path, tools):
    fits = _synthetic_fits(tmp_path, tools.model)
    work = tmp_path / "work"
    assert syn.run(_args(work, fits)) == 0
    train = {k: np.array(v) for k, v in fmt.load_outputs(work, "train").items()}
    held = {k: np.array(v) for k, v in fmt.load_outputs(work, "heldout").items()}

    assert train["images"].shape == (4, 32, 32, 3) and train["images"].dtype == np.uint8
    assert held["images"].shape == (3, 32, 32, 3)
    vid = train["vertex_ids"]
    assert vid.dtype == np.uint16
    face = vid != fmt.BACKGROUND_ID
    assert 0.2 < face.mean() < 0.95
    assert vid[face].max() < tools.model.n_vertices
    assert train["landmarks"].shape == (4, 68, 2) and train["dense"].shape == (4, 160, 2)
    assert train["dense_visible"].dtype == bool and train["dense_visible"].any()
    assert np.all(np.abs(train["landmarks"] - 16) < 24)
    assert list(train["identity"]) == [0, 0, 1, 1] and list(held["identity"]) == [2, 2, 2]
    assert list(held["yaw_bin"]) == [0, 1, 2]
    # the stored camera reprojects the stored landmarks from the stored shape
    for i in range(4):
        pts = cam.project(train["camera"][i], tools.model.vertices(train["shape"][i], train["landmark_ids"][i]))
        assert np.allclose(pts, train["landmarks"][i], atol=1e-3)
    summary = json.loads((work / "synthesize" / "summary.json").read_text())
    assert summary["counts"] == {"train": 4, "heldout": 3}
    assert summary["photo_counts"] == {"photo_train": 2 * 4, "photo_heldout": 1}
    assert (work / "synthesize" / "contact_sheet_train.png").exists()

    # resume: pretend the run stopped after the first training identity
    progress = work / "synthesize" / "progress.json"
    state = json.loads(progress.read_text())
    state["done"] = {"train": 1, "heldout": 0}
    progress.write_text(json.dumps(state))
    mm = np.load(work / "synthesize" / "train_images.npy", mmap_mode="r+")
    mm[2:] = 0
    mm.flush()
    del mm
    assert syn.run(_args(work, fits)) == 0
    assert np.array_equal(np.load(work / "synthesize" / "train_images.npy"), train["images"])

    # other settings on top of old outputs: refused without --restart
    assert syn.run(_args(work, fits, size=24)) == 2


def test_data_real_identity_renders(tools):
    fits_path = resources.work_dir() / "fit" / "fits.npz"
    if not fits_path.exists() or resources.data_dir() is None:
        pytest.skip("needs stage fit's output (face-align-train fit) and ../shared/data")
    fits = views.Fits.load(fits_path)
    row = int(np.flatnonzero(fits.split.astype(str) == "train")[0])
    ident = views.prepare_identity(fits, row, tools)
    assert ident.stats["seen"] > 0.2
    bank = np.full((1, 64, 64, 3), 100, np.uint8)
    s = views.render_sample(ident, tools, 64, "train", 0, 0, 12, bank)
    assert (s["vertex_ids"] != fmt.BACKGROUND_ID).mean() > 0.3
    assert np.all(np.isfinite(s["landmarks"]))


def test_photo_views_label_only_the_annotated_face(tmp_path, tools):
    from face_alignment_ros.training.photo_views import photo_view

    fits_path = _synthetic_fits(tmp_path, tools.model)
    fits = views.Fits.load(fits_path)
    image = views.read_image(fits, 0)
    a = photo_view(image, fits, 0, tools, 32, np.random.default_rng(3))
    b = photo_view(image, fits, 0, tools, 32, np.random.default_rng(3))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded
    face = a["vertex_ids"] != fmt.BACKGROUND_ID
    assert 0.2 < face.mean() < 0.95
    # the stored camera maps the photo's annotated points into this crop
    pts = cam.project(a["camera"], tools.model.vertices(a["shape"], a["landmark_ids"]))
    assert np.allclose(pts, a["landmarks"], atol=1e-3)
    # pixels outside the annotated face region stay unlabelled
    from face_alignment_ros.core import face_crop

    camera_image = fits.camera[0]
    box = face_crop.canonical_crop_box(camera_image)
    plain = photo_view(image, fits, 0, tools, 32, np.random.default_rng(0), jitter=False)
    region = texture.face_region_mask(face_crop.image_to_crop(fits.landmarks[0], box, 32), (32, 32))
    assert not np.any((plain["vertex_ids"] != fmt.BACKGROUND_ID) & ~region)
    from face_alignment_ros.core.face_crop import crop_image

    assert np.array_equal(plain["images"], crop_image(image, box, 32)[0])  # no jitter: the photo itself
