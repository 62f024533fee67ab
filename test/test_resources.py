"""core.resources.shipped_models: the one place the shipped model paths are built."""
import pytest

from face_alignment_ros.core import resources


def test_shipped_models_per_descriptor(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "ASSETS_DIR", tmp_path)
    dff, sift = resources.shipped_models("dff"), resources.shipped_models("sift")
    assert dff.files() == [tmp_path / "descent_dff.npz", tmp_path / "dff_weights.pt"]
    assert sift.files() == [tmp_path / "descent_sift.npz"] and sift.dff_weights is None
    assert not dff.present() and dff.missing() == dff.files()
    (tmp_path / "descent_dff.npz").write_bytes(b"x")
    assert dff.missing() == [tmp_path / "dff_weights.pt"] and not resources.trained_models_present("dff")
    (tmp_path / "dff_weights.pt").write_bytes(b"x")
    assert dff.present() and resources.trained_models_present("dff")
    assert not resources.trained_models_present("sift")


def test_unknown_descriptor_is_refused():
    with pytest.raises(ValueError, match="descriptor must be one of"):
        resources.shipped_models("orb")


def test_trained_or_stand_in_aligner(tmp_path, monkeypatch):
    from face_alignment_ros.core.aligner import ModelNotTrainedError
    from face_alignment_ros.evaluation.stand_in_models import trained_or_stand_in_aligner

    aligner, trained = trained_or_stand_in_aligner("sift", detector=None)
    assert trained and not aligner.descent.provenance.get("stand-in")  # the package ships its models
    monkeypatch.setenv("FACE_MORPHABLE_MODEL", str(resources.morphable_model_path()))
    monkeypatch.setattr(resources, "ASSETS_DIR", tmp_path)  # a checkout that has not trained
    aligner, trained = trained_or_stand_in_aligner("sift", detector=None)
    assert not trained and aligner.descent.provenance.get("stand-in")
    with pytest.raises(ModelNotTrainedError):
        trained_or_stand_in_aligner("sift", detector=None, allow_stand_in=False)


def test_trained_or_stand_in_files(tmp_path, monkeypatch):
    from face_alignment_ros.evaluation.stand_in_models import trained_or_stand_in_files

    shipped = resources.shipped_models("dff")
    assert trained_or_stand_in_files(tmp_path / "unused") == (shipped.descent, shipped.dff_weights, True)
    monkeypatch.setattr(resources, "ASSETS_DIR", tmp_path / "empty")
    descent, weights, trained = trained_or_stand_in_files(tmp_path / "models")
    assert not trained and descent.parent == weights.parent == tmp_path / "models" and descent.exists()
