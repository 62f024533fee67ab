"""Tests of the segment stage (face_alignment_ros.training.segmentation): small and fast."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def model(morphable_model):
    return morphable_model


@pytest.fixture(scope="module")
def small(model):
    from face_alignment_ros.training.segmentation import segment_mean_face

    return segment_mean_face(model, 2, 50, np.random.default_rng(7), max_iterations=30)


def test_every_region_vertex_has_a_label(model, small):
    labels, region = small["labels"], small["region"]
    assert labels.shape == (2, model.n_vertices) and labels.dtype == np.int16
    assert region.sum() > 0.9 * model.n_vertices
    assert np.all(labels[:, region] >= 0) and np.all(labels[:, ~region] == -1)
    for lab in labels:
        assert set(np.unique(lab[region])) == set(range(50))
    assert not np.array_equal(labels[0], labels[1])  # two different random segmentations


def test_patches_roughly_equal_area_and_connected(model, small):
    from face_alignment_ros.training.segmentation import area_cv, disconnected_patches

    area = small["patch_area"]
    cv = area_cv(area)
    print(f"patch-area coefficient of variation (2 x 50 patches): {cv:.3f}")
    assert cv < 0.25
    assert area.min() > 0.4 * area.mean()
    np.testing.assert_allclose(area.sum(axis=1), small["vertex_area"][small["region"]].sum(), rtol=1e-5)
    ids = np.flatnonzero(small["region"])
    for lab in small["labels"]:
        assert disconnected_patches(lab[ids], ids, model.triangles, model.n_vertices) == 0


def test_deterministic_under_seed(model, small):
    from face_alignment_ros.training.segmentation import segment_mean_face

    again = segment_mean_face(model, 2, 50, np.random.default_rng(7), max_iterations=30)
    assert np.array_equal(again["labels"], small["labels"])
    other = segment_mean_face(model, 1, 50, np.random.default_rng(8), max_iterations=30)
    assert not np.array_equal(other["labels"][0], small["labels"][0])


def test_lloyd_equalises_a_flat_square():
    from scipy.spatial import cKDTree

    from face_alignment_ros.training.segmentation import area_cv, lloyd_cvt

    g = np.linspace(0, 100, 101)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], 1)
    w = np.ones(len(pts))
    labels, seeds, energy, _ = lloyd_cvt(pts, w, 25, np.random.default_rng(0), 50, cKDTree(pts))
    assert energy[-2] < 0.7 * energy[0]
    assert area_cv(np.bincount(labels, w)) < 0.15
    assert len(set(seeds.tolist())) == 25


def test_render_labels(model, small):
    from face_alignment_ros.training.segmentation import render_labels

    img = render_labels(model, small["labels"][0], 60.0, size=96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and img.max() > 0
