"""Stage ``train-dff`` (paper Sec. III-B): train the DFF network by classifying face pixels into
the patches of 100 random segmentations of the mean face.

Loss: for segmentation k with unit class vectors h_j and the unit feature x of a pixel whose
surface point lies in patch y, the angular softmax with m = 1 (paper's l_k)

    l_k = -log( exp(s cos theta_y) / sum_j exp(s cos theta_j) ),   cos theta_j = h_j . x

summed over the segmentations, averaged over the labelled (visible, segmented) pixels. The scale
s is our addition: with unit vectors and no scale the logits live in [-1, 1] and 500-way
softmax cannot become confident (NormFace); s = 16 fixes that without changing the optimum's
direction.

CPU budget (docs/cpu-budget.md): the heads cost 100 x 500 x 32 multiply-adds per pixel, so
each step uses ``--pixels`` sampled face pixels per image and a rotating subset of
``--heads-per-step`` segmentations, cycling through all 100.

Multi-process: launched under ``torchrun --nproc_per_node N``, it trains with
DistributedDataParallel (gloo on CPU, NCCL on GPUs); rank 0 logs, validates and checkpoints.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from face_alignment_ros.common.metrics import MATCH_THRESHOLD_MM, correct_match_rate, nearest_neighbours
from face_alignment_ros.common.render_format import (
    BACKGROUND_ID,
    SEGMENT_STAGE,
    SEGMENTATIONS_FILE,
    SYNTHESIZE_STAGE,
    load_outputs,
    split_file_name,
)
from face_alignment_ros.core.dff_network import DFFConfig, DFFNet, save_dff_weights, select_device
from face_alignment_ros.core.resources import DFF_WEIGHTS_FILE
from face_alignment_ros.training.stage_io import Stage

SCALE = 16.0
CURVES = ["loss_per_head", "train_patch_accuracy", "val_patch_accuracy", "val_photo_patch_accuracy", "val_match_rate"]


class AngularHeads(nn.Module):
    """The 100 classifiers: unit class vectors h (segmentations, patches, D)."""

    def __init__(self, segmentations: int, patches: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(segmentations, patches, dim) * 0.1)

    def forward(self, features: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """(M, D) unit features -> (H, M, patches) cosines for the chosen heads."""
        h = F.normalize(self.weight[heads], dim=2)
        return torch.einsum("hpd,md->hmp", h, features)


def angular_softmax_loss(cosines: torch.Tensor, labels: torch.Tensor, scale: float = SCALE):
    """Paper's l_k (m = 1) summed over heads, mean over labelled pixels; also patch accuracy.

    cosines (H, M, P); labels (H, M) int64, -1 where the pixel has no patch in that head.
    """
    valid = labels >= 0
    logits = scale * cosines[valid]
    target = labels[valid]
    per_pixel = F.cross_entropy(logits, target, reduction="sum") / max(int(valid.any(0).sum()), 1)
    accuracy = (logits.argmax(1) == target).float().mean() if target.numel() else torch.zeros(())
    return per_pixel, accuracy


class DFFTrainer(nn.Module):
    """Network plus heads in one module, so DDP averages both."""

    def __init__(self, config: DFFConfig, segmentations: int, patches: int):
        super().__init__()
        self.net = DFFNet(config)
        self.heads = AngularHeads(segmentations, patches, config.descriptor_dim)

    def forward(self, images, pixel_index, heads):
        """images (B, 3, N, N) uint8-range; pixel_index (B, P) flat pixel ids -> cosines."""
        feats = self.net(self.net.normalize_input(images))           # (B, D, N, N)
        b, d = feats.shape[:2]
        flat = feats.reshape(b, d, -1)
        picked = torch.gather(flat, 2, pixel_index[:, None, :].expand(b, d, pixel_index.shape[1]))
        return self.heads(picked.permute(0, 2, 1).reshape(-1, d), heads)


def sample_pixels(vertex_ids: np.ndarray, labelled: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(B, count) flat pixel indices of segmented face pixels (with replacement if few)."""
    out = np.zeros((len(vertex_ids), count), np.int64)
    for i, vid in enumerate(vertex_ids):
        flat = vid.reshape(-1)
        face = np.flatnonzero((flat != BACKGROUND_ID) & labelled[np.minimum(flat, len(labelled) - 1)])
        if len(face) == 0:
            face = np.arange(flat.size)
        out[i] = rng.choice(face, count, replace=len(face) < count)
    return out


