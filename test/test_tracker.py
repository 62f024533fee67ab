"""FaceTracker on real frames (the demo photo, moved, tiled, removed): no ghost faces, and a
still scene gives one answer whatever came before."""
import cv2
import numpy as np
import pytest

from face_alignment_ros.core.aligner import FaceAligner
from face_alignment_ros.core.face_crop import landmark_box
from face_alignment_ros.core.face_detector import box_iou
from face_alignment_ros.core.smoothing import OneEuroSettings
from face_alignment_ros.core.tracker import FaceTracker, landmarks_inside


@pytest.fixture(scope="module")
def aligner():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node runs it; the DFF network is slower with more on small CPUs
    yield FaceAligner.from_default()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def astronaut():
    from face_alignment_ros.common.samples import demo_image

    return demo_image()


def moved(image, dx=0.0, dy=0.0, zoom=1.0, fill=None):
    """The image shifted and zoomed about its centre, same size."""
    h, w = image.shape[:2]
    m = np.float32([[zoom, 0, dx + (1 - zoom) * w / 2], [0, zoom, dy + (1 - zoom) * h / 2]])
    if fill is None:
        return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def tiled(image, faces=2):
    """The downsized photo tiled side by side (one face per tile)."""
    tile = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    return np.concatenate([tile] * faces, axis=1)


def angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1))))


def same_face(a, b):
    return box_iou(landmark_box(a.landmarks), landmark_box(b.landmarks)) > 0.5


# --- C1: ghost faces ------------------------------------------------------------------------
def test_face_that_leaves_is_not_published(aligner, astronaut):
    face_gone = astronaut.copy()
    face_gone[60:220, 150:300] = cv2.blur(astronaut, (61, 61))[60:220, 150:300]
    for after in (np.full_like(astronaut, 128), face_gone):
        tracker = FaceTracker(aligner)
        assert len(tracker.process(astronaut)) == 1
        assert tracker.process(after) == [], "the old face must not be published once it has left"
        assert tracker.last_frame_detected and tracker.tracks == []


