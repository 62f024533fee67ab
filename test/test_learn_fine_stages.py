"""Learning the fine 2D stages on a toy problem: the histograms must tell where a blob is."""
import numpy as np

from face_alignment_ros.core.gradient_histograms import HistogramLayout
from face_alignment_ros.training.learn_fine_stages import learn_fine_stages


def _toy(n=360, seed=0):
    """Each fine crop (64 px over a 32 px crop) holds one blob; all 68 targets sit on it, and the
    starts miss it by up to 1.5 crop px."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(12, 20, (n, 2))  # crop px
    targets = np.repeat(centres[:, None, :], 68, axis=1).astype(np.float32)
    starts = (targets + rng.uniform(-1.5, 1.5, (n, 1, 2))).astype(np.float32)
    y, x = np.mgrid[:64, :64].astype(np.float32)
    fine = [(20 + 200 * np.exp(-((x - 2 * cx) ** 2 + (y - 2 * cy) ** 2) / (2 * 4.0 ** 2))).astype(np.uint8)
            for cx, cy in centres]
    groups = np.array(["train"] * 280 + ["val"] * 40 + ["heldout-detector"] * 40)
    data = {"targets": targets, "normalisers": np.full(n, 10.0, np.float32), "groups": groups,
            "yaw_bins": np.full(n, -1)}
    return fine, starts, data


def test_a_fine_stage_learns_where_the_blob_is():
    fine, starts, data = _toy()
    layout = HistogramLayout(crop_size=64, cell=6, grid=2, bins=4)  # 1088 features: a quick ridge
    reports = []
    out = learn_fine_stages(fine, starts, data, 32, layout, stages=2, rank=16,
                            report=lambda k, lam, nme: reports.append(k))
    before, after = out["nme"][0], out["nme"][1]
    assert after["val"]["all"] < 0.4 * before["val"]["all"]
    assert after["heldout-detector"]["all"] < 0.4 * before["heldout-detector"]["all"]
    assert len(out["nme"]) == 3 and reports == [1, 2] and len(out["val_full_rank"]) == 2
    assert np.linalg.matrix_rank(out["R"][0].astype(np.float64), tol=1e-4) <= 16  # kept as it ships


def test_a_local_stage_learns_where_the_blob_is():
    from face_alignment_ros.training.learn_fine_stages import learn_local_stages, neighbour_table

    fine, starts, data = _toy()
    layout = HistogramLayout(crop_size=64, cell=6, grid=2, bins=4)
    neighbours = neighbour_table(data["targets"][0], 3)
    out = learn_local_stages(fine, starts, data, 32, layout, stages=1, neighbours=neighbours)
    before, after = out["nme"][0], out["nme"][1]
    assert after["val"]["all"] < 0.4 * before["val"]["all"]
    assert after["heldout-detector"]["all"] < 0.4 * before["heldout-detector"]["all"]
    assert out["W"][0].shape == (68, 2, 3 * layout.dim) and out["b"][0].shape == (136,)
    assert len(out["landmarks"]) == 2 and out["lambda"][0] > 0


def test_neighbour_tables_start_with_the_landmark_itself():
    from face_alignment_ros.training.learn_fine_stages import neighbour_table

    shape = np.stack([np.arange(68.0), np.zeros(68)], axis=1)  # points on a line, 1 px apart
    table = neighbour_table(shape, 3)
    np.testing.assert_array_equal(table[:, 0], np.arange(68))
    assert set(table[10, 1:]) == {9, 11} and set(table[0, 1:]) == {1, 2}
    coincident = neighbour_table(np.zeros((68, 2)), 2)  # ties: still itself first
    np.testing.assert_array_equal(coincident[:, 0], np.arange(68))


def test_a_stage_ships_only_if_it_gains_on_validation():
    from face_alignment_ros.training.learn_fine_stages import chosen_stage_count

    assert chosen_stage_count([5.83, 5.40, 5.396]) == 1  # 0.004 is not worth a stage
    assert chosen_stage_count([5.83, 5.40, 5.35]) == 2
    assert chosen_stage_count([5.83, 5.90, 5.10]) == 0  # a later gain does not rescue a loss
    assert chosen_stage_count([5.83]) == 0


def test_the_stage_writes_a_model_with_the_chosen_stages_and_reuses_its_cascade_outputs(tmp_path, monkeypatch):
    """``run`` end to end on the toy samples: the model file carries the stage at the asked rank,
    the summary names it, and --resume skips the cascade when nothing it depends on changed."""
    from types import SimpleNamespace

    from face_alignment_ros.common.stand_in_models import stand_in_descent
    from face_alignment_ros.core.descent_model import DescentModel
    from face_alignment_ros.training import learn_fine_stages
    from face_alignment_ros.training.learn_landmark_stages import SampleSet
    from face_alignment_ros.training.stage_io import Stage

    fine, starts, data = _toy(n=200)
    layout = HistogramLayout(crop_size=64, cell=6, grid=2, bins=4)
    samples = SampleSet(fine_layout=layout)
    for i in range(len(fine)):
        samples.add(np.zeros((32, 32, 3), np.uint8), data["targets"][i], 10.0, ["train", "val", "heldout-detector"][
            0 if i < 140 else 1 if i < 170 else 2])
    samples.fine = fine
    descent = stand_in_descent("sift")
    descent.crop_size = 32
    monkeypatch.setattr(learn_fine_stages, "stage_inputs", lambda *a, **k: (descent, None, samples, [], []))
    runs = []
    monkeypatch.setattr(learn_fine_stages, "cascade_outputs", lambda *a: runs.append(1) or starts)
    args = SimpleNamespace(fine_crop=64, fine_cell=6, fine_grid=2, fine_bins=4, fine_stages=2, fine_rank=8,
                           local_stages=1, local_neighbours=2, perturbations=1, resume=True,
                           start_error_scale=1.25)
    stage = Stage("descent", tmp_path)
    summary = learn_fine_stages.run(stage, args, [], {}, "start.npz")
    model = DescentModel.load(stage.path("descent_sift.npz"))
    assert model.local_iterations == summary["local_stages"]["chosen"] == 1 and model.local_neighbours.shape == (68, 2)
    assert model.fine_iterations == summary["fine_stages"]["chosen"] and model.fine_layout == layout
    assert summary["fine_stages"]["rank"] == 8
    per_stage = summary["heldout_inter_pupil_nme_percent"]["detector"]["nme_per_iteration"]
    offsets = int(model.annotation_offset is not None)  # the toy samples count as annotated photos
    assert offsets and summary["annotation_offset"]["mean_norm_px"] >= 0
    shapes = int(model.has_shape_stage("annotation_shape"))  # only it moves the output
    assert shapes == ("annotation_shape" in summary["shape_stages"])
    assert model.has_shape_stage("fitted_shape") == ("fitted_shape" in summary["shape_stages"])
    assert len(per_stage) == 1 + model.local_iterations + model.fine_iterations + offsets + shapes
    assert per_stage[1] < per_stage[0]
    assert summary["heldout_inter_pupil_nme_percent"]["detector"]["count"] == 30
    args.local_stages = 0  # global stages alone, as round 8 shipped them
    summary = learn_fine_stages.run(stage, args, [], {}, "start.npz")
    model = DescentModel.load(stage.path("descent_sift.npz"))
    assert model.local_iterations == 0 and model.fine_iterations == summary["fine_stages"]["chosen"] >= 1
    assert model.fine_rank == 8
    assert len(runs) == 1  # the saved cascade outputs served the second run
    descent.b_X = descent.b_X + 1.0  # another cascade: they must be computed again
    learn_fine_stages.run(stage, args, [], {}, "start.npz")
    assert len(runs) == 2


def test_annotation_offset_is_the_annotated_photos_mean_error_only():
    from face_alignment_ros.training.learn_fine_stages import annotation_offset

    targets = np.zeros((6, 68, 2), np.float32)
    landmarks = np.zeros_like(targets)
    landmarks[0:2] -= 1.0  # the annotated photos: 1 px short of their targets
    landmarks[2:4] += 1.0  # their mirror images and the fitted labels: other conventions
    landmarks[4] += 5.0
    data = {"targets": targets, "groups": np.array(["train"] * 5 + ["val"]),
            "conventions": np.array(["annotated", "annotated", "mirrored", "mirrored", "fitted", "annotated"])}
    np.testing.assert_allclose(annotation_offset(landmarks, data), 1.0)
    assert annotation_offset(landmarks, {**data, "conventions": np.array(["fitted"] * 6)}) is None
    assert annotation_offset(landmarks, {k: v for k, v in data.items() if k != "conventions"}) is None


def test_the_annotation_shape_stage_learns_a_convention_that_depends_on_the_shape():
    """Photos whose annotators put the points a fixed linear function of the face's shape away
    (in the face's own frame, so turned and scaled with it): the stage learns it from the
    training photos as annotated, and validation faces land on their targets. Mirror images, of
    another convention, are not read."""
    from face_alignment_ros.core.descent_model import similarity_frames
    from face_alignment_ros.training.learn_fine_stages import learn_annotation_shape

    rng = np.random.default_rng(0)
    reference = np.stack([np.cos(np.arange(68)), np.sin(2 * np.arange(68))], 1) * 20
    n = 2000
    shapes = reference + rng.normal(scale=1.5, size=(n, 68, 2))  # faces of many shapes
    angle, scale = rng.uniform(-0.5, 0.5, n), rng.uniform(0.7, 1.4, n)
    turns = scale[:, None, None] * np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                                             np.stack([np.sin(angle), np.cos(angle)], -1)], 1)
    landmarks = np.einsum("npk,njk->npj", shapes, turns) + rng.uniform(20, 40, (n, 1, 2))
    mixing = rng.normal(scale=0.05, size=(136, 136))
    normalised, frames = similarity_frames(landmarks, reference - reference.mean(axis=0))
    frame_moves = (normalised - reference + reference.mean(axis=0)).reshape(n, -1) @ mixing.T + 0.5
    moves = np.einsum("npk,njk->npj", frame_moves.reshape(n, 68, 2), np.linalg.inv(frames))
    groups = np.array(["train"] * 1900 + ["val"] * 100)
    conventions = np.array(["annotated"] * 1500 + ["mirrored"] * 400 + ["annotated"] * 100)
    offset = np.full((68, 2), 0.2, np.float32)  # learned before, in crop px: the stage adds to it
    targets = (landmarks + offset + moves).astype(np.float32)
    targets[1500:1900] = landmarks[1500:1900] - 3.0  # another convention: must not be learned
    data = {"targets": targets, "groups": groups, "conventions": conventions,
            "normalisers": np.full(n, 10.0, np.float32)}
    learned = learn_annotation_shape(landmarks.astype(np.float32), offset, data)
    val = slice(1900, None)
    before = np.abs(landmarks[val] + offset - targets[val]).mean()
    assert np.abs(learned["landmarks"][val] - targets[val]).mean() < 0.02 * before
    np.testing.assert_allclose(learned["reference"].mean(axis=0), 0.0, atol=1e-4)
    assert learn_annotation_shape(landmarks, None, {**data, "conventions": np.array(["fitted"] * n)}) is None


def test_the_fitted_shape_stage_learns_on_fitted_labels_and_chooses_lambda_on_some_left_out():
    from face_alignment_ros.training.learn_fine_stages import FITTED_CHOICE_SHARE, learn_fitted_shape

    rng = np.random.default_rng(1)
    reference = np.stack([np.cos(np.arange(68)), np.sin(2 * np.arange(68))], 1) * 20
    n = 1000
    landmarks = (reference + rng.normal(scale=1.5, size=(n, 68, 2)) + 30).astype(np.float32)
    targets = landmarks + 0.3 * (landmarks - landmarks.mean(axis=1, keepdims=True))  # a 1.3x wider convention
    conventions = np.array(["fitted"] * 600 + ["annotated"] * 400)
    targets[600:] = landmarks[600:] - 2.0  # the photos' convention: not read
    data = {"targets": targets.astype(np.float32), "groups": np.array(["train"] * n), "conventions": conventions,
            "normalisers": np.full(n, 10.0, np.float32)}
    learned = learn_fitted_shape(landmarks, data)
    before, after = learned["choice_nme"]
    assert after < 0.1 * before
    fitted = slice(0, 600)
    assert np.abs(learned["landmarks"][fitted] - targets[fitted]).mean() < 0.1 * np.abs(
        landmarks[fitted] - targets[fitted]).mean()
    assert 0 < FITTED_CHOICE_SHARE < 1
    assert learn_fitted_shape(landmarks, {**data, "conventions": np.array(["annotated"] * n)}) is None


def test_the_stages_learn_one_symmetric_convention_from_photos_and_mirror_images():
    """Annotated photos 1 px short of their targets and mirror images 1 px beyond: the conventions
    lie 2 px apart, and the learning targets meet halfway; fitted labels stay as they are."""
    from face_alignment_ros.training.learn_fine_stages import convention_shift, symmetric_targets

    targets = np.zeros((6, 68, 2), np.float32)
    landmarks = np.zeros_like(targets)
    landmarks[0:2] -= 1.0
    landmarks[2:4] += 1.0
    conventions = np.array(["annotated", "annotated", "mirrored", "mirrored", "fitted", "annotated"])
    data = {"targets": targets, "groups": np.array(["train"] * 5 + ["val"]), "conventions": conventions}
    shift = convention_shift(landmarks, data)
    np.testing.assert_allclose(shift, 2.0)
    learning = symmetric_targets(data, shift)
    np.testing.assert_allclose(learning["targets"][[0, 1, 5]], -1.0)  # validation photos too: lambdas match
    np.testing.assert_allclose(learning["targets"][[2, 3]], 1.0)
    np.testing.assert_allclose(learning["targets"][4], 0.0)
    np.testing.assert_array_equal(data["targets"], 0.0)  # the photos' own points stay for the figures
    assert learning["groups"] is data["groups"]
    for missing in ("annotated", "mirrored"):  # one convention alone: nothing to reconcile
        assert convention_shift(landmarks, {**data, "conventions": np.where(conventions == missing, "fitted",
                                                                            conventions)}) is None
    assert convention_shift(landmarks, {k: v for k, v in data.items() if k != "conventions"}) is None


def test_only_the_training_photos_starts_are_widened():
    from face_alignment_ros.training.learn_fine_stages import widen_photo_starts

    targets = np.full((5, 68, 2), 10.0, np.float32)
    starts = targets + 2.0
    data = {"targets": targets, "groups": np.array(["train", "train", "train", "val", "heldout-detector"]),
            "conventions": np.array(["annotated", "mirrored", "fitted", "annotated", "annotated"])}
    widened = widen_photo_starts(starts, data, 1.25)
    np.testing.assert_allclose(widened[:2] - targets[:2], 2.5)  # the photos and their mirror images
    np.testing.assert_array_equal(widened[2:], starts[2:])  # renders, validation and held-out rows as they are
    np.testing.assert_array_equal(widen_photo_starts(starts, data, 1.0), starts)
    assert widened is not starts and np.all(starts[:2] - targets[:2] == 2.0)  # the caller's starts untouched
