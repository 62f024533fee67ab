import dataclasses
import io
import json

import numpy as np
import pytest

from face_alignment_ros.core.descent_model import DescentModel, local_moves
from face_alignment_ros.core.face_crop import BoxPrior
from face_alignment_ros.core.morphable_model import ModelFileError


def _model(descriptor="dff", dim=4, k=2):
    rng = np.random.default_rng(0)
    d = 160 * dim
    return DescentModel(R_X=rng.normal(size=(k, 136, d)).astype(np.float32), b_X=np.zeros((k, 136), np.float32),
                        R_w=rng.normal(size=(k, 6, d)).astype(np.float32), b_w=np.zeros((k, 6), np.float32),
                        descriptor=descriptor, descriptor_dim=dim, crop_size=64, regularisation=3.0,
                        box_priors={"detector": BoxPrior(0.01, -0.02, 0.3, 0.05, 0.03, 0.05)},
                        provenance={"command": "test"})


def _assert_refused(path, match: str, **changes):
    """``_rewrite`` the file, then loading it fails with a ModelFileError matching ``match``."""
    _rewrite(path, **changes)
    with pytest.raises(ModelFileError, match=match):
        DescentModel.load(path)


def _rewrite(path, **changes):
    """Re-save the file with some arrays or metadata fields replaced."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["metadata_json"]))
    for key, value in changes.items():
        if key in arrays and key != "metadata_json":
            arrays[key] = value
        else:
            meta[key] = value
    arrays["metadata_json"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_round_trip_float16(tmp_path):
    model = _model()
    path = tmp_path / "m.npz"
    sha = model.save(path)
    assert len(sha) == 64
    loaded = DescentModel.load(path, expect_descriptor="dff")
    np.testing.assert_allclose(loaded.R_X, model.R_X, rtol=1e-3, atol=1e-3)
    assert loaded.box_priors["detector"] == model.box_priors["detector"]
    assert loaded.iterations == 2 and loaded.crop_size == 64 and loaded.regularisation == 3.0
    dx, dw = loaded.step(0, np.ones(loaded.feature_dim, np.float32))
    assert dx.shape == (68, 2) and dw.shape == (6,)


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    path.write_bytes(path.read_bytes()[: 200])
    with pytest.raises(ModelFileError, match="unreadable or truncated"):
        DescentModel.load(path)


def test_wrong_shape_names_the_field(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, "'R_w' has shape", R_w=np.zeros((2, 5, 640), np.float16))


def test_nan_names_the_field(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    bad = np.zeros((2, 136), np.float32)
    bad[1, 3] = np.nan
    _assert_refused(path, "'b_X' holds NaN", b_X=bad)


def test_wrong_descriptor_kind(tmp_path):
    path = tmp_path / "m.npz"
    _model(descriptor="sift").save(path)
    with pytest.raises(ModelFileError, match="'descriptor' is 'sift', expected 'dff'"):
        DescentModel.load(path, expect_descriptor="dff")
    _assert_refused(path, "'descriptor' is 'hog'", descriptor="hog")


def test_missing_and_inconsistent_metadata(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, "'iterations' says 3", iterations=3)
    _assert_refused(path, "schema_version", iterations=2, schema_version=99)
    with pytest.raises(ModelFileError, match="not found"):
        DescentModel.load(tmp_path / "absent.npz")
    with pytest.raises(ModelFileError, match="cannot be read"):
        DescentModel.load(tmp_path)  # a folder


def test_first_iterations_keep_the_early_steps(tmp_path):
    model = _model(k=3)
    cut = model.first(2)
    assert cut.iterations == 2 and cut.provenance["truncated_from_iterations"] == 3
    phi = np.ones(model.feature_dim, np.float32)
    for k in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(cut.step(k, phi), model.step(k, phi)))
    cut.save(tmp_path / "cut.npz")
    assert DescentModel.load(tmp_path / "cut.npz").iterations == 2
    with pytest.raises(ValueError, match="1..3"):
        model.first(4)


def test_dff_model_refuses_weights_it_was_not_learned_on(tmp_path):
    from face_alignment_ros.core import resources
    from face_alignment_ros.core.descriptors import check_dff_pairing

    learned_on, other = tmp_path / "learned_on.pt", tmp_path / "other.pt"
    learned_on.write_bytes(b"weights of the run")
    other.write_bytes(b"weights of a later run")
    model = _model()
    model.extra = {"dff_weights_sha256": resources.file_sha256(learned_on)}
    check_dff_pairing(model, learned_on)
    with pytest.raises(ModelFileError, match="re-run `face-align-train descent"):
        check_dff_pairing(model, other)
    model.extra = {}  # older files carry no hash: not checked
    check_dff_pairing(model, other)
    with pytest.raises(ModelFileError, match="does not exist"):  # not a raw FileNotFoundError
        check_dff_pairing(model, tmp_path / "absent.pt")


def _write_raw_metadata(path, text: str):
    """Replace the metadata_json field by an arbitrary string."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["metadata_json"] = np.array(text)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("field, value", [("regularisation", float("nan")), ("regularisation", float("inf")),
                                          ("regularisation", -1.0)])
