"""Training machinery of the fine-tune scripts, in the shape of torchvision's reference
``train.py``: ``train_one_epoch`` and ``evaluate`` each do one job; the loaders, optimizer,
schedule and generator states are small functions beside them.

Reproducibility: the shuffle is a function of (seed, epoch) (``DistributedSampler``), DataLoader
workers are re-seeded from (seed, rank, epoch) every epoch (so they are not persistent), and the
main process's generators (dropout; augmentation with ``--workers 0``) are saved per rank. A
resumed run therefore repeats the uninterrupted one exactly with the same world size (on GPUs up
to cuDNN's nondeterministic kernels).
"""

from __future__ import annotations

import argparse
import math
import random
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import data
from scripts.runner import distributed
from scripts.runner.arguments import UsageError
from scripts.runner.grda import gRDA, grda_param_groups
from scripts.runner.runlog import RunLog

#: The stream of ``data.seeding.mix_seed`` that seeds each rank's main-process generators.
RANK_STREAM = 0x7A11


def scratch_epochs(epochs: int, dense_macs: int, pruned_macs: int, max_factor: float) -> int:
    """Liu et al. (2019)'s Scratch-B budget: the dense training's FLOPs x epochs, spent on the
    smaller network, i.e. ``epochs * dense_macs / pruned_macs`` (rounded up), at most
    ``epochs * max_factor`` (they cap ImageNet at twice the epochs)."""
    factor = min(dense_macs / pruned_macs, max_factor)
    return max(epochs, math.ceil(epochs * factor - 1e-9))

def train_loader(
    dataset: Dataset, args: argparse.Namespace, world: distributed.World
) -> DataLoader:
    """This rank's shard, reshuffled per epoch; its workers are started afresh and re-seeded
    every epoch (``data.set_epoch``), so a resumed run repeats the uninterrupted one."""
    return data.make_loader(dataset, args.batch_size // world.size, shuffle=True,
                            workers=args.workers, seed=args.seed, rank=world.rank,
                            world_size=world.size, drop_last=True,
                            pin_memory=args.device.type == "cuda", persistent_workers=False)



def val_loader(dataset: Dataset, args: argparse.Namespace, world: distributed.World) -> DataLoader:
    """Every rank evaluates images rank, rank + N, ...: each image exactly once over all ranks
    (DistributedSampler would pad the shards with repeats)."""
    shard = Subset(dataset, range(world.rank, len(dataset), world.size))
    return DataLoader(shard, batch_size=args.eval_batch_size, num_workers=args.workers,
                      pin_memory=args.device.type == "cuda")

def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 and weight decay 5e-5 (Section 4.1), or gRDA, which
    thresholds conv and linear weights and has no momentum or weight decay."""
    if args.optimizer == "grda":
        return gRDA(grda_param_groups(model), lr=args.lr, c=args.grda_c, mu=args.grda_mu)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov, weight_decay=args.weight_decay)


def make_scheduler(
    schedule: str, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per iteration: cosine from the initial lr to 0 over ``total_steps``
    (MobileNetV2), or constant (ResNet34)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

def rng_state() -> dict[str, Any]:
    """This process's generator states as plain data (numpy's as a list of ints)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])

def autocast(args: argparse.Namespace):
    if args.amp is None:
        return nullcontext()
    return torch.autocast(args.device.type, dtype=getattr(torch, args.amp))


def to_device(x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    x = x.to(args.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    args: argparse.Namespace,
    epoch: int,
    epochs: int,
    log: RunLog,
) -> dict[str, float]:
    """One pass over this rank's shard; returns the mean training loss over all ranks and the
    learning rate of the epoch's first step. Every ``--log-interval`` steps rank 0 reads the
    loss once (the only host sync of the loop besides the epoch's total)."""
    model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    loss_sum = torch.zeros((), dtype=torch.float64, device=args.device)
    count = 0
    first_lr = optimizer.param_groups[0]["lr"]
    steps = len(loader)
    bar = log.bar(f"epoch {epoch + 1}/{epochs}", iterable=loader)
    for step, (x, y) in enumerate(bar):
        x, y = to_device(x, args), y.to(args.device, non_blocking=True)
        with autocast(args):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        loss_sum += loss.detach().double() * y.numel()
        count += y.numel()
        global_step = epoch * steps + step + 1
        if global_step % args.log_interval == 0 and log.is_main:
            value = loss.item()
            log.scalar("train/loss", value, global_step)
            log.scalar("train/lr", lr, global_step)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")
    total, images = distributed.all_reduce_sum([loss_sum.item(), count], args.device)
    return {"train_loss": total / images, "lr": first_lr}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, args: argparse.Namespace) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) on the validation set, summed exactly over all ranks.

    The sums stay on the device until the end: one host read per evaluation, not per batch.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=args.device)  # loss, top-1, top-5
    count = 0
    for x, y in loader:
        x, y = to_device(x, args), y.to(args.device, non_blocking=True)
        with autocast(args):
            logits = model(x)
        logits = logits.float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                             hits[:, 0].sum().float(), hits.any(dim=1).sum().float()]).double()
        count += y.numel()
    loss, top1, top5, count = distributed.all_reduce_sum([*sums.tolist(), count], args.device)
    if count == 0:
        raise UsageError("the validation set is empty")
    return {"val_loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}
