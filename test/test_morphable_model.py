import numpy as np
import pytest

from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import mesh_topology
from face_alignment_ros.core.model_conversion import face_region
from face_alignment_ros.core.morphable_model import ModelFileError, MorphableModel


def test_units_and_frame(morphable_model):
    m = morphable_model
    lm = m.mean[m.landmarks]
    width = lm[:, 0].max() - lm[:, 0].min()
    assert 100 < width < 180, "jaw-to-jaw width should be a human face in millimetres"
    # y down: the chin (8) is below the nose bridge (27); z away: the nose tip (30) is nearest.
    assert lm[8, 1] > lm[27, 1]
    assert lm[30, 2] < lm[0, 2] and lm[30, 2] < lm[16, 2]


def test_dense_landmarks_start_with_the_68(morphable_model):
    m = morphable_model
    assert len(m.dense_landmarks) == 160 and len(np.unique(m.dense_landmarks)) == 160
    np.testing.assert_array_equal(m.dense_landmarks[:68], m.landmarks)


def test_mesh_uses_every_face_region_vertex(morphable_model):
    m = morphable_model
    used = np.zeros(m.n_vertices, bool)
    used[m.triangles.ravel()] = True
    region = face_region(m.mean, m.landmarks)
    assert used[region].mean() > 0.99, f"{(~used[region]).sum()} face-region vertices unused"
    assert used[m.dense_landmarks].all()


def test_no_long_edges(morphable_model):
    for verts, tris in ((morphable_model.mean, morphable_model.triangles),
                        (morphable_model.mean[morphable_model.decimated], morphable_model.decimated_triangles)):
        lengths = mesh_topology.edge_lengths(verts, tris)
        assert lengths.max() <= 3.0 * np.median(lengths) + 1e-4


def test_normals_face_outward(morphable_model):
    m = morphable_model
    axis = m.metadata["axis_depth_mm"]
    for verts, tris in ((m.mean, m.triangles), (m.mean[m.decimated], m.decimated_triangles)):
        dots = np.einsum("ij,ij->i", mesh_topology.triangle_normals(verts, tris),
                         mesh_topology.outward_directions(verts, tris, axis))
        assert (dots >= 0).all()
    # The frontal face looks at the camera (-z): most front-region normals point that way.
    region = np.isin(m.triangles, face_region(m.mean, m.landmarks)).all(axis=1)
    normals = mesh_topology.triangle_normals(m.mean, m.triangles[region])
    assert (normals[:, 2] < 0).mean() > 0.8  # the rest: nostrils, jaw sides


def test_shape_params_move_vertices_with_the_right_scale(morphable_model):
    m = morphable_model
    p = np.zeros(50, np.float32)
    p[0] = m.id_sigma[0]
    offset = np.linalg.norm(m.vertices(p) - m.mean, axis=1).max()
    assert 1.0 < offset < 60.0, "one sigma of the first identity component is millimetres, not metres"
    sub = m.vertices(p, m.dense_landmarks)
    np.testing.assert_allclose(sub, m.vertices(p)[m.dense_landmarks], atol=1e-3)


def test_contour_moves_far_jaw_inwards(morphable_model):
    from face_alignment_ros.core.camera import rotation_matrix

    m = morphable_model
    np.testing.assert_array_equal(m.contour_landmarks(np.eye(3)), m.landmarks)
    yawed = m.contour_landmarks(rotation_matrix(0, np.radians(60), 0))
    moved = np.flatnonzero(yawed != m.landmarks)
    assert len(moved) >= 3 and set(moved) <= set(range(17))


def test_load_errors(tmp_path, morphable_model):
    with pytest.raises(ModelFileError, match="not found"):
        MorphableModel.load(tmp_path / "absent.npz")
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelFileError, match="unreadable"):
        MorphableModel.load(bad)


def test_malformed_files_give_model_file_error(tmp_path):
    null_meta = tmp_path / "null_meta.npz"
    np.savez(null_meta, metadata_json=np.array("null"), mean=np.zeros((3, 3), np.float32))
    with pytest.raises(ModelFileError, match="'metadata_json' is NoneType"):
        MorphableModel.load(null_meta)
    not_json = tmp_path / "not_json.npz"
    np.savez(not_json, metadata_json=np.array("{schema"))
    with pytest.raises(ModelFileError, match="JSONDecodeError"):
        MorphableModel.load(not_json)
    plain_npy = tmp_path / "plain.npz"
    with open(plain_npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ModelFileError, match="unreadable"):
        MorphableModel.load(plain_npy)


def test_decimated_mesh_rows_are_cached_and_exact(morphable_model):
    """The decimated mesh (asked for every frame) comes from rows gathered once; same values."""
    p = np.random.default_rng(3).normal(size=morphable_model.n_id + morphable_model.n_exp).astype(np.float32)
    cached = morphable_model.vertices(p, morphable_model.decimated)
    assert np.allclose(cached, morphable_model.vertices(p, morphable_model.decimated.copy()), atol=1e-5)
    assert morphable_model.vertices(p, morphable_model.decimated) is not cached  # a new array each call


def test_precomputed_rows_match_the_full_bases(morphable_model):
    m = morphable_model
    rng = np.random.default_rng(5)
    p = (rng.standard_normal(50) * m.shape_sigma).astype(np.float32)
    np.testing.assert_allclose(m.subset(m.decimated).vertices(p), m.vertices(p, m.decimated), atol=1e-3)
    np.testing.assert_array_equal(m.subset(m.decimated).vertices(None), m.mean[m.decimated])
    for yaw in (-1.2, 0.0, 0.7):
        rot = cam.rotation_matrix(0.1, yaw, -0.1)
        ids = m.contour_landmarks(rot, p)
        # The jaw point on each row is the candidate outermost in the image, from the full bases.
        cand = m.contour_candidates
        x = np.where(cand >= 0, (m.vertices(p)[np.maximum(cand, 0)] @ rot.T)[..., 0], np.nan)
        side = np.sign(m.mean[m.landmarks[:17], 0])[:, None]
        np.testing.assert_array_equal(ids[:17], cand[np.arange(17), np.nanargmax(x * side, axis=1)])
        np.testing.assert_array_equal(ids[17:], m.landmarks[17:])
        for got, want in zip(m.landmark_rows(ids), m.basis_rows(ids)):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="landmark"):
        m.landmark_rows(np.setdiff1d(m.decimated, np.concatenate([m.landmarks, m.contour_candidates.ravel()]))[:5])
