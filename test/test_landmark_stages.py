"""Final 2D stages: they move the output landmarks only, as the descent model's regressors say."""
import numpy as np
import pytest

from face_alignment_ros.common.stand_in_models import stand_in_aligner
from face_alignment_ros.core.landmark_stages import landmark_features, refine_landmarks


@pytest.fixture(scope="module")
def astronaut():
    from face_alignment_ros.cli.align import demo_image

    return demo_image()


def _shifting_stages(descent, shifts_px):
    """2D stages that ignore the descriptors and move every landmark right by the given px."""
    n = len(shifts_px)
    r = np.zeros((n, 136, descent.landmark_feature_dim), np.float32)
    b = np.zeros((n, 136), np.float32)
    b[:, 0::2] = np.asarray(shifts_px, np.float32)[:, None]
    return descent.with_landmark_stages(r, b)


def test_features_are_the_descriptors_at_the_landmarks():
    points = np.arange(136, dtype=np.float32).reshape(68, 2)
    psi = landmark_features(lambda p, c: np.repeat(p[:, :1], 3, axis=1), points, np.zeros(6))
    np.testing.assert_array_equal(psi.reshape(68, 3)[:, 0], points[:, 0])


def test_refine_applies_each_stage_and_keeps_the_fit():
    aligner = stand_in_aligner("sift", detector=None)
    descent = _shifting_stages(aligner.descent, [2.0, 1.0])
    state = aligner.cascade.initial_state(descent.crop_size)
    refined = refine_landmarks(descent, lambda p, c: np.zeros((len(p), descent.descriptor_dim)), state)
    np.testing.assert_allclose(refined.landmarks[:, 0], state.landmarks[:, 0] + 3.0, atol=1e-4)
    np.testing.assert_array_equal(refined.camera, state.camera)
    np.testing.assert_array_equal(refined.shape_params, state.shape_params)
    assert len(refined.history) == len(state.history) + 2
    once = refine_landmarks(descent, lambda p, c: np.zeros((len(p), descent.descriptor_dim)), state, stages=1)
    np.testing.assert_allclose(once.landmarks[:, 0], state.landmarks[:, 0] + 2.0, atol=1e-4)


def test_aligner_outputs_the_refined_landmarks_and_the_cascade_fit(astronaut):
    aligner = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    before = aligner.align(astronaut, box)
    aligner.set_descent_model(_shifting_stages(aligner.descent, [4.0]))
    after = aligner.align(astronaut, box)
    crop_px = (after.crop_box[2] - after.crop_box[0]) / aligner.descent.crop_size  # image px per crop px
    np.testing.assert_allclose(after.landmarks[:, 0], before.landmarks[:, 0] + 4.0 * crop_px, atol=1e-3)
    np.testing.assert_allclose(after.landmarks[:, 1], before.landmarks[:, 1], atol=1e-3)
    np.testing.assert_array_equal(after.camera, before.camera)  # pose and shape stay the cascade's
    assert after.confidence == before.confidence
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 1
    # output="model" gives the fitted 3DMM's points: the 2D stages do not touch them
    cls, plain = type(aligner), aligner.descent.first(aligner.descent.iterations, 0)
    with_stages = cls(aligner.descent, aligner.backend, model=aligner.model, detector=None, output="model")
    without = cls(plain, aligner.backend, model=aligner.model, detector=None, output="model")
    np.testing.assert_allclose(with_stages.align(astronaut, box).landmarks, without.align(astronaut, box).landmarks,
                               atol=1e-4)


def test_flip_average_cancels_a_left_right_bias(astronaut):
    """A stage that moves every point right moves the mirrored crop's points left once mapped
    back: the flip average cancels it exactly, and the fit (pose) is the unmirrored one."""
    aligner = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    cls = type(aligner)
    plain = cls(aligner.descent, aligner.backend, model=aligner.model, detector=None, flip_average=True)
    biased = cls(_shifting_stages(aligner.descent, [4.0]), aligner.backend, model=aligner.model, detector=None,
                 flip_average=True)
    a, b = plain.align(astronaut, box), biased.align(astronaut, box)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
    np.testing.assert_array_equal(a.camera, aligner.align(astronaut, box).camera)
    unflipped = cls(_shifting_stages(aligner.descent, [4.0]), aligner.backend, model=aligner.model, detector=None)
    assert np.abs(unflipped.align(astronaut, box).landmarks[:, 0] - b.landmarks[:, 0]).mean() > 1.0


def _shifting_fine_stages(descent, shift_px, crop_size=None):
    """Fine stages that ignore the histograms and move every landmark right by ``shift_px``."""
    from face_alignment_ros.core.gradient_histograms import HistogramLayout

    layout = HistogramLayout(crop_size=crop_size or 2 * descent.crop_size)
    b = np.zeros((1, 136), np.float32)
    b[:, 0::2] = shift_px
    return descent.with_fine_stages(np.zeros((1, 136, 68 * layout.dim), np.float32), b, layout, rank=4)


