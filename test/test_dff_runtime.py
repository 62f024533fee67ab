"""The DFF inference runtime: the exported ONNX graph reproduces torch, is validated on load,
and the faces of one frame go through it as one batch."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from face_alignment_ros.core import resources
from face_alignment_ros.core.dff_extractor import DescriptorRunner, DFFExtractor
from face_alignment_ros.core.dff_network import DFFConfig, DFFNet, load_dff_weights, save_dff_weights
from face_alignment_ros.core.dff_runtime import OnnxDffRuntime, export_onnx, load_dff_runtime, onnx_path_for
from face_alignment_ros.core.morphable_model import ModelFileError

CFG = DFFConfig(input_size=32, base_width=4, depth=3)
SHIPPED = resources.shipped_models("dff").dff_weights


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random network, its weights file and its exported graph beside it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dff")
    weights = folder / "net.pt"
    save_dff_weights(weights, DFFNet(CFG))
    return weights, export_onnx(weights)


def _crops(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_graph_reproduces_torch_at_batch_1_and_3(exported):
    weights, info = exported
    assert info["path"] == str(onnx_path_for(weights)) and info["max_abs_diff"] < 1e-5
    runtime = load_dff_runtime(weights, device="cpu", threads=1)
    assert isinstance(runtime, OnnxDffRuntime)
    torch_runtime = DFFExtractor(*load_dff_weights(weights, device="cpu"), device="cpu")
    for batch in (1, 3):
        crops = _crops(batch, CFG.input_size, seed=batch)
        got, ref = runtime.run_crops(crops), torch_runtime.run_crops(crops)
        assert got.shape == (batch, 32, 32, CFG.descriptor_dim) and got.flags.c_contiguous
        assert np.abs(got - ref).max() < 1e-5
        assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-4)


def test_graph_stores_the_weights_files_float16_values(exported):
    """The weights go into the graph unfolded, as the float16 values of the weights file, and are
    stored as float16: half the file, nothing lost (the test above: torch to 1e-5)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    weights, info = exported
    proto = onnx.load(info["path"])
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= 16]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    assert "BatchNormalization" in {node.op_type for node in proto.graph.node}
    stored = {t.name: numpy_helper.to_array(t) for t in big}
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    first_conv = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 4)
    assert any(a.shape == tuple(first_conv.shape) and np.array_equal(a, first_conv.numpy()) for a in stored.values())


def test_graph_ends_at_the_head_map_and_its_samples_are_torchs(exported):
    """The exported graph (schema 2) stops before the upsampling and the normalisation; the
    runtime's descriptor maps finish them at the sampled points and sample what torch's full
    maps give."""
    weights, _ = exported
    runtime = load_dff_runtime(weights, device="cpu", threads=1)
    assert runtime.schema_version == 2
    crops = _crops(2, CFG.input_size, seed=5)
    head = runtime.run_network(crops)
    assert head.shape == (2, CFG.input_size // CFG.decoder_stride, CFG.input_size // CFG.decoder_stride,
                          CFG.descriptor_dim)
    torch_maps = DFFExtractor(*load_dff_weights(weights, device="cpu"), device="cpu").descriptor_maps(list(crops))
    points = np.random.default_rng(0).uniform(0, CFG.input_size - 1, (50, 2))
    for got, ref in zip(runtime.descriptor_maps(list(crops)), torch_maps):
        assert np.abs(got.sample(points) - ref.sample(points)).max() < 1e-5


@pytest.mark.skipif(not onnx_path_for(SHIPPED).exists(), reason="no shipped DFF inference graph")
def test_shipped_graph_is_the_shipped_weights():
    runtime = load_dff_runtime(SHIPPED, device="cpu", threads=1)  # checks the weights' sha256 too
    assert isinstance(runtime, OnnxDffRuntime)
    crops = _crops(2, runtime.input_size)
    ref = DFFExtractor.from_file(SHIPPED, device="cpu").run_crops(crops)
    assert np.abs(runtime.run_crops(crops) - ref).max() < 1e-5


def test_corrupt_graph_is_refused(exported, tmp_path):
    weights, info = exported
    bad_weights = tmp_path / "net.pt"
    bad_weights.write_bytes(weights.read_bytes())
    data = open(info["path"], "rb").read()
    onnx_path_for(bad_weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="unreadable"):
        load_dff_runtime(bad_weights, device="cpu")
    onnx_path_for(bad_weights).write_bytes(b"not an onnx file")
    with pytest.raises(ModelFileError, match="unreadable"):
        load_dff_runtime(bad_weights, device="cpu")


def test_graph_of_other_weights_is_refused(exported, tmp_path):
    weights, info = exported
    torch.manual_seed(1)
    other = tmp_path / "net.pt"
    save_dff_weights(other, DFFNet(CFG))  # same architecture, other values
    onnx_path_for(other).write_bytes(open(info["path"], "rb").read())
    with pytest.raises(ModelFileError, match="exported from other DFF weights"):
        load_dff_runtime(other, device="cpu")


