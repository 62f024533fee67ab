"""Head-pose conventions (evaluation/head_pose.py) and the AFLW2000-3D reader, checked on .mat
files written from renders of the 3DMM whose pose is known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.evaluation import datasets, head_pose
from face_alignment_ros.evaluation.evaluate import evaluate
from face_alignment_ros.evaluation.peers import Method, Prediction

SIZE = 128


def _dataset_rotation(pitch, yaw, roll):
    """R_d of 300W-LP / AFLW2000-3D written out as that data's fitting code defines it."""
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(pitch), s(pitch)], [0, -s(pitch), c(pitch)]])
    ry = np.array([[c(yaw), 0, -s(yaw)], [0, 1, 0], [s(yaw), 0, c(yaw)]])
    rz = np.array([[c(roll), s(roll), 0], [-s(roll), c(roll), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _dataset_projection(points_ours_mm, pose_para, height):
    """Image points as that data makes them: BFM frame, v = f R_d X + t, row = height - 1 - v_y."""
    x_bfm = points_ours_mm * np.array([1.0, -1.0, -1.0])
    p = np.asarray(pose_para).reshape(-1)
    v = p[6] * x_bfm @ _dataset_rotation(*p[:3]).T + p[3:6]
    return np.stack([v[:, 0], height - 1 - v[:, 1], v[:, 2]], axis=1)


ANGLES_DEG = [(0, 0, 0), (10, 40, 5), (-25, 75, 20), (20, -60, -15), (5, -88, 10), (-30, 20, -30)]


@pytest.mark.parametrize("angles", ANGLES_DEG)
def test_conversion_reproduces_the_datasets_projection(morphable_model, angles):
    m = morphable_model
    points = m.vertices(None, m.landmarks).astype(np.float64)
    camera = np.array([0.4, *np.radians(angles), 70.0, 60.0])
    camera[1:4] = cam.rotation_angles(head_pose.rotation_from_aflw(*np.radians(angles)))
    pose_para = head_pose.aflw_pose_para(camera, SIZE)
    np.testing.assert_allclose(pose_para[0, :3], np.radians(angles), atol=1e-6)
    ours = cam.project(camera, points.astype(np.float32))
    np.testing.assert_allclose(_dataset_projection(points, pose_para, SIZE)[:, :2], ours, atol=1e-3)
    np.testing.assert_allclose(head_pose.aflw_angles(cam.rotation_matrix(*camera[1:4])), np.radians(angles), atol=1e-5)


def test_signs_of_the_datasets_angles(morphable_model):
    m = morphable_model
    points = m.vertices(None, m.landmarks).astype(np.float64)

    def image(pitch=0.0, yaw=0.0, roll=0.0):
        return _dataset_projection(points, [[*np.radians([pitch, yaw, roll]), 0, 0, 0, 1.0]], SIZE)

    eyes = slice(36, 48)
    assert image(yaw=30)[30, 0] < image(yaw=30)[eyes, 0].mean() - 10, "yaw > 0: the nose turns to the image left"
    lift = lambda im: im[30, 1] - im[eyes, 1].mean()  # noqa: E731  nose tip below the eyes, pixels
    assert lift(image(pitch=20)) < lift(image()) - 5, "pitch > 0: the nose rises towards the eyes, face looks up"
    tilt = lambda im: im[27, 0] - im[8, 0]  # noqa: E731  nose bridge right of the chin
    assert tilt(image(roll=20)) > 20, "roll > 0: clockwise in the image"
    # Our pitch has the opposite sign, yaw and roll the same (small angles).
    for axis, sign in ((0, -1.0), (1, 1.0), (2, 1.0)):
        ours = np.zeros(3)
        ours[axis] = 0.1
        got = head_pose.aflw_angles(cam.rotation_matrix(*ours))
        assert got[axis] == pytest.approx(sign * 0.1, abs=1e-6) and np.abs(np.delete(got, axis)).max() < 1e-6


def test_geodesic():
    r = head_pose.rotation_from_aflw(0.2, -0.7, 0.1)
    assert head_pose.geodesic_deg(r, r) == pytest.approx(0.0, abs=1e-4)
    turn = cam.rotation_matrix(0.0, np.radians(12.0), 0.0).astype(np.float64)
    assert head_pose.geodesic_deg(turn @ r, r) == pytest.approx(12.0, abs=1e-3)
    assert head_pose.geodesic_deg(r @ turn, r) == pytest.approx(12.0, abs=1e-3)
    # float32 matrices, as FaceResult.rotation: an equal pose is 0, a tiny turn is measured
    r32 = r.astype(np.float32)
    assert head_pose.geodesic_deg(r32, r32) == 0.0
    tiny = cam.rotation_matrix(0.0, np.radians(0.005), 0.0).astype(np.float64)
    assert head_pose.geodesic_deg(tiny @ r, r) == pytest.approx(0.005, abs=2e-4)


def _render(model, camera, params):
    """A shaded render of the 3DMM under the camera (crop pixels), with the project's rasteriser."""
    from face_alignment_ros.training.render_views import visible_surface

    tv = cam.transform(camera, model.vertices(params))
    _, mask, corners, w = visible_surface(tv, model.triangles, SIZE)
    depth = np.einsum("pk,pk->p", w, tv[corners, 2])
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    img[mask] = np.clip(200 - (depth - depth.min()) * 0.5, 60, 220).astype(np.uint8)[:, None]
    return img


class _Oracle(Method):
    """Answers with the truth (read from the render's record), optionally turned by ``offset``
    (a rotation applied in the camera frame)."""
    name = label = "oracle"

    def __init__(self, truth: dict, offset: np.ndarray | None = None):
        self.truth, self.offset = truth, offset

    def align_box(self, image, box, box_kind="landmarks"):
        key = image.tobytes()
        rotation, points = self.truth[key]
        if self.offset is not None:
            rotation = self.offset @ rotation
        return Prediction(points, landmarks_3d=points, rotation=rotation)


@pytest.fixture(scope="module")
def render_folder(morphable_model, tmp_path_factory):
    """jpg + mat pairs of renders at known poses, and the truth keyed by the image read back."""
    m = morphable_model
    folder = tmp_path_factory.mktemp("aflw_renders")
    rng = np.random.default_rng(3)
    for i, angles in enumerate(ANGLES_DEG[:5]):
        params = (rng.standard_normal(m.n_id + m.n_exp) * m.shape_sigma * 0.5).astype(np.float32)
        rotation = head_pose.rotation_from_aflw(*np.radians(angles))
        camera = np.array([0.45, *cam.rotation_angles(rotation), 64.0, 66.0], np.float32)
        tv = cam.transform(camera, m.vertices(params, m.landmarks))
        points_3d = np.column_stack([tv[:, :2], -tv[:, 2]])  # that data's z points to the viewer
        datasets.write_aflw2000_sample(folder, f"image{i:05d}", _render(m, camera, params), points_3d,
                                       head_pose.aflw_pose_para(camera, SIZE))
    return folder


def _truth(folder):
    ds = datasets.open_dataset(folder)
    return ds, {s.image.tobytes(): (s.rotation, s.landmarks_3d) for s in ds}


def test_reader_gives_the_render_pose(render_folder, morphable_model):
    ds = datasets.open_dataset(render_folder)
    assert ds.kind == "aflw2000" and len(ds) == 5
    for sample, angles in zip(ds, ANGLES_DEG):
        assert sample.yaw_deg == pytest.approx(angles[1], abs=1e-4)
        np.testing.assert_allclose(head_pose.aflw_angles(sample.rotation), np.radians(angles), atol=1e-6)
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image[64, 64].mean() > 60  # the face is there


def test_perfect_and_perturbed_predictions_score_as_expected(render_folder):
    ds, truth = _truth(render_folder)
    perfect = evaluate(ds, [_Oracle(truth)], ("given_box",), progress=False)
    for r in perfect["rows"]:
        assert r["geodesic_deg"] == pytest.approx(0.0, abs=0.05)
        assert max(abs(r["yaw_err"]), abs(r["pitch_err"]), abs(r["roll_err"])) < 0.05
        assert r["nme3d_box"] == pytest.approx(0.0, abs=1e-6)
    summary = perfect["summary"]["oracle"]["given_box"]
    assert summary["pose"]["geodesic_mean"] == pytest.approx(0.0, abs=0.05)
    assert set(summary["yaw_bins_pose"]) == {"[0,30]", "[30,60]", "[60,90]"}

    # A 10 degree turn about the camera's vertical axis, towards the image left, is +10 degrees of
    # the data's yaw on a frontal face; 8 degrees about the camera x axis (our pitch: face down)
    # is -8 degrees of the data's pitch.
    # (rows are in file order: row 0 is the frontal render)
    yaw_turn = cam.rotation_matrix(0.0, np.radians(10.0), 0.0).astype(np.float64)
    rows = evaluate(ds, [_Oracle(truth, yaw_turn)], ("given_box",), progress=False)["rows"]
    assert rows[0]["yaw_err"] == pytest.approx(10.0, abs=1e-3)
    assert abs(rows[0]["pitch_err"]) < 1e-3 and abs(rows[0]["roll_err"]) < 1e-3
    assert all(r["geodesic_deg"] == pytest.approx(10.0, abs=1e-3) for r in rows)
    pitch_down = cam.rotation_matrix(np.radians(8.0), 0.0, 0.0).astype(np.float64)
    rows = evaluate(ds, [_Oracle(truth, pitch_down)], ("given_box",), progress=False)["rows"]
    assert rows[0]["pitch_err"] == pytest.approx(-8.0, abs=1e-3) and abs(rows[0]["yaw_err"]) < 1e-3
    roll_cw = cam.rotation_matrix(0.0, 0.0, np.radians(-6.0)).astype(np.float64)
    rows = evaluate(ds, [_Oracle(truth, roll_cw)], ("given_box",), progress=False)["rows"]
    assert rows[0]["roll_err"] == pytest.approx(-6.0, abs=1e-3)
    # Yaw shrink: turning every face back towards frontal reads as negative shrink.
    shrink_rows = []
    for _r, (rot, _) in zip(rows, truth.values()):
        angles = head_pose.aflw_angles(rot)
        shrunk = head_pose.rotation_from_aflw(angles[0], 0.8 * angles[1], angles[2])
        shrink_rows.append(head_pose.pose_errors(shrunk, rot))
    expected = np.mean([-0.2 * abs(a[1]) for a in ANGLES_DEG[:5]])
    assert head_pose.summarise_pose(shrink_rows)["yaw_shrink"] == pytest.approx(expected, abs=1e-3)


def test_missing_prediction_counts_as_missing(render_folder):
    ds, _ = _truth(render_folder)

    class Nothing(Method):
        name = label = "nothing"

        def align_box(self, image, box, box_kind="landmarks"):
            return None

    res = evaluate(ds, [Nothing()], ("given_box",), progress=False)
    assert all(np.isnan(r["geodesic_deg"]) and np.isnan(r["nme3d_box"]) for r in res["rows"])
    assert "pose" not in res["summary"]["nothing"]["given_box"]


@pytest.mark.parametrize("yaw", [-80.0, 35.0])
def test_diagnosis_fit_recovers_the_pose_of_perfect_landmarks(morphable_model, yaw):
    from face_alignment_ros.evaluation.pose_diagnosis import fit_to_landmarks

    m = morphable_model
    params = (np.random.default_rng(5).standard_normal(m.n_id + m.n_exp) * m.shape_sigma * 0.5).astype(np.float32)
    camera = np.array([0.5, np.radians(-10.0), np.radians(yaw), np.radians(7.0), 64.0, 64.0], np.float32)
    rotation = cam.rotation_matrix(*camera[1:4])
    points = cam.project(camera, m.vertices(params, m.contour_landmarks(rotation, params)))
    assert head_pose.geodesic_deg(fit_to_landmarks(m, points), rotation) < 2.0


def test_mean_face_rotation_of_peer_points(morphable_model):
    from face_alignment_ros.evaluation.peers import mean_face_rotation

    m = morphable_model
    rotation = head_pose.rotation_from_aflw(*np.radians([12.0, -50.0, 8.0]))
    points = 0.7 * m.vertices(None, m.landmarks) @ rotation.T + np.array([200.0, 150.0, 30.0])
    assert head_pose.geodesic_deg(mean_face_rotation(points), rotation) < 0.01       # 3D points (MediaPipe)
    assert head_pose.geodesic_deg(mean_face_rotation(points[:, :2]), rotation) < 0.5  # image points (dlib)