def test_fine_crop_covers_the_same_box_at_its_own_size(astronaut):
    import cv2

    from face_alignment_ros.core.face_crop import crop_image
    from face_alignment_ros.core.gradient_histograms import HistogramLayout
    from face_alignment_ros.core.landmark_stages import fine_crop

    box = np.array([150, 30, 250, 130], np.float32)
    crop = crop_image(astronaut, box, 64)[0]
    fine = fine_crop(astronaut, box, HistogramLayout(crop_size=128), crop)
    assert fine.shape == (128, 128) and fine.dtype == np.uint8
    same = fine_crop(astronaut, box, HistogramLayout(crop_size=64), crop)  # the crop itself, in grey
    np.testing.assert_array_equal(same, cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))
    assert abs(float(fine.astype(float).mean()) - float(same.astype(float).mean())) < 3.0


def test_mirrored_fine_crop_matches_the_mirrored_crop():
    """Crop x -> n - 1 - x must hold in the fine crop too: a mark at crop x lands, in the mirrored
    fine crop, where the mirrored crop's x maps to."""
    from face_alignment_ros.core.landmark_stages import mirror_fine_crop

    n, side = 64, 128
    fine = np.zeros((side, side), np.uint8)
    x_crop = 20.0
    fine[:, int(x_crop * side / n)] = 255  # a line at crop x = 20 (fine x = 40)
    mirrored = mirror_fine_crop(fine, n)
    expected = (n - 1 - x_crop) * side / n  # the mirrored crop's x, in fine pixels
    assert abs(float(np.argmax(mirrored[0])) - expected) < 1e-6


def test_aligner_applies_fine_stages_after_the_dff_ones(astronaut):
    aligner = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    before = aligner.align(astronaut, box)
    aligner.set_descent_model(_shifting_fine_stages(_shifting_stages(aligner.descent, [4.0]), 2.0))
    after = aligner.align(astronaut, box)
    crop_px = (after.crop_box[2] - after.crop_box[0]) / aligner.descent.crop_size
    np.testing.assert_allclose(after.landmarks[:, 0], before.landmarks[:, 0] + 6.0 * crop_px, atol=1e-3)
    np.testing.assert_array_equal(after.camera, before.camera)
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 2


def test_aligner_applies_local_fine_stages_before_the_global_ones(astronaut):
    from face_alignment_ros.core.gradient_histograms import HistogramLayout

    aligner = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    before = aligner.align(astronaut, box)
    layout = HistogramLayout(crop_size=2 * aligner.descent.crop_size)
    b = np.zeros((1, 136), np.float32)
    b[:, 1::2] = 3.0  # the local stage moves every landmark down by 3 crop px
    neighbours = np.arange(68)[:, None]
    local = aligner.descent.with_local_stages(np.zeros((1, 68, 2, layout.dim), np.float32), b, neighbours, layout)
    aligner.set_descent_model(_shifting_fine_stages(local, 2.0))
    after = aligner.align(astronaut, box)
    crop_px = (after.crop_box[2] - after.crop_box[0]) / aligner.descent.crop_size
    np.testing.assert_allclose(after.landmarks - before.landmarks, np.tile([2.0, 3.0], (68, 1)) * crop_px, atol=1e-3)
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 2


def test_annotation_offset_fades_beyond_the_annotated_photos_yaw():
    from face_alignment_ros.core.landmark_stages import output_convention

    descent = stand_in_aligner("sift", detector=None).descent
    x = np.zeros((68, 2), np.float32)
    assert output_convention(descent, x, 0.0) is x  # no offset: the points as they are
    offset = np.tile([1.0, -2.0], 68).astype(np.float32)
    descent = descent.with_annotation_offset(offset)
    np.testing.assert_allclose(output_convention(descent, x, np.radians(-30)), offset.reshape(68, 2))
    np.testing.assert_allclose(output_convention(descent, x, np.radians(52.5)), 0.5 * offset.reshape(68, 2))
    np.testing.assert_allclose(output_convention(descent, x, np.radians(80)), 0.0)


