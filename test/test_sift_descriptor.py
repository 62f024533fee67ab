import numpy as np

from face_alignment_ros.core.sift_descriptor import SiftDescriptor


def _image():
    rng = np.random.default_rng(0)
    img = np.full((128, 128), 90, np.uint8)
    patch = rng.integers(0, 255, size=(24, 24), dtype=np.uint8)
    img[10:34, 10:34] = patch
    img[80:104, 60:84] = patch
    return img


def test_identical_patches_agree_and_unit_rows():
    d = SiftDescriptor().compute(_image(), [[22, 22], [72, 92], [50, 60]], 4.0)
    assert d.shape == (3, 128) and d.dtype == np.float32
    assert np.allclose(d[0], d[1], atol=1e-6)
    assert np.allclose(np.linalg.norm(d[:2], axis=1), 1, atol=1e-5)


def test_outside_rows_zero():
    d = SiftDescriptor().compute(_image(), [[-1, 5], [5, 130], [np.nan, 3], [22, 22]], 4.0)
    assert not d[:3].any() and d[3].any()


def test_bgr_input_and_empty():
    img = np.repeat(_image()[:, :, None], 3, axis=2)
    s = SiftDescriptor()
    assert np.allclose(s.compute(img, [[22, 22]], 4.0), s.compute(_image(), [[22, 22]], 4.0))
    assert s.compute(img, np.zeros((0, 2)), 4.0).shape == (0, 128)