def test_non_finite_or_negative_regularisation_is_refused(tmp_path, field, value):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, "'regularisation'", **{field: value})


@pytest.mark.parametrize("entry, value", [("dx", float("nan")), ("log_scale", float("-inf")), ("std_dy", -0.1),
                                          ("dy", "0.1"), ("colour", 1.0)])
def test_bad_box_prior_is_refused(tmp_path, entry, value):
    path = tmp_path / "m.npz"
    model = _model()
    model.save(path)
    prior = dict(model.box_priors["detector"].to_dict(), **{entry: value})
    _assert_refused(path, r"box_priors\.detector", box_priors={"detector": prior})


def _keypoint_prior(width=18):
    return dict(BoxPrior(0.01, -0.02, 0.3).to_dict(), keypoint_intercept=[0.0, -0.05, 0.3],
                keypoint_coef=[[0.1] * width, [0.0] * width, [-0.2] * width])


def test_keypoint_prior_round_trip(tmp_path):
    model = _model()
    model.box_priors = {"detector": BoxPrior(**_keypoint_prior())}
    model.save(tmp_path / "m.npz")
    loaded = DescentModel.load(tmp_path / "m.npz").box_priors["detector"]
    assert loaded == model.box_priors["detector"] and loaded.keypoint_count == 6


@pytest.mark.parametrize("changes", [
    {"keypoint_intercept": [0.0, 0.1]},                                   # 2 intercepts
    {"keypoint_coef": [[0.1] * 18, [0.0] * 18]},                          # 2 rows
    {"keypoint_coef": [[0.1] * 18, [0.0] * 17, [0.0] * 18]},              # ragged
    {"keypoint_coef": [[0.1] * 4, [0.0] * 4, [0.0] * 4]},                 # not 3k wide
    {"keypoint_coef": [[0.1] * 18, [float("nan")] * 18, [0.0] * 18]},     # NaN
    {"keypoint_intercept": "wide"},
    {"keypoint_coef": [[0.1] * 18, 3, [0.0] * 18]},
])
def test_bad_keypoint_prior_is_refused(tmp_path, changes):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, r"box_priors\.detector", box_priors={"detector": dict(_keypoint_prior(), **changes)})


def test_validate_refuses_a_nan_prior_before_saving(tmp_path):
    from face_alignment_ros.core.face_crop import BoxPrior

    model = _model()
    model.box_priors = {"detector": BoxPrior(dx=float("nan"))}
    with pytest.raises(ModelFileError, match=r"box_priors\.detector\.dx"):
        model.save(tmp_path / "m.npz")


@pytest.mark.parametrize("text", ["null", "[1, 2]", '"a string"', "3.5"])
def test_metadata_of_the_wrong_json_type_names_the_field(tmp_path, text):
    path = tmp_path / "m.npz"
    _model().save(path)
    _write_raw_metadata(path, text)
    with pytest.raises(ModelFileError, match="'metadata_json'"):
        DescentModel.load(path)