def pixel_labels(vertex_ids: np.ndarray, pixels: np.ndarray, seg_labels: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """(H, B*P) patch labels of the sampled pixels in the chosen segmentations; -1 unlabelled."""
    vid = np.take_along_axis(vertex_ids.reshape(len(vertex_ids), -1), pixels, axis=1).reshape(-1).astype(np.int64)
    labels = np.full((len(heads), vid.size), -1, np.int64)
    face = vid != BACKGROUND_ID
    labels[:, face] = seg_labels[heads][:, vid[face]]
    return labels


@torch.no_grad()
def validate(net: DFFNet, data: dict, seg_labels: np.ndarray, heads_module: AngularHeads, mean_shape: np.ndarray,
             rng: np.random.Generator, count: int = 128, pairs: int = 48) -> dict:
    """Patch accuracy on held-out identities' renders (the first 10 heads) and the dense matching rate
    between views of one identity: a pixel of view A matches its nearest descriptor among
    view B's face pixels; correct if their surface points lie within MATCH_THRESHOLD_MM."""
    net.eval()
    n = len(data["images"])
    idx = np.sort(rng.choice(n, min(count, n), replace=False))
    labelled = (seg_labels >= 0).any(0)
    images = torch.from_numpy(np.ascontiguousarray(data["images"][idx].transpose(0, 3, 1, 2)))
    vids = np.asarray(data["vertex_ids"][idx])
    feats = torch.cat([net(net.normalize_input(images[i:i + 32])) for i in range(0, len(idx), 32)])
    pixels = sample_pixels(vids, labelled, 256, rng)
    heads = np.arange(min(10, seg_labels.shape[0]))
    d = feats.shape[1]
    picked = torch.gather(feats.reshape(len(idx), d, -1), 2,
                          torch.from_numpy(pixels)[:, None, :].expand(len(idx), d, pixels.shape[1]))
    cos = heads_module(picked.permute(0, 2, 1).reshape(-1, d), torch.from_numpy(heads))
    _, acc = angular_softmax_loss(cos, torch.from_numpy(pixel_labels(vids, pixels, seg_labels, heads)))
    # matching across views of the same identity
    ident = np.asarray(data["identity"])
    by_id: dict[int, list[int]] = {}
    for i, j in enumerate(idx):
        by_id.setdefault(int(ident[j]), []).append(i)
    candidates = [(a, b) for v in by_id.values() for a in v for b in v if a != b]
    rates = []
    for a, b in [candidates[i] for i in rng.permutation(len(candidates))[:pairs]]:
        va, vb = vids[a].reshape(-1), vids[b].reshape(-1)
        fa, fb = np.flatnonzero(va != BACKGROUND_ID), np.flatnonzero(vb != BACKGROUND_ID)
        common = fa[np.isin(va[fa], vb[fb])]
        if len(common) < 20:
            continue
        q = rng.choice(common, min(200, len(common)), replace=False)
        da = feats[a].reshape(d, -1)[:, q].T
        db = feats[b].reshape(d, -1)[:, fb].T
        nearest = fb[nearest_neighbours(da.numpy(), db.numpy())]
        rates.append(correct_match_rate(mean_shape[va[q]], mean_shape[vb[nearest]], MATCH_THRESHOLD_MM))
    net.train()
    return {"val_patch_accuracy": float(acc), "val_match_rate": float(np.mean(rates)) if rates else float("nan")}


def _photo_outputs(work, fraction: float) -> tuple[dict | None, dict | None]:
    """The photo crops of stage synthesize (training, held-out monitor), or None where absent."""
    out = []
    for split in ("photo_train", "photo_heldout"):
        try:
            out.append(load_outputs(work, split))
        except FileNotFoundError:
            out.append(None)
    return (out[0] if fraction > 0 else None), out[1]


def _batch(renders: dict, photos: dict | None, size: int, photo_fraction: float, rng: np.random.Generator):
    """(vertex_ids (B, N, N), images (B, N, N, 3)) drawn from renders and, for a binomial share, photos."""
    n_photo = int(rng.binomial(size, photo_fraction)) if photos is not None else 0
    parts = []
    for data, count in ((renders, size - n_photo), (photos, n_photo)):
        if count:
            idx = np.sort(rng.choice(len(data["images"]), count, replace=False))
            parts.append((np.asarray(data["vertex_ids"][idx]), np.asarray(data["images"][idx])))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=100.0, help="stop after this wall time (resumable)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps in total (0: no limit)")
    parser.add_argument("--batch", type=int, default=16, help="images per step per process")
    parser.add_argument("--pixels", type=int, default=192, help="sampled face pixels per image")
    parser.add_argument("--heads-per-step", type=int, default=20)
    parser.add_argument("--photo-fraction", type=float, default=0.35,
                        help="share of each batch drawn from the training photos' own crops "
                             "(synthesize/photo_train_*), the rest from renders; 0: renders only")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--base-width", type=int, default=None, help="default: DFFConfig's")
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    parser.add_argument("--init-from", default=None,
                        help="start the network from a weights file (e.g. the shipped assets/dff_weights.pt) "
                             "instead of random; ignored when resuming a checkpoint")


