import numpy as np

from face_alignment_ros.core import camera as cam


def test_rotation_round_trip():
    for angles in [(0.1, -0.7, 0.3), (0.0, 1.4, 0.0), (-0.4, 0.2, -0.9)]:
        np.testing.assert_allclose(cam.rotation_angles(cam.rotation_matrix(*angles)), angles, atol=1e-5)


def test_axis_convention():
    nose = np.array([[0.0, 0.0, -100.0]], np.float32)   # in front of the face centre
    chin = np.array([[0.0, 100.0, 0.0]], np.float32)
    top = np.array([[0.0, -100.0, 0.0]], np.float32)
    assert cam.project([1, 0, 0.5, 0, 0, 0], nose)[0, 0] < 0, "yaw > 0 turns the face to the image left"
    assert cam.transform([1, 0.5, 0, 0, 0, 0], chin)[0, 2] > 0, "pitch > 0 moves the chin away (looks down)"
    assert cam.project([1, 0, 0, 0.5, 0, 0], top)[0, 0] > 0, "roll > 0 turns the face clockwise"


def test_projection_is_eq2():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20, 3)).astype(np.float32)
    w = np.array([2.0, 0.2, -0.3, 0.1, 5.0, -7.0], np.float32)
    r = cam.rotation_matrix(*w[1:4])
    expected = w[0] * (r[:2] @ pts.T).T + w[4:]
    np.testing.assert_allclose(cam.project(w, pts), expected, atol=1e-4)
    np.testing.assert_allclose(cam.transform(w, pts)[:, :2], expected, atol=1e-4)


def test_fit_camera_recovers_pose():
    rng = np.random.default_rng(1)
    pts = rng.normal(scale=50, size=(68, 3)).astype(np.float32)
    w = np.array([1.3, 0.3, -0.8, 0.2, 120.0, 90.0], np.float32)
    fitted = cam.fit_camera(cam.project(w, pts) + rng.normal(scale=0.2, size=(68, 2)), pts)
    np.testing.assert_allclose(fitted[:4], w[:4], atol=2e-2)
    np.testing.assert_allclose(fitted[4:], w[4:], atol=1.0)


def test_mirror_camera_projects_the_mirrored_face(morphable_model):
    from face_alignment_ros.core.morphable_model import IBUG68_MIRROR

    assert sorted(IBUG68_MIRROR) == list(range(68))
    assert np.array_equal(IBUG68_MIRROR[IBUG68_MIRROR], np.arange(68))  # an involution
    camera = np.array([2.0, 0.2, 0.5, 0.1, 300.0, 200.0], np.float32)
    points = morphable_model.vertices(None, morphable_model.landmarks)
    flipped = cam.project(camera, points)
    flipped[:, 0] = 639.0 - flipped[:, 0]
    mirrored = cam.project(cam.mirror_camera(camera, 640), points)
    # the mean face is symmetric to within ~1 mm at its landmark vertices (2 px at s = 2)
    assert np.abs(flipped[IBUG68_MIRROR] - mirrored).max() < 3.0
    assert np.abs(flipped - mirrored).max() > 30.0  # without the reordering it is far off


def test_rotation_matrix_is_transforms3d_sxyz_to_the_last_bit():
    """``rotation_matrix`` writes euler2mat out for 'sxyz' (speed): the same matrix, bit for bit."""
    from transforms3d.euler import euler2mat

    from face_alignment_ros.core.camera import rotation_matrix

    for pitch, yaw, roll in np.random.default_rng(0).uniform(-4, 4, (500, 3)).astype(np.float32):
        assert np.array_equal(rotation_matrix(pitch, yaw, roll), euler2mat(pitch, yaw, roll, "sxyz").astype(np.float32))