@pytest.mark.parametrize("field, value", [("descriptor_dim", "4"), ("descriptor_dim", 4.0), ("iterations", True),
                                          ("crop_size", None), ("descriptor", 7), ("box_priors", []),
                                          ("box_priors", {"detector": "wide"}), ("provenance", "by hand"),
                                          ("extra", None), ("schema_version", "1"), ("n_dense", [160]),
                                          ("regularisation", "10")])
def test_fields_of_the_wrong_json_type_name_the_field(tmp_path, field, value):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, f"'{field}", **{field: value})


def test_shipped_model_with_null_metadata_gives_model_file_error():
    """The issue's reproducer: the shipped file, metadata_json set to null, sent as bytes."""
    from face_alignment_ros.core import resources

    shipped = resources.shipped_models("dff").descent
    with np.load(shipped) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["metadata_json"] = np.array("null")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with pytest.raises(ModelFileError, match="'metadata_json' is NoneType"):
        DescentModel.from_bytes(buf.getvalue(), source="/descent_model")


@pytest.mark.parametrize("name, bad", [("R_X", np.ones((2, 136, 640), np.int16)),
                                       ("b_X", np.zeros((2, 136), np.int64)),
                                       ("R_w", np.zeros((2, 6, 640), bool)),
                                       ("b_w", np.zeros((2, 6), np.complex64)),
                                       ("b_w", np.zeros((2, 6), object))])
def test_non_float_arrays_are_refused(tmp_path, name, bad):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, f"'{name}' has dtype", **{name: bad})


def test_metadata_stored_as_numbers_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    with np.load(path) as npz:
        arrays = dict(npz, metadata_json=np.zeros(3))
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="'metadata_json'"):
        DescentModel.load(path)


def test_sizes_beyond_bounds_are_refused_from_the_metadata(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, "'descriptor_dim' is 100000", descriptor_dim=100_000)
    _assert_refused(path, "'iterations' is 10000", descriptor_dim=4, iterations=10_000)


def test_a_wrong_shape_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    """The header gives the shape: a matrix that does not match the metadata is never decompressed."""
    path = tmp_path / "m.npz"
    _model().save(path)
    _rewrite(path, R_w=np.zeros((2, 6, 64_000), np.float32))
    read = []
    real_read_array = np.lib.format.read_array

    def spy(fp, *args, **kwargs):
        read.append(getattr(fp, "name", None))
        return real_read_array(fp, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "read_array", spy)
    with pytest.raises(ModelFileError, match="'R_w' has shape"):
        DescentModel.load(path)
    assert "R_X.npy" in read and "R_w.npy" not in read


def test_any_corruption_of_the_bytes_gives_model_file_error():
    """Parsing errors of every kind (zip, zlib, npy header, JSON) surface as ModelFileError,
    the one type the ROS nodes catch."""
    data = bytearray(_model(k=1).to_bytes())
    rng = np.random.default_rng(1)
    not_npz = io.BytesIO()
    np.save(not_npz, np.zeros(3))
    candidates = [not_npz.getvalue(), b"", b"PK\x03\x04" + bytes(40)]
    for pos in rng.integers(0, len(data), size=60):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        candidates.append(bytes(bad))
    for blob in candidates:
        try:
            DescentModel.from_bytes(blob)
        except ModelFileError:
            pass


def _with_stages(model, n=2, shift=0.0):
    rng = np.random.default_rng(1)
    r = rng.normal(size=(n, 136, 68 * model.descriptor_dim)).astype(np.float32)
    b = np.full((n, 136), shift, np.float32)
    return model.with_landmark_stages(r, b, provenance={"landmark_stages": {"variant": "test"}})


def test_landmark_stages_round_trip(tmp_path):
    model = _with_stages(_model())
    path = tmp_path / "m.npz"
    model.save(path, dtype=np.float32)
    loaded = DescentModel.load(path)
    assert loaded.landmark_iterations == 2 and loaded.iterations == 2
    np.testing.assert_array_equal(loaded.R_L, model.R_L)
    assert loaded.landmark_step(1, np.ones(68 * 4)).shape == (68, 2)
    assert _model().landmark_iterations == 0  # files without 2D stages still load as before


