"""BlazeFace detector internals: anchors, letterbox, weighted NMS, the two runtimes, gating."""
import importlib.util

import numpy as np
import pytest

from face_alignment_ros.core.face_detector import (
    BLAZEFACE_MODELS,
    BlazeFaceDetector,
    blazeface_letterbox,
    box_iou,
    weighted_nms,
)

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe absent")


def _astronaut_in_vga(scale=1.0):
    """The astronaut photo's head region resized by ``scale`` and pasted in a 640x480 frame;
    returns the frame and the face's hand-checked box in it."""
    import cv2
    from skimage import data

    head = np.ascontiguousarray(data.astronaut()[40:240, 120:320, ::-1])
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[40:40 + head.shape[0], 150:150 + head.shape[1]] = head
    x0, y0, x1, y1 = 180.0 - 120, 80.0 - 40, 265.0 - 120, 175.0 - 40  # test_face_detector.ASTRONAUT_FACE
    return frame, (150 + x0 * scale, 40 + y0 * scale, 150 + x1 * scale, 40 + y1 * scale)


def test_anchor_layouts_match_the_networks_outputs():
    short, full = BLAZEFACE_MODELS["short"].anchor_centres(), BLAZEFACE_MODELS["full"].anchor_centres()
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Short range: a 16x16 grid with 2 anchors per cell, then an 8x8 grid with 6.
    np.testing.assert_allclose(short[0], short[1])
    np.testing.assert_allclose(short[:2], [[0.5 / 16, 0.5 / 16]] * 2)
    np.testing.assert_allclose(short[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(short[-1], [7.5 / 8, 7.5 / 8])
    np.testing.assert_allclose(full[1], [1.5 / 48, 0.5 / 48])  # row-major: x runs first


def test_letterbox_centres_the_frame_in_the_square():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :, 2] = 200                      # red in BGR
    image[20:28, 30:34] = (255, 255, 255)     # a white block
    square, (x0, y0, side) = blazeface_letterbox(image, 128)
    assert square.shape == (128, 128, 3) and (x0, y0, side) == (0.0, -8.0, 64.0)
    assert square[0, 64].tolist() == [0, 0, 0] and square[127, 64].tolist() == [0, 0, 0], "zero padding"
    assert square[64, 10].tolist() == [200, 0, 0], "RGB order"
    # Square pixel u is image x0 + u * side / size: the block's centre (32, 24) -> (64, 64).
    ys, xs = np.nonzero(square[:, :, 1] > 128)
    assert abs(xs.mean() - 64) < 1.5 and abs(ys.mean() - 64) < 1.5


def test_weighted_nms_averages_each_cluster_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0.5, 0, 10.5, 10]], float)
    scores = np.array([0.9, 0.6, 0.7, 0.3])
    kept, kept_scores = weighted_nms(boxes, scores, 0.3)
    np.testing.assert_allclose(kept_scores, [0.9, 0.7])
    want = (0.9 * boxes[0] + 0.6 * boxes[1] + 0.3 * boxes[3]) / 1.8
    np.testing.assert_allclose(kept, [want, boxes[2]])
    empty = weighted_nms(np.zeros((0, 4)), np.zeros(0), 0.3)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


def test_bad_runtime_is_refused():
    with pytest.raises(ValueError, match="runtime"):
        BlazeFaceDetector(runtime="tensorflow")


@needs_mediapipe
@pytest.mark.parametrize("runtime", [
    "mediapipe", pytest.param("litert", marks=pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert absent"))])
@pytest.mark.parametrize("model", ["short", "full"])
def test_detections_reproduce_mediapipes_own_graph_on_the_whole_frame(model, runtime):
    """Our letterbox (and, on LiteRT, our decoding and NMS) against MediaPipe's graph run the
    old way, letterboxing the whole frame itself: the same boxes, keypoints and scores."""
    import cv2
    from mediapipe.python.solutions import face_detection as mp_face

    graph = mp_face.FaceDetection(min_detection_confidence=0.5, model_selection=BLAZEFACE_MODELS[model].graph_selection)
    ours = BlazeFaceDetector(model=model, runtime=runtime)
    frames = [_astronaut_in_vga(s)[0] for s in (0.5, 0.7, 1.0, 2.0)]
    frames += [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    # Odd sizes, where the source positions fall on ties of the 1/32 pixel grid.
    frames += [cv2.resize(frames[2], (313, 235)), np.ascontiguousarray(frames[3][20:469, 100:549])]
    found = 0
    for frame in frames:
        h, w = frame.shape[:2]
        want = []
        for d in graph.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).detections or ():
            rb = d.location_data.relative_bounding_box
            keypoints = [(k.x * w, k.y * h) for k in d.location_data.relative_keypoints]
            want.append(((rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h),
                         d.score[0], keypoints))
        got = ours.detect(frame)
        assert len(got) == len(want)
        for d, (box, score, keypoints) in zip(got, sorted(want, key=lambda x: -x[1])):
            np.testing.assert_allclose(d.box, box, atol=1e-3)
            np.testing.assert_allclose(d.keypoints, keypoints, atol=1e-3)
            assert abs(d.score - score) < 1e-5
        found += len(got)
    graph.close()
    assert found >= 4


@needs_mediapipe
def test_full_range_runs_only_where_the_short_range_model_is_weak(monkeypatch):
    det = BlazeFaceDetector()
    calls = []
    run = det._run
    monkeypatch.setattr(det, "_run", lambda model, image: calls.append(model) or run(model, image))
    near, face = _astronaut_in_vga(1.5)  # a 300 px face: the short-range model's case
    found = det.detect(near)
    assert calls == ["short"] and box_iou(found[0].box, face) > 0.4
    calls.clear()
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert calls == ["short", "full"], "nothing found: the full-range model must look"
    for scale in (1.0, 0.5):  # 85 and 43 px faces: the first found small, the second missed by short range
        calls.clear()
        far, face = _astronaut_in_vga(scale)
        found = det.detect(far)
        assert calls == ["short", "full"] and found and box_iou(found[0].box, face) > 0.5


@needs_mediapipe
def test_detector_benchmark_times_every_step():
    from face_alignment_ros.evaluation.bench_detector import benchmark, format_markdown

    samples = benchmark(face_px=(128,), runs=2, warmup=0)
    assert ("mediapipe", "detect(), 128 px face") in samples
    if HAS_LITERT:
        assert ("litert", "short: invoke") in samples and ("litert", "full: letterbox + colour") in samples
    assert all(len(v) == 2 and min(v) > 0 for v in samples.values())
    assert "| mediapipe | detect(), 128 px face |" in format_markdown(samples)