def _offset_and_shape_stage(name: str, seed: int):
    """A stand-in descent model with an annotation offset and the shape stage ``name``, random
    landmarks near its reference shape, the offset (68, 2) and the stage's step there."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(scale=20, size=(68, 2))
    reference -= reference.mean(axis=0)
    offset = np.tile([1.0, -2.0], 68).astype(np.float32)
    descent = stand_in_aligner("sift", detector=None).descent.with_annotation_offset(offset)
    descent = descent.with_shape_stage(name, rng.normal(scale=0.02, size=(136, 136)), rng.normal(size=136), reference)
    x = (reference + 60 + rng.normal(size=(68, 2))).astype(np.float32)
    step = descent.shape_step(name, x)
    assert np.abs(step).mean() > 0.1
    return descent, x, offset.reshape(68, 2), step


def test_annotation_shape_stage_adds_to_the_offset_and_fades_with_it():
    from face_alignment_ros.core.landmark_stages import output_convention

    descent, x, offset, step = _offset_and_shape_stage("annotation_shape", 0)
    np.testing.assert_allclose(output_convention(descent, x, 0.0), x + offset + step, rtol=1e-5)
    np.testing.assert_allclose(output_convention(descent, x, np.radians(52.5)), x + 0.5 * (offset + step), rtol=1e-5)
    np.testing.assert_allclose(output_convention(descent, x, np.radians(-80)), x)


def test_the_fitted_shape_stage_takes_over_the_output_beyond_the_annotated_photos_yaw():
    from face_alignment_ros.core.landmark_stages import output_convention

    descent, x, offset, fitted = _offset_and_shape_stage("fitted_shape", 1)
    np.testing.assert_allclose(output_convention(descent, x, 0.0), x + offset, rtol=1e-5)
    np.testing.assert_allclose(output_convention(descent, x, np.radians(52.5)), x + 0.5 * (offset + fitted),
                               rtol=1e-5)
    np.testing.assert_allclose(output_convention(descent, x, np.radians(-80)), x + fitted, rtol=1e-5)


def test_aligner_adds_the_annotation_offset_after_the_pose_refit(astronaut):
    base = stand_in_aligner("sift", detector=None)
    cls, box = type(base), (150, 30, 250, 150)
    plain = cls(base.descent, base.backend, model=base.model, detector=None, refine_pose=True)
    before = plain.align(astronaut, box)
    offset = np.tile([2.0, 0.0], 68).astype(np.float32)
    plain.set_descent_model(base.descent.with_annotation_offset(offset))
    after = plain.align(astronaut, box)
    np.testing.assert_array_equal(after.camera, before.camera)  # fitted to the points before it
    np.testing.assert_allclose(after.landmarks_3d, before.landmarks_3d)
    crop_px = (after.crop_box[2] - after.crop_box[0]) / base.descent.crop_size
    from face_alignment_ros.core import camera as cam

    if abs(np.degrees(before.camera[cam.YAW])) <= 45:  # the stand-in fits the astronaut near frontal
        np.testing.assert_allclose(after.landmarks[:, 0] - before.landmarks[:, 0], 2.0 * crop_px, atol=1e-3)
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 1


def _aligned_without_and_with_shape_stage(astronaut, name: str):
    """The stand-in's face on the astronaut, aligned with the pose refit, without and with a shape
    stage ``name`` that moves every point by half a crop pixel in its frame."""
    base = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    plain = type(base)(base.descent, base.backend, model=base.model, detector=None, refine_pose=True)
    before = plain.align(astronaut, box)
    reference = np.random.default_rng(0).normal(scale=20, size=(68, 2))
    plain.set_descent_model(base.descent.with_shape_stage(name, np.zeros((136, 136)), np.full(136, 0.5),
                                                          reference - reference.mean(axis=0)))
    return before, plain.align(astronaut, box)


def test_aligner_applies_an_annotation_shape_stage_alone_after_the_pose_refit(astronaut):
    before, after = _aligned_without_and_with_shape_stage(astronaut, "annotation_shape")
    np.testing.assert_array_equal(after.camera, before.camera)  # fitted to the points before it
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 1
    assert not np.allclose(after.landmarks, before.landmarks)


def test_the_fitted_shape_stage_moves_the_points_the_pose_refit_fits_not_a_frontal_output(astronaut):
    from face_alignment_ros.core import camera as cam

    before, after = _aligned_without_and_with_shape_stage(astronaut, "fitted_shape")
    assert abs(np.degrees(after.camera[cam.YAW])) <= 45  # near frontal: the output in the annotators' convention
    np.testing.assert_array_equal(after.landmarks, before.landmarks)
    assert len(after.landmarks_per_iteration) == len(before.landmarks_per_iteration) + 1
    assert not np.allclose(after.camera, before.camera)  # the refit fitted the moved points


def test_pose_refinement_fits_the_output_landmarks(astronaut):
    """With refine_pose the camera is refitted to the landmarks after the 2D stages: moving them
    all right moves the fitted head right by as much."""
    from face_alignment_ros.core import camera as cam

    base = stand_in_aligner("sift", detector=None)
    box = (150, 30, 250, 150)
    cls = type(base)
    plain = cls(base.descent, base.backend, model=base.model, detector=None, refine_pose=True)
    shifted = cls(_shifting_fine_stages(base.descent, 3.0), base.backend, model=base.model, detector=None,
                  refine_pose=True)
    a, b = plain.align(astronaut, box), shifted.align(astronaut, box)
    crop_px = (a.crop_box[2] - a.crop_box[0]) / base.descent.crop_size
    assert abs((b.camera[cam.TX] - a.camera[cam.TX]) - 3.0 * crop_px) < 0.3 * crop_px
    assert abs(b.camera[cam.TY] - a.camera[cam.TY]) < 0.3 * crop_px