def test_without_a_graph_torch_runs_with_a_note(exported, tmp_path, caplog):
    weights, _ = exported
    alone = tmp_path / "alone.pt"
    alone.write_bytes(weights.read_bytes())
    with caplog.at_level(logging.INFO, logger="face_alignment_ros.core.dff_runtime"):
        runtime = load_dff_runtime(alone, device="cpu")
    assert isinstance(runtime, DFFExtractor)
    assert "no DFF inference graph" in caplog.text
    with pytest.raises(ModelFileError, match="does not exist"):
        load_dff_runtime(alone, device="cpu", runtime="onnxruntime")


@pytest.mark.skipif(not onnx_path_for(SHIPPED).exists(), reason="no shipped DFF inference graph")
def test_inference_does_not_import_torch():
    """The ONNX path leaves torch out of the process (its import alone costs ~300 MB RSS)."""
    code = ("import sys; from face_alignment_ros import FaceAligner; "
            "from face_alignment_ros.common.samples import demo_image; "
            "a = FaceAligner.from_default(threads=1); assert a.backend.extractor.runtime == 'onnxruntime'; "
            "assert len(a.detect_and_align(demo_image())) == 1; print('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


class _CountingRunner(DescriptorRunner):
    """Wraps a runtime and records the batch size of every network call."""

    def __init__(self, runner):
        self.runner, self.batches = runner, []
        self.input_size, self.descriptor_dim = runner.input_size, runner.descriptor_dim

    def run_crops(self, crops):
        self.batches.append(len(crops))
        return self.runner.run_crops(crops)


def test_faces_of_a_frame_go_through_the_network_as_one_batch():
    from face_alignment_ros.common.samples import demo_image
    from face_alignment_ros.common.stand_in_models import stand_in_aligner
    from face_alignment_ros.core.aligner import AlignRequest
    from face_alignment_ros.core.tracker import FaceTracker

    image = demo_image()
    aligner = stand_in_aligner("dff", detector="default")
    aligner.reframe = False  # the stand-in's fits would frame these keypoint-less boxes again, as a second batch
    counter = aligner.backend.extractor = _CountingRunner(aligner.backend.extractor)
    box = np.asarray(aligner.detect(image)[0].box)
    boxes = [box, box + np.array([12.0, -8.0, 12.0, -8.0])]
    one_by_one = [aligner.align(image, b) for b in boxes]
    counter.batches.clear()
    batched = aligner.align_many(image, [AlignRequest(b) for b in boxes])
    assert counter.batches == [2]
    for a, b in zip(one_by_one, batched):
        assert np.abs(a.landmarks - b.landmarks).max() < 1e-3
    # video: two tracked faces, one network call per frame
    tracker = FaceTracker(aligner, redetect_every=100)
    tracker.process(image)
    tracker.tracks = tracker.tracks + [type(tracker.tracks[0])(99, batched[1])]
    counter.batches.clear()
    assert len(tracker.process(image)) == 2 and not tracker.last_frame_detected
    assert counter.batches == [2]


def test_export_onnx_only_writes_the_graph_and_its_card_line(exported, tmp_path):
    """`face-align-train export --onnx-only`: the graph of the weights in --assets, its sha256
    in the model card (an older line replaced, the rest of the card kept)."""
    import argparse

    from face_alignment_ros.training import export_models

    weights, _ = exported
    (tmp_path / resources.DFF_WEIGHTS_FILE).write_bytes(weights.read_bytes())
    cards = tmp_path / export_models.CARDS_DIR
    cards.mkdir()
    card = cards / "dff_weights.md"
    card.write_text("# Model card\n\n- File size: 0.01 MB.\n- Inference graph: stale line\n- Data: x\n")
    assert export_models.run(argparse.Namespace(assets=tmp_path, onnx_only=True)) == 0
    graph = onnx_path_for(tmp_path / resources.DFF_WEIGHTS_FILE)
    lines = card.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("- Inference graph")] == [
        ln for ln in lines if resources.file_sha256(graph) in ln]
    assert len([ln for ln in lines if ln.startswith("- Inference graph")]) == 1
    assert lines[-1] == "- Data: x" and "stale" not in card.read_text()
    assert isinstance(load_dff_runtime(tmp_path / resources.DFF_WEIGHTS_FILE, device="cpu"), OnnxDffRuntime)


def test_a_gpu_without_an_onnxruntime_cuda_build_runs_torch_on_cuda(exported, monkeypatch):
    """CUDA stays automatic: where a GPU is present but onnxruntime is the CPU build, the
    network goes to torch with device None (``select_device``: CUDA)."""
    from face_alignment_ros.core import dff_runtime

    weights, _ = exported
    asked = {}

    def fake_from_file(path, device=None):
        asked["device"] = device
        return "torch runtime"

    monkeypatch.setattr(dff_runtime, "_gpu_present", lambda: True)
    monkeypatch.setattr(dff_runtime, "_ort_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(DFFExtractor, "from_file", staticmethod(fake_from_file))
    assert load_dff_runtime(weights) == "torch runtime" and asked["device"] is None
    # an explicit CPU device keeps the ONNX graph
    assert isinstance(load_dff_runtime(weights, device="cpu"), OnnxDffRuntime)
