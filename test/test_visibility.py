import numpy as np

from face_alignment_ros.core.visibility import VisibilityTester


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
