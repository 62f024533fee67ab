"""The Deep Face Feature (DFF) network: a U-Net giving every pixel a unit 32-d descriptor.

Paper (Jiang et al., Fig. 1): a symmetric encoder/decoder with skip concatenations; the last
1x1 layer gives a 32-d feature per pixel that is L2-normalised (the angular-softmax training
of Sec. III-B compares unit features with unit class vectors).

Choices made here for the 2-core CPU budget (figures in ``docs/dff_network.md``):
- ``block="hybrid"`` (default): each level's second 3x3 conv is depthwise-separable
  (depthwise 3x3 + pointwise 1x1); the first stays a full 3x3 conv. ``"conv"`` is the plain
  two-3x3 U-Net; ``"dwsep"`` makes both separable: fastest inference, but PyTorch's CPU
  depthwise backward is slow, so it trained 1.3-2.5x slower than ``"hybrid"`` here.
- ``depth=5`` levels (bottleneck at 8x8 for a 128 input): a receptive field spanning the
  whole crop, which a descriptor that must know *where on the face* a pixel is needs.
- ``decoder_stride`` = 2: the decoder stops at half resolution and the 32-d map is upsampled
  bilinearly to full resolution before the L2 normalisation, so the output is still H x W.
  The descriptor is smooth at the pixel scale anyway (neighbouring pixels lie on the same
  surface patch); this halves the dominant full-resolution cost.
- BatchNorm for training; ``fuse_for_inference`` folds it into the convolutions.

Weights files: ``save_dff_weights`` / ``load_dff_weights`` (one ``torch.save`` dict, float16
state; on load the schema, the config's types and bounds, and every tensor's shape and dtype
are checked before the network is built).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from face_alignment_ros.core.morphable_model import ModelFileError

SCHEMA = "face_alignment_ros.dff_weights"
SCHEMA_VERSION = 1
ARCH_VERSION = 1

# Sanity bounds on a config (the shipped network: 128 px, width 16, depth 5, 32-d): a weights
# file asking for more is refused before anything is built.
CONFIG_BOUNDS = {"input_size": (8, 1024), "base_width": (1, 256), "depth": (1, 8),
                 "descriptor_dim": (1, 512), "decoder_stride": (1, 4), "max_width": (1, 1024)}

# ImageNet statistics in BGR order, on [0, 1] pixels (the net consumes OpenCV BGR directly).
_MEAN_BGR = (0.406, 0.456, 0.485)
_STD_BGR = (0.225, 0.224, 0.229)


@dataclass
class DFFConfig:
    """Everything needed to rebuild the network and feed it; stored in the weights file.

    ``mean``/``std`` apply per channel, in BGR order, to pixels scaled to [0, 1]:
    ``x = (bgr / 255 - mean) / std``.
    """

    input_size: int = 128
    base_width: int = 16
    depth: int = 5  # resolution levels; depth - 1 poolings
    descriptor_dim: int = 32
    block: str = "hybrid"  # "conv" | "hybrid" | "dwsep", see ``_block``
    decoder_stride: int = 2  # 1: decoder to full resolution; 2 or 4: bilinear upsample at the end
    max_width: int = 256  # cap on channels per level
    mean: tuple = _MEAN_BGR
    std: tuple = _STD_BGR
    channel_order: str = "bgr"
    arch_version: int = ARCH_VERSION

    def __post_init__(self):
        if self.arch_version != ARCH_VERSION:
            raise ValueError(f"DFFConfig.arch_version {self.arch_version!r} is not supported "
                             f"(this code builds version {ARCH_VERSION})")
        for name, (low, high) in CONFIG_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"DFFConfig.{name} must be an integer, got {type(value).__name__} {value!r}")
            if not low <= value <= high:
                raise ValueError(f"DFFConfig.{name} is {value}, expected {low}..{high}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, (list, tuple)) or len(values) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                    or not all(math.isfinite(v) for v in values)):
                raise ValueError(f"DFFConfig.{name} must be 3 finite numbers, got {values!r}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.channel_order != "bgr":
            raise ValueError(f"DFFConfig.channel_order must be 'bgr', got {self.channel_order!r}")
        if self.block not in ("conv", "hybrid", "dwsep"):
            raise ValueError(f"DFFConfig.block must be 'conv', 'hybrid' or 'dwsep', "
                             f"got {self.block!r}")
        if self.depth < 1:
            raise ValueError(f"DFFConfig.depth must be >= 1, got {self.depth}")
        if self.decoder_stride not in (1, 2, 4) or self.decoder_stride >= 2 ** self.depth:
            raise ValueError(f"DFFConfig.decoder_stride must be 1, 2 or 4 and < 2**depth, "
                             f"got {self.decoder_stride}")
        if self.input_size % (2 ** (self.depth - 1)):
            raise ValueError(f"DFFConfig.input_size {self.input_size} must be divisible by "
                             f"2**(depth-1) = {2 ** (self.depth - 1)}")
        if min(self.std) <= 0:
            raise ValueError(f"DFFConfig.std must be > 0, got {self.std}")

    def widths(self) -> list[int]:
        return [min(self.base_width * 2 ** i, self.max_width) for i in range(self.depth)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DFFConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"DFF config has unknown fields {sorted(unknown)}")
        return cls(**d)


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """CUDA when available (or ``prefer`` when given), else CPU."""
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _conv_bn_relu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _sep(cin: int, cout: int) -> list[nn.Sequential]:
    """Depthwise-separable 3x3: depthwise 3x3 on cin, then pointwise 1x1 cin -> cout."""
    return [_conv_bn_relu(cin, cin, groups=cin), _conv_bn_relu(cin, cout, k=1)]


def _block(cin: int, cout: int, kind: str) -> nn.Sequential:
    """Two 3x3 convolutions (BN, ReLU) of one U-Net level, in one of three flavours."""
    if kind == "conv":
        return nn.Sequential(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))
    if kind == "hybrid":  # a full 3x3, then a depthwise-separable one
        return nn.Sequential(_conv_bn_relu(cin, cout), *_sep(cout, cout))
    # dwsep: both separable, except on the 3-channel input where a full 3x3 is cheap
    first = [_conv_bn_relu(cin, cout)] if cin <= 4 else _sep(cin, cout)
    return nn.Sequential(*first, *_sep(cout, cout))


class DFFNet(nn.Module):
    """U-Net (paper Fig. 1): (N, 3, S, S) normalised image -> (N, D, S, S) unit descriptors."""

    def __init__(self, config: DFFConfig | None = None, **overrides):
        super().__init__()
        config = config or DFFConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        w = config.widths()
        self.stop_level = {1: 0, 2: 1, 4: 2}[config.decoder_stride]
        self.enc = nn.ModuleList(
            [_block(3 if i == 0 else w[i - 1], w[i], config.block) for i in range(config.depth)])
        self.up = nn.ModuleDict()
        self.dec = nn.ModuleDict()
        for i in range(config.depth - 1, self.stop_level, -1):
            self.up[str(i)] = nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2)
            self.dec[str(i - 1)] = _block(2 * w[i - 1], w[i - 1], config.block)
        self.head = nn.Conv2d(w[self.stop_level], config.descriptor_dim, 1)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """x: (N, 3, S, S) already normalised (see ``normalize_input``)."""
        size = x.shape[-2:]
        x = self.head_map(x)
        if self.stop_level:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.normalize(x, dim=1) if normalize else x

    def head_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D, S / decoder_stride, S / decoder_stride): the last layer's output, before the
        bilinear upsampling and the L2 normalisation of ``forward``."""
        skips = []
        for i, enc in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        for i in range(self.config.depth - 1, self.stop_level, -1):
            x = self.up[str(i)](x)
            x = self.dec[str(i - 1)](torch.cat([x, skips[i - 1]], 1))
        return self.head(x)

    def normalize_input(self, img: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) BGR pixels in [0, 255] (any float/uint8 dtype) -> network input."""
        return (img.float() / 255.0 - self.mean) / self.std

    def fuse_for_inference(self) -> DFFNet:
        """Copy in eval mode with every BatchNorm folded into its preceding convolution."""
        fused = copy.deepcopy(self).eval()
        for mod in fused.modules():
            if isinstance(mod, nn.Sequential) and len(mod) == 3 and isinstance(mod[1], nn.BatchNorm2d):
                conv, bn = mod[0], mod[1]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                padding=conv.padding, groups=conv.groups, bias=True)
                with torch.no_grad():
                    new.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    new.bias.copy_(bn.bias + (b - bn.running_mean) * scale)
                mod[0], mod[1] = new, nn.Identity()
        return fused


def flops(config: DFFConfig, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add, torch's FlopCounterMode convention) of one forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    model = DFFNet(config).eval()
    x = torch.zeros(batch, 3, config.input_size, config.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Weights file


def save_dff_weights(path, model: DFFNet, config: DFFConfig | None = None,
                     provenance: dict | None = None) -> None:
    """One file: schema, config, provenance and the state dict in float16 (buffers such as BN
    running statistics included; integer buffers kept as they are)."""
    config = config or model.config
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "config": config.to_dict(),
        "provenance": dict(provenance or {}),
        "state_dict": state,
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written weights file under the real name


def load_dff_weights(path, device=None) -> tuple[DFFNet, DFFConfig]:
    """Load a weights file written by ``save_dff_weights``: model in eval mode on ``device``
    (``select_device()`` when None), float32. Raises ``ModelFileError`` (a ``ValueError``)
    naming what is wrong, whatever is wrong: callers such as the ROS nodes catch that type."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"DFF weights file {path!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise ModelFileError(f"DFF weights file {path!r} is unreadable (corrupt or truncated?): "
                             f"{type(exc).__name__}: {exc}") from exc
    try:
        config, state = _checked_payload(payload, path)
        model = DFFNet(config)  # built only now that the file's tensors are known to fit it
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"DFF weights file {path!r} is malformed: {type(exc).__name__}: {exc}") from exc
    model.provenance = payload.get("provenance", {})
    return model.to(select_device(device)).eval(), config


