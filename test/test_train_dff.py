"""The DFF training stage on a tiny fake data set: loss, pixel sampling, resume, torchrun."""
import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np
import torch

from face_alignment_ros.training import train_dff
from face_alignment_ros.common.render_format import open_outputs

SIZE = 32


def _fake_work(tmp_path, morphable_model, n=8):
    rng = np.random.default_rng(0)
    (tmp_path / "segment").mkdir(parents=True)
    labels = rng.integers(0, 10, (3, morphable_model.n_vertices)).astype(np.int16)
    np.savez(tmp_path / "segment" / "segmentations.npz", labels=labels)
    (tmp_path / "synthesize").mkdir()
    for split in ("train", "heldout", "photo_train", "photo_heldout"):
        out = open_outputs(tmp_path / "synthesize", split, n, SIZE, "w+")
        out["images"][:] = rng.integers(0, 255, out["images"].shape)
        vid = rng.integers(0, 300, out["vertex_ids"].shape)  # views share vertices: matching is exercised
        vid[:, :4] = train_dff.BACKGROUND_ID
        out["vertex_ids"][:] = vid
        out["identity"][:] = np.arange(n) // 2
        for arr in out.values():
            arr.flush()
    return tmp_path


def _args(work, **kw):
    base = dict(work=str(work), seed=0, data=None, minutes=5.0, steps=3, batch=2, pixels=16, heads_per_step=2,
                lr=1e-3, base_width=4, validate_every=2, threads=1, init_from=None, photo_fraction=0.5)
    base.update(kw)
    return argparse.Namespace(**base)


def test_loss_prefers_the_right_class_and_ignores_unlabelled():
    heads = train_dff.AngularHeads(2, 5, 4)
    with torch.no_grad():
        heads.weight[:] = torch.eye(5, 4)[None].repeat(2, 1, 1) + 1e-3
    feats = torch.nn.functional.normalize(torch.eye(5, 4)[:4], dim=1)   # pixel i lies in patch i
    cos = heads(feats, torch.tensor([0, 1]))
    labels = torch.tensor([[0, 1, 2, 3], [0, 1, -1, 3]])
    loss, acc = train_dff.angular_softmax_loss(cos, labels)
    wrong, _ = train_dff.angular_softmax_loss(cos, torch.tensor([[1, 2, 3, 0], [1, 2, -1, 0]]))
    assert acc == 1.0 and loss < wrong


def test_pixels_are_sampled_on_the_labelled_face():
    vid = np.full((1, 8, 8), train_dff.BACKGROUND_ID, np.uint16)
    vid[0, 2:4, 2:4] = 7
    labelled = np.zeros(10, bool)
    labelled[7] = True
    pixels = train_dff.sample_pixels(vid, labelled, 20, np.random.default_rng(0))
    assert set(np.unique(vid.reshape(1, -1)[0, pixels[0]])) == {7}


def test_training_runs_checkpoints_and_resumes(tmp_path, morphable_model):
    work = _fake_work(tmp_path, morphable_model)
    assert train_dff.run(_args(work)) == 0
    stage = work / "train-dff"
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    rates = [m["val_match_rate"] for m in rows if "val_match_rate" in m]
    assert any("val_photo_patch_accuracy" in m for m in rows)
    assert rates and all(0.0 <= r <= 1.0 for r in rates), "cross-view matching must run on views sharing vertices"
    assert (stage / "dff_weights.pt").exists() and (stage / "curves.png").exists()
    assert torch.load(stage / "checkpoint.pt", weights_only=False)["step"] == 3
    assert train_dff.run(_args(work, steps=5)) == 0
    assert torch.load(stage / "checkpoint.pt", weights_only=False)["step"] == 5
    from face_alignment_ros.core.dff_network import load_dff_weights

    net, config = load_dff_weights(stage / "dff_weights.pt", device="cpu")
    assert config.input_size == SIZE
    # A new run can start from shipped weights instead of random ones.
    fresh = _fake_work(tmp_path / "fresh", morphable_model)
    assert train_dff.run(_args(fresh, steps=1, init_from=str(stage / "dff_weights.pt"))) == 0


def test_two_processes_with_torchrun(tmp_path, morphable_model):
    work = _fake_work(tmp_path, morphable_model)
    with socket.socket() as s:  # a free local port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "face_alignment_ros.training.train_dff", "--work", str(work), "--steps", "2", "--batch", "2",
           "--pixels", "16", "--heads-per-step", "2", "--base-width", "4", "--validate-every", "2", "--threads", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(work / "train-dff" / "checkpoint.pt", weights_only=False)["step"] == 2


def test_batches_mix_renders_and_photos():
    renders = {"images": np.zeros((50, 4, 4, 3), np.uint8), "vertex_ids": np.zeros((50, 4, 4), np.uint16)}
    photos = {"images": np.ones((50, 4, 4, 3), np.uint8), "vertex_ids": np.ones((50, 4, 4), np.uint16)}
    rng = np.random.default_rng(0)
    shares = [train_dff._batch(renders, photos, 16, 0.35, rng)[1][:, 0, 0, 0].mean() for _ in range(200)]
    assert abs(np.mean(shares) - 0.35) < 0.03
    vids, images = train_dff._batch(renders, None, 16, 0.35, rng)
    assert images.shape == (16, 4, 4, 3) and not images.any() and vids.shape == (16, 4, 4)