def _setup_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def run(args: argparse.Namespace) -> int:
    from face_alignment_ros.core.morphable_model import MorphableModel

    rank, world = _setup_distributed()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // world))
    stage = Stage("train-dff", args.work, args.seed)
    rng = np.random.default_rng(args.seed + 1000 * rank)
    torch.manual_seed(args.seed)
    seg = np.load(stage.input(SEGMENT_STAGE, SEGMENTATIONS_FILE))
    seg_labels = seg["labels"].astype(np.int64)
    n_seg, n_patch = seg_labels.shape[0], int(seg_labels.max()) + 1
    labelled = (seg_labels >= 0).any(0)
    stage.input(SYNTHESIZE_STAGE, split_file_name("train", "images"))
    train = load_outputs(args.work, "train")
    held = load_outputs(args.work, "heldout")
    photos, held_photos = _photo_outputs(args.work, args.photo_fraction)
    if rank == 0 and args.photo_fraction > 0 and photos is None:
        stage.log.warning("no synthesize/photo_train_*.npy (older synthesize output): training on renders only; "
                          "`face-align-train synthesize` makes them")
    if rank == 0:
        stage.log.info("data: %d renders, %d photo crops (%.0f%% of each batch), monitor on %d held-out renders "
                       "and %d held-out photos", len(train["images"]), len(photos["images"]) if photos else 0,
                       100 * args.photo_fraction if photos else 0, len(held["images"]),
                       len(held_photos["images"]) if held_photos else 0)
    size = train["images"].shape[1]
    config = DFFConfig(input_size=size) if args.base_width is None else \
        DFFConfig(input_size=size, base_width=args.base_width)
    device = select_device()
    model = DFFTrainer(config, n_seg, n_patch).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt_path = stage.path("checkpoint.pt")
    step, best = 0, -1.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(f"{ckpt_path} was trained with another network config; move it away to start over")
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        step, best = ckpt["step"], ckpt["best"]
        rng = np.random.default_rng(args.seed + 1000 * rank + step)
        if rank == 0:
            stage.log.info("resumed at step %d (highest monitored match rate so far %.3f)", step, best)
    elif args.init_from:
        from face_alignment_ros.core.dff_network import load_dff_weights

        net, init_config = load_dff_weights(args.init_from, device=device)
        if init_config.to_dict() != config.to_dict():
            raise ValueError(f"--init-from {args.init_from} has another network config: {init_config}")
        model.net.load_state_dict(net.state_dict())
        if rank == 0:
            stage.log.info("network initialised from %s; heads start afresh", args.init_from)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    total_steps = args.steps or int(1e9)
    # cosine schedule over the planned run; the plan is the step budget, or an estimate of it
    plan = args.steps or max(step + 1, int(args.minutes * 60 * 1.0))
    mean_shape = MorphableModel.load().mean
    n_train = len(train["images"]) + (len(photos["images"]) if photos is not None else 0)
    start, last_log = time.perf_counter(), time.perf_counter()
    window = {"loss": [], "acc": []}
    bar = tqdm(total=plan, initial=step, desc="train-dff", unit="step", disable=rank != 0, mininterval=10)
    while step < total_steps and (time.perf_counter() - start) < args.minutes * 60:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(step / plan, 1.0)))
        for group in optimiser.param_groups:
            group["lr"] = lr
        vids, images = _batch(train, photos, args.batch, args.photo_fraction, rng)
        images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        pixels = sample_pixels(vids, labelled, args.pixels, rng)
        heads = (np.arange(args.heads_per_step) + step * args.heads_per_step) % n_seg  # rotate through all
        labels = torch.from_numpy(pixel_labels(vids, pixels, seg_labels, heads)).to(device)
        cos = ddp(images, torch.from_numpy(pixels).to(device), torch.from_numpy(heads).to(device))
        loss, acc = angular_softmax_loss(cos, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        bar.update(1)
        window["loss"].append(loss.item() / args.heads_per_step)
        window["acc"].append(acc.item())
        if rank != 0:
            continue
        if step % 50 == 0:
            stage.record(step=step, lr=lr, loss_per_head=float(np.mean(window["loss"])),
                         train_patch_accuracy=float(np.mean(window["acc"])),
                         images_per_s=50 * args.batch * world / (time.perf_counter() - last_log))
            window = {"loss": [], "acc": []}
            last_log = time.perf_counter()
        if step % args.validate_every == 0 or step >= total_steps:
            metrics = _monitor(model, held, held_photos, seg_labels, mean_shape)
            stage.record(step=step, **metrics)
            stage.log.info("step %d: %s", step, metrics)
            best = max(best, metrics["val_match_rate"])
            _save_weights(stage, model.net, config, step, args, n_train, n_seg, n_patch, metrics)
            _checkpoint(stage, model, optimiser, config, step, best)
            stage.plot_curves("step", CURVES)
    bar.close()
    if rank == 0:
        metrics = _monitor(model, held, held_photos, seg_labels, mean_shape)
        stage.record(step=step, **metrics)
        best = max(best, metrics["val_match_rate"])
        _save_weights(stage, model.net, config, step, args, n_train, n_seg, n_patch, metrics)
        _checkpoint(stage, model, optimiser, config, step, best)
        stage.plot_curves("step", CURVES)
        stage.log.info("stopped at step %d after %.1f min; highest monitored match rate %.3f",
                       step, (time.perf_counter() - start) / 60, best)
    if world > 1:
        dist.destroy_process_group()
    return 0


def _monitor(model: DFFTrainer, held: dict, held_photos: dict | None, seg_labels, mean_shape) -> dict:
    """Held-out renders (patch accuracy, matching) and, when made, held-out photos (patch accuracy)."""
    metrics = validate(model.net, held, seg_labels, model.heads, mean_shape, np.random.default_rng(0))
    if held_photos is not None:
        photo = validate(model.net, held_photos, seg_labels, model.heads, mean_shape, np.random.default_rng(0),
                         pairs=0)
        metrics["val_photo_patch_accuracy"] = photo["val_patch_accuracy"]
    return metrics


def _save_weights(stage: Stage, net: DFFNet, config: DFFConfig, step: int, args, n_train: int, n_seg: int,
                  n_patch: int, metrics: dict) -> None:
    """The latest weights: the held-out renders only monitor training, they never pick a model."""
    save_dff_weights(stage.path(DFF_WEIGHTS_FILE), net, config,
                     provenance={"stage": "train-dff", "step": step, "seed": args.seed, "train_samples": n_train,
                                 "segmentations": n_seg, "patches": n_patch,
                                 "args": {k: v for k, v in vars(args).items() if k != "func"}, **metrics})


def _checkpoint(stage: Stage, model: DFFTrainer, optimiser, config: DFFConfig, step: int, best: float) -> None:
    tmp = stage.path("checkpoint.pt.tmp")
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "config": config.to_dict(),
                "step": step, "best": best}, tmp)
    os.replace(tmp, stage.path("checkpoint.pt"))


def main(argv=None) -> int:
    """Entry for torchrun: ``torchrun --nproc_per_node 2 -m face_alignment_ros.training.train_dff``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        import sys

        Stage("train-dff", args.work, args.seed).record_command(
            " ".join([f"torchrun --nproc_per_node {os.environ.get('WORLD_SIZE', '1')} "
                      "-m face_alignment_ros.training.train_dff",
                      *(sys.argv[1:] if argv is None else argv)]))
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