def _checked_payload(payload, path: str) -> tuple[DFFConfig, dict]:
    """The config and state dict of a loaded file, after every field is checked."""
    if not isinstance(payload, dict):
        raise ModelFileError(f"DFF weights file {path!r}: top level is {type(payload).__name__}, "
                             "expected a dict")
    if payload.get("schema") != SCHEMA:
        raise ModelFileError(f"DFF weights file {path!r}: schema is {payload.get('schema')!r}, "
                             f"expected {SCHEMA!r}")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise ModelFileError(f"DFF weights file {path!r}: schema_version is "
                             f"{payload.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ModelFileError(f"DFF weights file {path!r}: missing or malformed field {key!r}")
    if not isinstance(payload.get("provenance", {}), dict):
        raise ModelFileError(f"DFF weights file {path!r}: field 'provenance' is "
                             f"{type(payload['provenance']).__name__}, expected a dict")
    try:
        config = DFFConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"DFF weights file {path!r}: bad config: {exc}") from exc
    # The shapes the config needs, from a network on the meta device: no memory is allocated,
    # so a small file whose config asks for a huge network costs nothing to refuse.
    with torch.device("meta"):
        expected = DFFNet(config).state_dict()
    state = payload["state_dict"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected), key=str)
    if missing or unexpected:
        raise ModelFileError(f"DFF weights file {path!r}: state dict keys do not match the config: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, ref in expected.items():
        v = state[k]
        if not isinstance(v, torch.Tensor) or v.layout != torch.strided or tuple(v.shape) != tuple(ref.shape):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ModelFileError(f"DFF weights file {path!r}: tensor {k!r} has shape {got}, "
                                 f"the config needs {tuple(ref.shape)}")
        integer = not (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool)
        if v.is_floating_point() != ref.is_floating_point() or (not ref.is_floating_point() and not integer):
            raise ModelFileError(f"DFF weights file {path!r}: tensor {k!r} has dtype {v.dtype}, "
                                 f"expected {'floating point' if ref.is_floating_point() else 'integer'}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"DFF weights file {path!r}: tensor {k!r} is not finite")
    return config, state


class DFFInferenceGraph(nn.Module):
    """The graph that inference runtimes run (``core.dff_runtime``): (B, N, N, 3) uint8 BGR
    crops -> (B, M, M, D) head map, ``DFFNet.head_map`` channels-last (M = N / decoder_stride),
    BatchNorm left in for the runtime to fold, so the exported weights are the weights file's
    float16 values exactly (``dff_runtime.float16_storage``). The input normalisation lives in the
    graph, so a crop goes straight from the warp into the network. The upsampling and the L2
    normalisation of ``DFFNet.forward`` do not: over the full map they cost as much as a third of
    the network, and the cascade reads a few hundred points, so the runtime does them at those
    points only (``dff_extractor.HeadDescriptorMap``)."""

    def __init__(self, model: DFFNet):
        super().__init__()
        self.net = copy.deepcopy(model).eval()  # the caller's model keeps its mode
        c = model.config
        # NCHW constants: normalising after the layout change is the cheaper order in ONNX Runtime
        self.register_buffer("shift", torch.tensor(c.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("scale", 1.0 / (torch.tensor(c.std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops.permute(0, 3, 1, 2).float() - self.shift) * self.scale
        return self.net.head_map(x).permute(0, 2, 3, 1)
