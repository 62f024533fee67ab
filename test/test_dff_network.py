import dataclasses

import pytest
import torch

from face_alignment_ros.core.dff_network import (SCHEMA, DFFConfig, DFFNet, flops,
                                                 load_dff_weights, save_dff_weights,
                                                 select_device)

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
    with pytest.raises(ValueError, match="unreadable"):
        load_dff_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
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


@pytest.mark.parametrize("corrupt, message", [(_wrong_head_shape, "head.weight"),
                                              (_wrong_depth, "keys do not match"),
                                              (_unknown_config_field, "bad config")])
def test_inconsistent_file_names_the_problem(tmp_path, corrupt, message):
    path, _ = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    corrupt(payload)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        load_dff_weights(path)
