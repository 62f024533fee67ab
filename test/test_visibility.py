import numpy as np
from scipy.ndimage import maximum_filter

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.rasterizer import rasterize_depth
from face_alignment_ros.core.visibility import DEPTH_TOLERANCE_MM, GRID, VisibilityTester


def _visible(model, yaw_deg):
    w = np.array([1.0, 0.0, np.radians(yaw_deg), 0.0, 200, 200], np.float32)
    return VisibilityTester(model).visible(w, None, model.mean[model.landmarks])


def test_frontal_sees_every_landmark(morphable_model):
    assert _visible(morphable_model, 0).all()


def test_profile_hides_far_jaw_and_shows_near_jaw(morphable_model):
    # yaw > 0 turns the face to the image left: the jaw points 0-4 (image left) go away.
    vis = _visible(morphable_model, 75)
    assert not vis[0:5].any(), "far-side jaw contour must be hidden"
    assert vis[12:17].all(), "near-side jaw contour must be visible"
    vis = _visible(morphable_model, -75)
    assert not vis[12:17].any() and vis[0:5].all()


def test_degenerate_camera_sees_nothing(morphable_model):
    w = np.array([0.0, 0, 0, 0, 0, 0], np.float32)
    assert not VisibilityTester(morphable_model).visible(w, None, morphable_model.mean[:5]).any()


def _plain_depth_buffer_visible(model, camera, shape_params, points, grid=GRID, tolerance_mm=DEPTH_TOLERANCE_MM):
    """The straightforward test the fused kernel replaces: transform the decimated mesh,
    rasterise a grid x grid depth buffer over its extent, take the 3x3 maximum, look up."""
    mesh = cam.transform(camera, model.vertices(shape_params, model.decimated))
    query = cam.transform(camera, points)
    lo = mesh[:, :2].min(axis=0)
    scale = (grid - 1) / float(np.max(mesh[:, :2].max(axis=0) - lo))
    mesh[:, :2] = (mesh[:, :2] - lo) * scale
    farthest = maximum_filter(rasterize_depth(mesh, model.decimated_triangles, grid, grid), size=3, mode="nearest")
    cell = np.clip(np.rint((query[:, :2] - lo) * scale), 0, grid - 1).astype(int)
    return query[:, 2] <= farthest[cell[:, 1], cell[:, 0]] + tolerance_mm * abs(float(camera[cam.S]))


def test_fast_visibility_agrees_with_the_plain_depth_buffer_across_poses(morphable_model):
    m = morphable_model
    tester = VisibilityTester(m)
    rng = np.random.default_rng(3)
    agree, hidden = [], 0
    for yaw_deg in np.linspace(-90, 90, 25):
        w = np.array([rng.uniform(0.4, 3.0), rng.uniform(-0.5, 0.5), np.radians(yaw_deg), rng.uniform(-0.5, 0.5),
                      rng.uniform(0, 300), rng.uniform(0, 300)], np.float32)
        p = (rng.standard_normal(50) * m.shape_sigma * 0.7).astype(np.float32)
        points = m.vertices(p, m.dense_landmarks)
        fast = tester.visible(w, p, points)
        agree.append((fast == _plain_depth_buffer_visible(m, w, p, points)).mean())
        hidden += int((~fast).sum())
    assert min(agree) >= 0.99 and np.mean(agree) >= 0.999, agree
    assert hidden > 100, "the poses must hide some points for the comparison to mean anything"


def test_non_finite_input_sees_nothing(morphable_model):
    m = morphable_model
    w = np.array([1.0, 0.0, np.nan, 0.0, 200, 200], np.float32)
    assert not VisibilityTester(m).visible(w, None, m.mean[m.landmarks]).any()
    w[2] = 0.0
    points = m.mean[m.landmarks].copy()
    points[3] = np.inf
    vis = VisibilityTester(m).visible(w, None, points)
    assert not vis[3] and vis[:3].all()
