"""Export: cards of unchanged files are kept; DFF cards describe the final 2D stages."""
from face_alignment_ros.training.export_models import _fine_stage_lines, _landmark_stage_lines, unchanged


def test_a_file_shipped_unchanged_keeps_its_card(tmp_path):
    src, shipped, card = tmp_path / "src.npz", tmp_path / "shipped.npz", tmp_path / "shipped.md"
    src.write_bytes(b"model")
    shipped.write_bytes(b"model")
    assert not unchanged(src, shipped, card)  # no card to keep
    card.write_text("# card")
    assert unchanged(src, shipped, card)
    shipped.write_bytes(b"older model")
    assert not unchanged(src, shipped, card)


def test_landmark_stage_lines():
    assert _landmark_stage_lines({}) == []
    after = [{"val": {"all": 6.0}}, {"val": {"all": 5.5}}]
    summary = {"landmark_stages": {"chosen": {"variant": "clean", "stages": 1},
                                   "variants": {"clean": {"lambda": [10.0], "nme_after_stage": after}}}}
    lines = _landmark_stage_lines(summary)
    assert "1 learned, variant 'clean'" in lines[0] and "lambda per stage [10.0]" in lines[1]


def test_fine_stage_lines():
    assert _fine_stage_lines({}) == []
    summary = {"fine_stages": {"chosen": 1, "layout": {"crop_size": 128, "cell": 4, "grid": 3, "bins": 8},
                               "rank": 64, "lambda": [3.0, 100.0], "validation_nme_full_rank": [5.39, 5.39],
                               "nme_after_stage": [{"val": {"all": 5.8}}, {"val": {"all": 5.4}}]}}
    (line,) = _fine_stage_lines(summary)
    assert "1 shipped" in line and "rank 64" in line and '"cell": 4' in line and "[3.0, 100.0]" in line
    summary["local_stages"] = {"chosen": 0, "neighbours": 6, "lambda": [], "nme_after_stage": [{"val": {"all": 5.8}}]}
    assert len(_fine_stage_lines(summary)) == 1  # no local stage learned: no line for them
    summary["local_stages"] = {"chosen": 1, "neighbours": 6, "lambda": [1.0, 3.0],
                               "nme_after_stage": [{"val": {"all": 5.8}}, {"val": {"all": 5.5}}]}
    local, line = _fine_stage_lines(summary)
    assert "Local fine 2D stages" in local and "5 nearest" in local and "[1.0, 3.0]" in local and "rank 64" in line
    summary["annotation_offset"] = {"mean_norm_px": 0.63, "nme_after": {"val": {"all": 4.9}}}
    assert "Annotation offset" in _fine_stage_lines(summary)[1] and "0.63 crop px" in _fine_stage_lines(summary)[1]
    assert len(_fine_stage_lines(summary)) == 3  # no symmetric-convention line for round 9's summaries
    summary["annotation_offset"]["convention_gap_px"] = 1.47
    assert "symmetric convention" in _fine_stage_lines(summary)[2] and "1.47 crop px" in _fine_stage_lines(summary)[2]
    assert len(_fine_stage_lines({**summary, "start_error_scale": 1.0})) == 4  # not widened: no line
    widened = _fine_stage_lines({**summary, "start_error_scale": 1.2})
    assert len(widened) == 5 and "widened 1.2x" in widened[1]
    summary["shape_stages"] = {
        "annotation_shape": {"lambda": 0.03, "samples": "the photos", "chosen_on": "validation photos",
                             "choice_nme": [4.82, 4.75], "nme_after": {"val": {"all": 4.75}}},
        "fitted_shape": {"lambda": 0.1, "samples": "the renders", "chosen_on": "20% of those",
                         "choice_nme": [2.5, 2.2], "nme_after": {"renders": {"all": 2.1}}}}
    shaped = _fine_stage_lines(summary)
    assert len(shaped) == 6 and "Annotation shape stage (after the offset" in shaped[3] and "lambda 0.03" in shaped[3]
    assert '"all": 4.75' in shaped[3] and "4.82 -> 4.75" in shaped[3]
    assert "Fitted shape stage (on the points the pose refit fits" in shaped[4] and "20% of those" in shaped[4]


def test_kind_counts_are_checked():
    import pytest

    from face_alignment_ros.training.export_models import _parse_iterations

    assert _parse_iterations(["sift=1"], "--landmark-stages", low=0) == {"sift": 1}
    assert _parse_iterations(["dff=0"], "--landmark-stages", low=0) == {"dff": 0}
    with pytest.raises(ValueError, match="--iterations wants KIND=N"):
        _parse_iterations(["dff=0"])
    with pytest.raises(ValueError, match="--landmark-stages"):
        _parse_iterations(["hog=1"], "--landmark-stages", low=0)
