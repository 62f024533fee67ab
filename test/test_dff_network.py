import dataclasses

import pytest
import torch

from face_alignment_ros.core import dff_network
from face_alignment_ros.core.dff_network import (
    SCHEMA,
    DFFConfig,
    DFFNet,
    flops,
    load_dff_weights,
    save_dff_weights,
    select_device,
)
from face_alignment_ros.core.morphable_model import ModelFileError

SMALL = DFFConfig(input_size=32, base_width=4, depth=3)


@pytest.mark.parametrize("block,stride", [("conv", 1), ("hybrid", 2), ("dwsep", 2), ("dwsep", 4)])
def test_output_full_resolution_unit_norm(block, stride):
    cfg = dataclasses.replace(SMALL, block=block, decoder_stride=stride)
    net = DFFNet(cfg).eval()
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 32, 32, 32)
    assert torch.allclose(y.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_bn_folding_matches_eval_model():
    net = DFFNet(SMALL)
    net.train()
    for _ in range(3):  # give BN non-trivial running statistics
        net(torch.randn(4, 3, 32, 32) * 2 + 1)
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    fused = net.fuse_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert torch.allclose(net(x), fused(x), atol=1e-4)


def test_config_validation_and_flops():
    with pytest.raises(ValueError):
        DFFConfig(input_size=30, depth=3)
    with pytest.raises(ValueError):
        DFFConfig(block="resnet")
    assert flops(SMALL) > 0
    assert select_device().type in ("cpu", "cuda")


def _saved(tmp_path, net=None):
    net = net or DFFNet(SMALL)
    path = tmp_path / "dff.pt"
    save_dff_weights(path, net, SMALL, {"command": "test"})
    return path, net


def test_round_trip(tmp_path):
    path, net = _saved(tmp_path)
    model, cfg = load_dff_weights(path, device="cpu")
    assert cfg == SMALL and not model.training
    assert model.provenance == {"command": "test"}
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # float16 storage: close, not equal
        assert (model(x) - net(x)).abs().max() < 2e-2


def test_truncated_file(tmp_path):
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="unreadable"):
        load_dff_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_dff_weights(tmp_path / "nope.pt")


def _rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return payload


def test_wrong_schema(tmp_path):
    path, _ = _saved(tmp_path)
    _rewrite(path, schema="something.else")
    with pytest.raises(ValueError, match="schema"):
        load_dff_weights(path)
    _rewrite(path, schema=SCHEMA, schema_version=99)
    with pytest.raises(ValueError, match="schema_version"):
        load_dff_weights(path)


def _wrong_head_shape(payload):
    payload["state_dict"]["head.weight"] = torch.zeros(32, 5, 1, 1, dtype=torch.float16)


def _wrong_depth(payload):
    payload["config"]["depth"] = 2


def _unknown_config_field(payload):
    payload["config"]["colour"] = "blue"


def _tensor(name, make):
    def corrupt(payload):
        ref = payload["state_dict"][name]
        payload["state_dict"][name] = make(ref)
    return corrupt


def _config(**changes):
    def corrupt(payload):
        payload["config"].update(changes)
    return corrupt


def _set(key, value):
    def corrupt(payload):
        payload[key] = value
    return corrupt


@pytest.mark.parametrize("corrupt, message", [
    (_wrong_head_shape, "head.weight"),
    (_wrong_depth, "keys do not match"),
    (_unknown_config_field, "bad config"),
    # every tensor must hold finite reals of the kind its buffer is
    (_tensor("head.bias", lambda t: torch.full_like(t, float("nan"))), "'head.bias' is not finite"),
    (_tensor("head.weight", lambda t: torch.ones(t.shape, dtype=torch.int16)), "'head.weight' has dtype"),
    (_tensor("head.weight", lambda t: torch.ones(t.shape, dtype=torch.bool)), "'head.weight' has dtype"),
    (_tensor("head.weight", lambda t: torch.ones(t.shape, dtype=torch.complex64)), "'head.weight' has dtype"),
    (_tensor("enc.0.0.1.num_batches_tracked", lambda t: torch.tensor(1.5)), "num_batches_tracked' has dtype"),
    (_tensor("head.bias", lambda t: [0.0] * len(t)), "'head.bias' has shape list"),
    # config values of the wrong type or absurd size, named
    (_config(base_width=1024), "base_width is 1024"),
    (_config(depth=40), "depth is 40"),
    (_config(input_size=32.0), "input_size must be an integer"),
    (_config(descriptor_dim=True), "descriptor_dim must be an integer"),
    (_config(mean=[0.4, float("nan"), 0.4]), "mean must be 3 finite numbers"),
    (_config(std=None), "std must be 3 finite numbers"),
    (_config(channel_order="rgb"), "channel_order"),
    (_set("config", None), "field 'config'"),
    (_set("provenance", ["made", "by", "hand"]), "'provenance'"),
])
def test_inconsistent_file_names_the_problem(tmp_path, corrupt, message):
    path, _ = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    corrupt(payload)
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=message):
        load_dff_weights(path)


def test_a_big_config_in_a_small_file_is_refused_before_the_network_is_built(tmp_path, monkeypatch):
    """A config within bounds but far larger than the file's tensors (here 64x the channels)
    is refused from shapes alone: no network is ever built on a real device."""
    path, _ = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["config"].update(base_width=256, max_width=1024)
    torch.save(payload, path)
    built_on = []

    class SpyNet(DFFNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built_on.append(next(self.parameters()).device.type)

    monkeypatch.setattr(dff_network, "DFFNet", SpyNet)
    with pytest.raises(ModelFileError, match="has shape"):
        load_dff_weights(path)
    assert set(built_on) <= {"meta"}