def test_file_without_the_landmark_stage_field_loads_with_none(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["metadata_json"]))
    meta.pop("landmark_iterations")  # files written before the 2D stages existed
    arrays["metadata_json"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    assert DescentModel.load(path).landmark_iterations == 0
    _assert_refused(path, "'landmark_iterations' is NoneType None, expected an integer", landmark_iterations=None)


def test_landmark_stage_count_must_match_the_arrays(tmp_path):
    path = tmp_path / "m.npz"
    _with_stages(_model()).save(path)
    _assert_refused(path, "'landmark_iterations' says 3 but 'R_L' holds 2", landmark_iterations=3)
    _assert_refused(path, "'R_L' has shape", landmark_iterations=2, R_L=np.zeros((2, 136, 68 * 5), np.float16))
    _assert_refused(path, "'R_L' holds NaN", R_L=np.full((2, 136, 68 * 4), np.nan, np.float32))


def test_landmark_stage_arrays_missing(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    _assert_refused(path, "lacks field 'R_L'", landmark_iterations=1)


def test_first_drops_the_2d_stages_of_a_cut_cascade():
    model = _with_stages(_model(k=3))
    assert model.first(3).landmark_iterations == 2
    assert model.first(3, 1).landmark_iterations == 1
    cut = model.first(2)
    assert cut.landmark_iterations == 0 and cut.provenance["truncated_from_iterations"] == 3
    with pytest.raises(ValueError, match="landmark_iterations"):
        model.first(2, 1)  # learned after 3 iterations: meaningless after 2


def _with_fine_stages(model, n=2, rank=8, shift=0.5):
    from face_alignment_ros.core.gradient_histograms import HistogramLayout

    layout = HistogramLayout(crop_size=model.crop_size, cell=4, grid=2, bins=4)
    rng = np.random.default_rng(2)
    r = rng.normal(size=(n, 136, 68 * layout.dim)).astype(np.float32)
    return model.with_fine_stages(r, np.full((n, 136), shift, np.float32), layout, rank,
                                  provenance={"fine_stages": {"test": True}}), r


def test_fine_stages_round_trip_as_a_low_rank_product(tmp_path):
    model, r = _with_fine_stages(_with_stages(_model()))
    assert model.fine_iterations == 2 and model.fine_rank == 8 and model.U_F.shape == (2, 136, 8)
    h = np.random.default_rng(3).normal(size=68 * model.fine_layout.dim)
    # the best rank-8 approximation: its residual is orthogonal to the kept part
    full, kept = r[0] @ h, model.U_F[0] @ (model.V_F[0] @ h)
    u, sv, vt = np.linalg.svd(r[0].astype(np.float64))
    np.testing.assert_allclose(kept, (u[:, :8] * sv[:8]) @ (vt[:8] @ h), rtol=1e-4, atol=1e-3)
    assert np.linalg.norm(full - kept) < np.linalg.norm(full)
    path = tmp_path / "m.npz"
    model.save(path, dtype=np.float32)
    loaded = DescentModel.load(path)
    assert (loaded.fine_iterations, loaded.fine_rank, loaded.fine_layout) == (2, 8, model.fine_layout)
    np.testing.assert_allclose(loaded.fine_step(1, h), model.fine_step(1, h), rtol=1e-5, atol=1e-4)
    assert loaded.landmark_iterations == 2  # the DFF 2D stages stay
    assert _model().fine_iterations == 0  # files without fine stages load as before


def test_bad_fine_stage_files_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    _with_fine_stages(_model())[0].save(path)
    _assert_refused(path, "'fine_iterations' says 3 but 'U_F' holds 2", fine_iterations=3)
    _rewrite(path, fine_iterations=2)
    _assert_refused(path, "'fine_rank' is NoneType None", fine_rank=None)
    _rewrite(path, fine_rank=8)
    _assert_refused(path, "'V_F' holds NaN", V_F=np.full((2, 8, 68 * 16), np.nan, np.float32))
    _rewrite(path, V_F=np.zeros((2, 8, 68 * 16), np.float16))
    _assert_refused(path, "'fine_layout' has entries", fine_layout={"cell": 4})
    _assert_refused(path, "'fine_layout.cell' is 0", fine_layout={"crop_size": 64, "cell": 0, "grid": 2, "bins": 4})
    _assert_refused(path, "'U_F' has shape", fine_layout={"crop_size": 64, "cell": 4, "grid": 2, "bins": 4},
                    fine_rank=9)


def test_first_keeps_fine_stages_only_after_everything_they_were_learned_on():
    model = _with_fine_stages(_with_stages(_model(k=3)))[0]
    assert model.first(3).fine_iterations == 2
    assert model.first(3, 2, 1).fine_iterations == 1
    assert model.first(3, 1).fine_iterations == 0  # a DFF stage cut: the fine stages go too
    assert model.first(2).fine_iterations == 0
    with pytest.raises(ValueError, match="fine_iterations"):
        model.first(3, 1, 1)


def _with_local_stages(model, n=1, k=3, shift=0.25):
    from face_alignment_ros.core.gradient_histograms import HistogramLayout

    layout = HistogramLayout(crop_size=model.crop_size, cell=4, grid=2, bins=4)
    neighbours = np.stack([(np.arange(k) + i) % 68 for i in range(68)])  # itself, then the next ones
    w = np.random.default_rng(4).normal(size=(n, 68, 2, k * layout.dim)).astype(np.float32)
    return model.with_local_stages(w, np.full((n, 136), shift, np.float32), neighbours, layout,
                                   provenance={"local_stages": {"test": True}}), w


def test_local_stages_read_each_landmarks_neighbours_and_round_trip(tmp_path):
    model, w = _with_local_stages(_with_stages(_model()))
    model = _with_fine_stages(model)[0]
    assert (model.local_iterations, model.fine_iterations, model.uses_fine_crop) == (1, 2, True)
    h = np.random.default_rng(5).normal(size=(68, model.fine_layout.dim)).astype(np.float32)
    expected = np.stack([w[0, i] @ h[[i, (i + 1) % 68, (i + 2) % 68]].ravel() for i in range(68)]) + 0.25
    np.testing.assert_allclose(model.local_step(0, h), expected, rtol=1e-4, atol=1e-4)
    path = tmp_path / "m.npz"
    model.save(path, dtype=np.float32)
    loaded = DescentModel.load(path)
    assert (loaded.local_iterations, loaded.fine_iterations, loaded.landmark_iterations) == (1, 2, 2)
    np.testing.assert_array_equal(loaded.local_neighbours, model.local_neighbours)
    np.testing.assert_allclose(loaded.local_step(0, h), model.local_step(0, h), rtol=1e-5, atol=1e-5)
    assert not _model().uses_fine_crop and _model().local_iterations == 0


def test_local_moves_in_chunks_equal_one_pass():
    rng = np.random.default_rng(3)
    h = rng.random((10, 68, 8), dtype=np.float32)
    neighbours = np.array([rng.choice(68, 3, replace=False) for _ in range(68)])
    w, b = rng.random((68, 2, 24), dtype=np.float32), rng.random(136, dtype=np.float32)
    whole = local_moves(w, b, h, neighbours, chunk=len(h))
    np.testing.assert_array_equal(local_moves(w, b, h, neighbours, chunk=3), whole)
    expected = np.einsum("lck,nlk->nlc", w, h[:, neighbours].reshape(10, 68, 24)) + b.reshape(68, 2)
    np.testing.assert_allclose(whole, expected, rtol=1e-6)


def test_fine_stages_must_read_the_local_stages_layout():
    from face_alignment_ros.core.gradient_histograms import HistogramLayout

    model = _with_local_stages(_model())[0]
    other = HistogramLayout(crop_size=model.crop_size, cell=8, grid=2, bins=4)
    with pytest.raises(ValueError, match="local stages' layout"):
        model.with_fine_stages(np.zeros((1, 136, 68 * other.dim), np.float32), np.zeros((1, 136)), other, 4)
    # new local stages drop the global ones learned on what the old ones left
    assert _with_local_stages(_with_fine_stages(model)[0])[0].fine_iterations == 0


def test_bad_local_stage_files_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    model = _with_local_stages(_model())[0]
    model.save(path)
    table = model.local_neighbours.tolist()
    _assert_refused(path, "'local_iterations' says 2 but 'W_P' holds 1", local_iterations=2)
    _rewrite(path, local_iterations=1)
    _assert_refused(path, "'local_neighbours' must hold landmark indices",
                    local_neighbours=[[i, i + 1, 68] for i in range(68)])
    _assert_refused(path, "each row starting with its own landmark", local_neighbours=[[0, 1, 2]] * 68)
    _assert_refused(path, "rows of equal length", local_neighbours=[[i] for i in range(67)] + [[67, 0]])
    _assert_refused(path, "'local_neighbours' is NoneType", local_neighbours=None)
    _rewrite(path, local_neighbours=table)
    _assert_refused(path, "'W_P' has shape", local_neighbours=[row[:2] for row in table])
    _rewrite(path, local_neighbours=table)
    _assert_refused(path, "'W_P' holds NaN", W_P=np.full((1, 68, 2, 48), np.nan, np.float32))
    _rewrite(path, W_P=np.zeros((1, 68, 2, 48), np.float16))
    _assert_refused(path, "'fine_layout' has entries", fine_layout={"cell": 4})


def test_first_keeps_local_stages_after_the_dff_ones_and_global_ones_after_them():
    model = _with_fine_stages(_with_local_stages(_with_stages(_model(k=3)), n=2)[0])[0]
    assert (model.first(3).local_iterations, model.first(3).fine_iterations) == (2, 2)
    assert (model.first(3, 2, 0, 1).local_iterations, model.first(3, 2, 0, 1).fine_iterations) == (1, 0)
    assert model.first(3, 1).local_iterations == 0  # a DFF stage cut: the local stages go too
    with pytest.raises(ValueError, match="fine_iterations"):
        model.first(3, 2, 1, 1)  # the global stages were learned after both local ones
    with pytest.raises(ValueError, match="local_iterations"):
        model.first(2, 0, 0, 1)


def test_annotation_offset_round_trips_and_goes_with_any_cut(tmp_path):
    model = _with_fine_stages(_with_local_stages(_with_stages(_model()))[0])[0]
    offset = np.linspace(-1, 1, 136).astype(np.float32)
    with_offset = model.with_annotation_offset(offset, provenance={"annotation_offset": {"test": True}})
    path = tmp_path / "m.npz"
    with_offset.save(path)
    loaded = DescentModel.load(path)
    np.testing.assert_allclose(loaded.annotation_offset, offset.reshape(68, 2))
    assert model.annotation_offset is None and DescentModel.load(_saved(model, tmp_path)).annotation_offset is None
    assert loaded.first(2) is loaded  # nothing cut: kept
    assert loaded.first(2, 2, 1).annotation_offset is None  # measured after both global stages
    assert loaded.first(2, 1).annotation_offset is None
    assert _with_fine_stages(loaded)[0].annotation_offset is None  # new stages: measured on others


def _with_annotation_shape(model, seed=0, name="annotation_shape"):
    rng = np.random.default_rng(seed)
    reference = np.stack([np.cos(np.arange(68)), np.sin(2 * np.arange(68))], 1) * 20
    return model.with_shape_stage(name, rng.normal(scale=0.01, size=(136, 136)), rng.normal(size=136),
                                  reference - reference.mean(axis=0), provenance={name: {}})


def test_shape_stages_round_trip_and_go_with_any_change(tmp_path):
    model = _with_fine_stages(_with_stages(_model()))[0].with_annotation_offset(np.ones(136, np.float32))
    shaped = _with_annotation_shape(_with_annotation_shape(model, 3, "fitted_shape"))
    path = tmp_path / "m.npz"
    shaped.save(path)
    loaded = DescentModel.load(path)
    assert loaded.has_shape_stage("annotation_shape") and loaded.has_output_stages
    assert loaded.has_shape_stage("fitted_shape")
    for name in ("R_A", "b_A", "m_A", "R_G", "b_G", "m_G"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(shaped, name))
    x = np.random.default_rng(1).normal(scale=20, size=(68, 2)).astype(np.float32)
    for name in ("annotation_shape", "fitted_shape"):
        np.testing.assert_allclose(loaded.shape_step(name, x), shaped.shape_step(name, x), rtol=1e-5)
    assert not np.allclose(loaded.shape_step("annotation_shape", x), loaded.shape_step("fitted_shape", x))
    plain = DescentModel.load(_saved(model, tmp_path))
    assert not plain.has_shape_stage("annotation_shape") and not plain.has_shape_stage("fitted_shape")
    assert loaded.first(2) is loaded  # nothing cut: kept
    cut = loaded.first(2, 2, 0)  # learned after the global stages
    assert not cut.has_shape_stage("annotation_shape") and not cut.has_shape_stage("fitted_shape")
    assert not _with_fine_stages(loaded)[0].has_output_stages
    new_offset = loaded.with_annotation_offset(np.zeros(136, np.float32))
    assert not new_offset.has_shape_stage("annotation_shape")  # it learned on what the old offset left
    assert new_offset.has_shape_stage("fitted_shape")  # learned before any offset


def test_annotation_shape_step_turns_and_scales_with_the_face():
    """The stage reads the shape in its own frame: a face turned, scaled and moved in the crop
    gets the same move, turned and scaled with it."""
    model = _with_annotation_shape(_model())
    x = model.m_A.reshape(68, 2) + np.random.default_rng(2).normal(size=(68, 2))
    step = model.shape_step("annotation_shape", x)
    angle, scale = np.radians(25), 1.7
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = model.shape_step("annotation_shape", x @ turn.T + [40.0, -13.0])
    np.testing.assert_allclose(moved, step @ turn.T, rtol=1e-4, atol=1e-4)


def test_bad_annotation_shape_stages_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    _with_annotation_shape(_model()).save(path)
    _assert_refused(path, "'R_A' holds NaN|'R_A' must be", R_A=np.full((136, 136), np.nan, np.float32))
    _assert_refused(path, "'m_A' .* all zeros", R_A=np.zeros((136, 136), np.float32), m_A=np.zeros(136, np.float32))
    _assert_refused(path, "'annotation_shape' says 136 but 'b_A' holds 10", m_A=np.ones(136, np.float32),
                    b_A=np.zeros(10, np.float32))
    _rewrite(path, b_A=np.zeros(136, np.float32))
    _assert_refused(path, "'annotation_shape' is str", annotation_shape="yes")
    _with_annotation_shape(_model(), name="fitted_shape").save(path)
    _assert_refused(path, "'fitted_shape' says 136 but 'm_G' holds 3", m_G=np.ones(3, np.float32))
    with pytest.raises(ModelFileError, match="needs all of"):
        dataclasses.replace(_with_annotation_shape(_model()), b_A=None).validate()


def _saved(model, tmp_path):
    path = tmp_path / "plain.npz"
    model.save(path)
    return path


def test_bad_annotation_offsets_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    _model().with_annotation_offset(np.zeros(136, np.float32)).save(path)
    _assert_refused(path, "'o_A' holds NaN|'o_A' must be", o_A=np.full(136, np.nan, np.float32))
    _assert_refused(path, "'o_A' must be", o_A=np.full(136, 1e6, np.float32))
    _assert_refused(path, "'annotation_offset' says 136 but 'o_A' holds 10", o_A=np.zeros(10, np.float32))
    _rewrite(path, o_A=np.zeros(136, np.float32))
    _assert_refused(path, "'annotation_offset' is str", annotation_offset="yes")
    with pytest.raises(ModelFileError, match="'o_A' must be"):
        _model().with_annotation_offset(np.zeros(10, np.float32))