def test_resolution_change_restarts_tracking(aligner, astronaut):
    padded = cv2.copyMakeBorder(astronaut, 0, 0, 0, 128, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    bigger = cv2.resize(astronaut, (640, 480))
    for after in (padded, bigger):  # the face where it was, and elsewhere
        tracker = FaceTracker(aligner)
        [first] = tracker.process(astronaut)
        [face] = tracker.process(after)
        assert tracker.last_frame_detected and face.face_id != first.face_id, "a new image size starts again"
        [ref] = aligner.detect_and_align(after)
        assert box_iou(landmark_box(face.face.landmarks), landmark_box(ref.landmarks)) > 0.7
    tracker = FaceTracker(aligner)
    tracker.process(astronaut)
    assert tracker.process(np.full((480, 640, 3), 128, np.uint8)) == []


def test_face_mostly_outside_the_image_is_not_published(aligner, astronaut):
    # Confidence re-detection off, so that only the image-bounds rule can end the track.
    tracker = FaceTracker(aligner, min_confidence=0.0, redetect_every=1000)
    counts = []
    for dx in range(-150, -270, -10):  # the face walks out of the left edge
        frame = moved(astronaut, dx, fill=0)
        faces = tracker.process(frame)
        assert all(landmarks_inside(t.face, frame.shape) >= 0.5 for t in faces)
        counts.append(len(faces))
    assert counts[0] == 1 and counts[-1] == 0


# --- C2: a still scene ----------------------------------------------------------------------
HISTORIES = {"none": [], "shifted": [(12, -8, 1.0)], "moving and zoomed": [(-15, 10, 0.9), (-8, 5, 1.1)]}


@pytest.mark.parametrize("scene", ["single", "tiled"])
def test_still_scene_is_steady_and_independent_of_history(aligner, astronaut, scene):
    image = astronaut if scene == "single" else tiled(astronaut)
    single = aligner.detect_and_align(image)
    assert len(single) == (1 if scene == "single" else 2)
    for name, history in HISTORIES.items():
        tracker = FaceTracker(aligner)
        for dx, dy, zoom in history:
            tracker.process(moved(image, dx, dy, zoom))
        frames = [tracker.process(image) for _ in range(6)]
        for faces in frames[3:]:  # after the first three frames
            assert len(faces) == len(single), name
            for ref in single:  # each face equals the single-photo fit, so frames 4-10 agree
                [t] = [t for t in faces if same_face(t.face, ref)]
                motion = np.linalg.norm(t.face.landmarks - ref.landmarks, axis=1).max()
                assert motion <= 1.0 and angle_deg(t.face.rotation, ref.rotation) <= 1.0, (name, motion)
        ids = {t.face_id for t in frames[3]}
        assert all({t.face_id for t in f} == ids for f in frames[3:]), "ids must hold on a still scene"


def test_single_photo_results_are_unchanged_by_tracking_code(aligner, astronaut):
    """The first frame of a track is the single-photo fit."""
    [ref] = aligner.detect_and_align(astronaut)
    [t] = FaceTracker(aligner).process(astronaut)
    assert np.array_equal(t.face.landmarks, ref.landmarks) and np.array_equal(t.face.camera, ref.camera)


class _Counting:
    """The aligner as the tracker calls it, with the faces aligned and the detector runs counted."""

    def __init__(self, aligner):
        self.aligner, self.aligned, self.detections = aligner, 0, 0

    def align_many(self, image, requests):
        self.aligned += len(requests)
        return self.aligner.align_many(image, requests)

    def detect(self, image):
        self.detections += 1
        return self.aligner.detect(image)


def test_a_face_coming_to_rest_is_aligned_once_and_starts_from_its_detection_next(aligner, astronaut):
    """The frame in which a face comes to rest runs the detector but aligns the face once (a
    second fit there doubled that frame's cost); the next frame starts from the detection and
    gives the single-photo fit."""
    [ref] = aligner.detect_and_align(astronaut)
    counting = _Counting(aligner)
    tracker = FaceTracker(counting, redetect_every=1000)
    tracker.process(moved(astronaut, 12, -8))
    per_frame = []
    for _ in range(5):
        before = (counting.aligned, counting.detections)
        [t] = tracker.process(astronaut)
        per_frame.append((counting.aligned - before[0], counting.detections - before[1], t.face))
    assert [aligned for aligned, _, _ in per_frame] == [1] * 5
    rest = next(k for k, (_, detected, _) in enumerate(per_frame) if detected)  # came to rest here
    assert rest < 3 and not np.array_equal(per_frame[rest][2].landmarks, ref.landmarks)
    for _, _, face in per_frame[rest + 1:]:
        assert np.array_equal(face.landmarks, ref.landmarks) and np.array_equal(face.camera, ref.camera)
        assert face.score == ref.score


def test_moving_face_is_followed_with_its_id(aligner, astronaut):
    tracker = FaceTracker(aligner, redetect_every=1000)
    ids, errors = set(), []
    for k in range(6):
        frame = moved(astronaut, 5.0 * k, -3.0 * k)
        [t] = tracker.process(frame)
        [ref] = aligner.detect_and_align(frame)
        ids.add(t.face_id)
        errors.append(np.linalg.norm(t.face.landmarks - ref.landmarks, axis=1).mean())
    assert ids == {0} and max(errors) < 4.0, errors


def test_smoothing_is_off_by_default_and_steadies_a_shaking_face(aligner, astronaut):
    assert FaceTracker(aligner).smoothing is None
    shakes = [(3, -2), (-3, 2), (2, 3), (-2, -3)] * 2
    spread = {}
    for smoothing in (None, OneEuroSettings(min_cutoff=0.5, beta=0.0)):
        tracker = FaceTracker(aligner, smoothing=smoothing)
        tracker.process(astronaut, stamp_s=0.0)
        noses = [tracker.process(moved(astronaut, dx, dy), stamp_s=(k + 1) / 30)[0].face.landmarks[30]
                 for k, (dx, dy) in enumerate(shakes)]
        spread[smoothing is not None] = float(np.ptp(np.array(noses[4:]), axis=0).max())
    assert spread[True] < 0.5 * spread[False], spread


def test_pseudo_video_moves_the_ground_truth_with_the_frame():
    from face_alignment_ros.evaluation.tracking import SETTLED, pseudo_video

    image = np.zeros((200, 240, 3), np.uint8)
    truth = np.array([[100.0, 80.0], [140.0, 80.0], [120.0, 130.0]])
    for x, y in truth.astype(int):
        image[y - 1:y + 2, x - 1:x + 2] = 255
    frames = pseudo_video(image, truth, seed=0)
    for frame, points in frames:  # each dot is drawn where its ground truth says
        assert all(frame[int(round(y)), int(round(x))].max() > 60 for x, y in points)
    assert all(np.array_equal(frames[k][0], frames[k - 1][0]) for k in SETTLED)
    assert np.ptp([p.mean(axis=0) for _, p in frames], axis=0).max() > 10
