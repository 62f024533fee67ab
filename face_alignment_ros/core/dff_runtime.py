"""The DFF network's inference runtime: ONNX Runtime on the exported inference graph, torch as
the fallback. Torch stays the training framework; inference needs neither torch nor the
``.pt`` file's contents when the ``.onnx`` graph is there.

The inference graph of a weights file ``X.pt`` is ``X.onnx`` beside it, written by
``export_onnx`` (``face-align-train export``, or ``face-align-train export --onnx-only`` for the
shipped weights). It ends at the network's head map (schema version 2); the upsampling and the
L2 normalisation are done at the sampled points only (``dff_extractor.HeadDescriptorMap``),
which saved about a quarter of the network's time. Graphs of version 1 (the full unit map) are
still read. Its metadata record the schema, the network config and the SHA-256 of the
weights it was exported from; ``OnnxDffRuntime`` refuses a graph that is unreadable, of another
schema, or exported from other weights (``ModelFileError``), and ``load_dff_runtime`` falls
back to torch, with a logged note, only where no graph exists.

Choice of runtime by measurement (``python -m face_alignment_ros.evaluation.bench_dff
--runtimes``; docs/dff_network.md): ONNX Runtime float32 is faster than torch eager at 1 and 2
threads and at batch 1 and 3, on par with OpenVINO, and int8 quantisation did not pay on this
network. CUDA stays automatic: ONNX Runtime's CUDA provider where installed, else torch on
CUDA where a GPU is present.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from face_alignment_ros.core import resources
from face_alignment_ros.core import threads as thread_policy
from face_alignment_ros.core.dff_extractor import DescriptorMap, DescriptorRunner, HeadDescriptorMap, full_maps
from face_alignment_ros.core.morphable_model import ModelFileError

ONNX_SCHEMA = "face_alignment_ros.dff_inference_graph"
# 2: the graph ends at the head map (``DFFInferenceGraph``), upsampled and normalised at the
# sampled points (``HeadDescriptorMap``); 1: the full unit map (graphs exported before; read still)
ONNX_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
ONNX_OPSET = 17
RUNTIMES = ("auto", "onnxruntime", "torch")
INPUT_NAME, OUTPUT_NAME, HEAD_OUTPUT_NAME = "crops_bgr", "descriptors", "head_map"

log = logging.getLogger(__name__)


def onnx_path_for(weights: str | Path) -> Path:
    """Where the inference graph of a weights file lives: beside it, suffix ``.onnx``."""
    return Path(weights).with_suffix(".onnx")


class OnnxDffRuntime(DescriptorRunner):
    """The exported inference graph under ONNX Runtime (CPU, or its CUDA provider)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, device: str | None = None,
                 weights_sha256: str | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"DFF inference graph {self.path} does not exist")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelFileError("device 'cuda' asked for, but this onnxruntime has no CUDA provider")
            providers.insert(0, "CUDAExecutionProvider")
        self.threads = thread_policy.policy(threads).network
        try:
            self.session = ort.InferenceSession(str(self.path), thread_policy.onnxruntime_session_options(self.threads),
                                                providers=providers)
        except Exception as exc:  # truncated, not ONNX, unsupported operator, ...
            raise ModelFileError(f"DFF inference graph {self.path} is unreadable (corrupt or truncated?): "
                                 f"{type(exc).__name__}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("schema") != ONNX_SCHEMA or meta.get("schema_version") not in map(str, READABLE_SCHEMA_VERSIONS):
            raise ModelFileError(f"{self.path}: schema {meta.get('schema')!r} version {meta.get('schema_version')!r}, "
                                 f"expected {ONNX_SCHEMA!r} version {' or '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
        self.schema_version = int(meta["schema_version"])
        self.output_name = HEAD_OUTPUT_NAME if self.schema_version >= 2 else OUTPUT_NAME
        if weights_sha256 is not None and meta.get("dff_weights_sha256") != weights_sha256:
            raise ModelFileError(
                f"{self.path} was exported from other DFF weights "
                f"(sha256 {meta.get('dff_weights_sha256', '')[:12]}..., "
                f"the weights beside it are {weights_sha256[:12]}...); re-export it with "
                "`face-align-train export --onnx-only`")
        try:
            self.config = json.loads(meta["config"])
            self.input_size = int(self.config["input_size"])
            self.descriptor_dim = int(self.config["descriptor_dim"])
            stride = int(self.config["decoder_stride"]) if self.schema_version >= 2 else 1
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: missing or malformed network config in its metadata") from exc
        inp, out = self.session.get_inputs(), self.session.get_outputs()
        n = self.input_size
        if ([i.name for i in inp] != [INPUT_NAME] or inp[0].type != "tensor(uint8)" or inp[0].shape[1:] != [n, n, 3]
                or [o.name for o in out] != [self.output_name]):
            raise ModelFileError(f"{self.path}: inputs/outputs {[(i.name, i.type, i.shape) for i in inp]} -> "
                                 f"{[o.name for o in out]} are not the DFF inference graph's")
        # one blank crop: checks the output shape (symbolic in the file) and warms the session up
        m = n // stride
        head = self.run_network(np.zeros((1, n, n, 3), np.uint8))
        if head.shape != (1, m, m, self.descriptor_dim):
            raise ModelFileError(f"{self.path}: output shape {head.shape}, expected {(1, m, m, self.descriptor_dim)}")
        if self.schema_version >= 2:  # the sampling kernel compiled (or loaded) now, not in the first frame
            HeadDescriptorMap(head[0], n).sample(np.zeros((1, 2)))
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run_network(self, crops_bgr: np.ndarray) -> np.ndarray:
        """The graph's own output: (B, M, M, D) head maps (schema 2) or full unit maps (1)."""
        crops = np.ascontiguousarray(crops_bgr, dtype=np.uint8)
        return self.session.run([self.output_name], {INPUT_NAME: crops})[0]

    def run_crops(self, crops_bgr: np.ndarray) -> np.ndarray:
        y = self.run_network(crops_bgr)
        if self.schema_version < 2:
            return y
        return full_maps(y, self.input_size)

    def descriptor_maps(self, crops_bgr) -> list[DescriptorMap | HeadDescriptorMap]:
        """As ``DescriptorRunner.descriptor_maps``; from a schema-2 graph, maps that finish the
        network (upsampling, normalisation) only at the points sampled."""
        if self.schema_version < 2 or not len(crops_bgr):
            return super().descriptor_maps(crops_bgr)
        return [HeadDescriptorMap(h, self.input_size) for h in self.run_network(np.stack(crops_bgr))]


def _gpu_present() -> bool:
    """An NVIDIA GPU without importing torch (a CPU-only machine never pays for the import)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def load_dff_runtime(weights: str | Path, device: str | None = None, threads: int | None = None,
                     runtime: str = "auto") -> DescriptorRunner:
    """The DFF runtime for ``weights``.

    ``runtime="auto"``: ONNX Runtime on ``X.onnx`` beside ``X.pt`` (its CUDA provider when
    there is one and a GPU), torch on CUDA when a GPU exists but ONNX Runtime has no CUDA
    provider, torch on the CPU (with a logged note) when no graph is there. ``"onnxruntime"``
    or ``"torch"`` forces one. ``device``: None/"auto", "cpu" or "cuda"."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    device = None if device in (None, "", "auto") else str(device)
    graph = onnx_path_for(weights)
    providers = _ort_providers()
    if runtime == "auto":
        gpu = device == "cuda" or (device is None and _gpu_present())
        if gpu and "CUDAExecutionProvider" not in providers:
            runtime = "torch"  # a GPU beats the CPU graph; torch has the CUDA path here
        elif not providers:
            log.info("onnxruntime is not installed: the DFF network runs on torch")
            runtime = "torch"
        elif not graph.is_file():
            log.info("no DFF inference graph %s: the DFF network runs on torch (export it with "
                     "`face-align-train export --onnx-only`)", graph)
            runtime = "torch"
        else:
            runtime = "onnxruntime"
            if device is None and gpu:
                device = "cuda"
    if runtime == "onnxruntime":
        if not Path(weights).is_file():
            raise ModelFileError(f"DFF weights file {weights} does not exist")
        return OnnxDffRuntime(graph, threads, device, weights_sha256=resources.file_sha256(weights))
    from face_alignment_ros.core.dff_extractor import DFFExtractor

    thread_policy.set_torch_threads(thread_policy.policy(threads).network)
    return DFFExtractor.from_file(weights, device=device)


def float16_storage(proto):
    """``proto`` with each float32 initializer whose values float16 holds exactly stored as float16
    and cast back at the start of the graph: lossless, and the runtime folds the casts on load."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for tensor in proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32 or values.size < 16:
            continue
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        name = tensor.name
        tensor.CopyFrom(numpy_helper.from_array(half, f"{name}_float16"))
        casts.append(helper.make_node("Cast", [f"{name}_float16"], [name], to=TensorProto.FLOAT))
    for node in reversed(casts):
        proto.graph.node.insert(0, node)
    return proto


def export_onnx(weights: str | Path, out: str | Path | None = None, check_crops: int = 4) -> dict:
    """Write the inference graph of ``weights`` (default ``onnx_path_for(weights)``), check that
    ONNX Runtime reproduces torch on random crops, and return {path, sha256, max_abs_diff,
    size_mb}. Needs torch and ``onnx`` (the export extra, requirements-export.txt)."""
    import torch

    try:
        import onnx
    except ImportError as exc:
        raise ImportError("exporting the DFF inference graph needs the onnx package: "
                          "pip install -r requirements-export.txt") from exc
    from face_alignment_ros.core.dff_extractor import DFFExtractor
    from face_alignment_ros.core.dff_network import DFFInferenceGraph, load_dff_weights

    weights = Path(weights)
    out = Path(out) if out is not None else onnx_path_for(weights)
    model, config = load_dff_weights(weights, device="cpu")
    # BatchNorm stays in the graph (PRESERVE skips the exporter's folding): the weights keep the
    # file's float16 values, stored as such, and ONNX Runtime folds BatchNorm and the casts when
    # it loads the graph. Half the file of a folded float32 graph, the same outputs and speed.
    graph = DFFInferenceGraph(model).eval()
    n = config.input_size
    example = torch.zeros(1, n, n, 3, dtype=torch.uint8)
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=[INPUT_NAME], output_names=[HEAD_OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, HEAD_OUTPUT_NAME: {0: "batch"}})
    proto = float16_storage(onnx.load(str(tmp)))
    sha = resources.file_sha256(weights)
    for key, value in {"schema": ONNX_SCHEMA, "schema_version": str(ONNX_SCHEMA_VERSION),
                       "dff_weights_sha256": sha, "dff_weights_file": weights.name,
                       "config": json.dumps(config.to_dict())}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = ("DFF inference graph: (B, N, N, 3) uint8 BGR crops -> (B, M, M, D) head map "
                        "(M = N / decoder_stride), before the bilinear upsampling and the L2 normalisation")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    # the graph must reproduce torch before it replaces anything
    crops = np.random.default_rng(0).integers(0, 256, size=(check_crops, n, n, 3), dtype=np.uint8)
    ref = DFFExtractor(model, config, device="cpu").run_crops(crops)
    got = OnnxDffRuntime(tmp, threads=1, device="cpu", weights_sha256=sha).run_crops(crops)
    diff = float(np.abs(got - ref).max())
    if not diff < 1e-4:
        tmp.unlink()
        raise ValueError(f"the exported graph differs from torch by {diff:.2e} (> 1e-4); nothing written")
    os.replace(tmp, out)
    return {"path": str(out), "sha256": resources.file_sha256(out), "max_abs_diff": diff,
            "size_mb": out.stat().st_size / 2**20, "dff_weights_sha256": sha}
