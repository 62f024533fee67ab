"""The fine stages' descriptor: gradient-orientation histograms at points."""
import numpy as np
import pytest

from face_alignment_ros.core.gradient_histograms import HistogramLayout, histograms_at, orientation_channels

LAYOUT = HistogramLayout(crop_size=64, cell=4, grid=3, bins=8)


def _blobs(size=64, centres=((20.0, 30.0), (44.0, 25.0)), sigma=3.0):
    y, x = np.mgrid[:size, :size].astype(np.float32)
    img = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)) for cx, cy in centres)
    return (200 * img + 20).astype(np.uint8)


def test_shape_and_sift_normalisation():
    h = histograms_at(orientation_channels(_blobs(), LAYOUT), np.array([[20, 30], [44, 25], [5, 60]]), LAYOUT)
    assert h.shape == (3, LAYOUT.dim) == (3, 72) and h.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(h[:2], axis=1), 1.0, atol=1e-5)


def test_a_vertical_edge_fills_the_horizontal_gradient_bins():
    img = np.zeros((64, 64), np.uint8)
    img[:, 32:] = 200  # brightness grows to the right: gradient angle 0
    h = histograms_at(orientation_channels(img, LAYOUT), np.array([[32.0, 32.0]]), LAYOUT).reshape(9, 8)
    assert h[:, 0].sum() > 0.9 * h.sum()
    flipped = histograms_at(orientation_channels(img[:, ::-1].copy(), LAYOUT), np.array([[31.0, 32.0]]),
                            LAYOUT).reshape(9, 8)
    assert flipped[:, 4].sum() > 0.9 * flipped.sum()  # 180 degrees


def test_shifting_image_and_points_together_changes_nothing():
    img = _blobs(centres=((24.0, 30.0),))
    moved = _blobs(centres=((29.0, 33.0),))
    a = histograms_at(orientation_channels(img, LAYOUT), np.array([[24.0, 30.0], [26.5, 28.0]]), LAYOUT)
    b = histograms_at(orientation_channels(moved, LAYOUT), np.array([[29.0, 33.0], [31.5, 31.0]]), LAYOUT)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_the_descriptor_tells_where_the_blob_is():
    """Points left and right of a blob see mirror-image histograms, and differ from each other."""
    img = _blobs(centres=((32.0, 32.0),))
    ch = orientation_channels(img, LAYOUT)
    left, right = histograms_at(ch, np.array([[29.0, 32.0], [35.0, 32.0]]), LAYOUT).reshape(2, 3, 3, 8)
    assert np.abs(left - right).sum() > 0.5
    # mirroring x maps orientation bin b to (4 - b) mod 8 and reverses the cell columns
    mirrored = right[:, ::-1][..., [(4 - b) % 8 for b in range(8)]]
    np.testing.assert_allclose(left, mirrored, atol=1e-3)


@pytest.mark.parametrize("point", [[-50.0, 10.0], [10.0, 1e6], [np.nan, 3.0]])
def test_points_off_the_image_give_finite_rows(point):
    h = histograms_at(orientation_channels(_blobs(), LAYOUT), np.array([point]), LAYOUT)
    assert np.all(np.isfinite(h))


def test_default_layout_is_the_shipped_dff_models():
    """`face-align-train descent --fine-stages N` learns with the default layout: the shipped
    model's, so that its training command reproduces it."""
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.descent_model import DescentModel

    shipped = DescentModel.load(resources.shipped_models("dff").descent)
    assert shipped.fine_layout == HistogramLayout()
