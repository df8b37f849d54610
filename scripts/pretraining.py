"""Wolfe et al. (2023), Tables 1-2: how much pre-training a dense network needs before greedy
forward selection finds a good subnetwork in it.

    python scripts/pretraining.py --dataset cifar10 --data-path /data/cifar10     # Table 1
    python scripts/pretraining.py --dataset imagenet --data-path /data/imagenet \\
        --nproc-per-node 4                                                        # Table 2
    python scripts/pretraining.py --smoke

For every architecture and training-set size, one dense network is trained from scratch and
snapshotted along the way (``--save-every``); every snapshot is pruned (epsilon as in the paper),
the subnetwork is fine-tuned briefly, and its test top-1 fills the cell of that pre-training
point. The dense network's final top-1 is the last column.

Settings (Wolfe et al., Section 6.2): CIFAR-10 sub-datasets of 10K, 30K and 50K class-balanced
images, 80K pre-training iterations of batch 128 (SGD, momentum 0.9, weight decay 5e-4, cosine
from 0.1), a snapshot every 20K iterations, epsilon 0.02 (MobileNetV2) / 0.05 (ResNet34), 2500
fine-tuning iterations from learning rate 0.01. ImageNet: the full training set, 150 epochs of
batch 128 with the same optimizer, a snapshot every 50 epochs, two epsilons per network (0.02
and 0.05 for MobileNetV2, 0.05 and 0.08 for ResNet34), 80 fine-tuning epochs (cosine from 0.01).
The training script counts epochs, so iteration budgets become the nearest whole number of
epochs of ``size // batch`` steps; the table reports the iterations actually run.
"""

from __future__ import annotations

from dataclasses import dataclass

import launch
import models
from launch import Context, Step


@dataclass(frozen=True)
class Setup:
    sizes: tuple[int | None, ...]  # training-set sizes (None: the whole training set)
    full_size: int  # images in the whole training set
    batch: int
    pretrain: int  # iterations, or epochs when by_epoch
    snapshot: int  # iterations, or epochs when by_epoch
    finetune: int  # iterations, or epochs when by_epoch
    by_epoch: bool
    epsilons: dict[str, tuple[float, ...]]

    def epochs(self, amount: int, size: int | None) -> int:
        """``amount`` (iterations, or epochs) as whole epochs of this training-set size."""
        if self.by_epoch:
            return amount
        return max(1, round(amount / self.steps(size)))

    def steps(self, size: int | None) -> int:
        return (size or self.full_size) // self.batch


SETUPS = {
    "cifar10": Setup((10_000, 30_000, None), 50_000, 128, 80_000, 20_000, 2500, False,
                     {"mobilenet_v2": (0.02,), "resnet34": (0.05,)}),
    "imagenet": Setup((None,), 1_281_167, 128, 150, 50, 80, True,
                      {"mobilenet_v2": (0.02, 0.05), "resnet34": (0.05, 0.08)}),
    "synthetic": Setup((128, None), 256, 32, 16, 8, 8, False,
                       {"mobilenet_v2": (1.0,), "resnet34": (1.0,)}),
}
#: The registered networks the settings above give epsilons for.
PAPER_ARCHS = tuple(a for a in models.names() if all(a in s.epsilons for s in SETUPS.values()))
#: The paper's numbers: (arch, size or FLOP ratio) -> pruned top-1 per snapshot, dense top-1.
PAPER = {
    "cifar10": {
        ("mobilenet_v2", "10K"): ([82.32, 86.18, 86.11, 86.09], 83.13),
        ("mobilenet_v2", "30K"): ([80.19, 87.79, 88.38, 88.67], 87.62),
        ("mobilenet_v2", "50K"): ([86.71, 88.33, 91.79, 91.77], 91.44),
        ("resnet34", "10K"): ([75.29, 85.47, 85.56, 85.01], 85.23),
        ("resnet34", "30K"): ([84.06, 91.59, 92.31, 92.15], 92.14),
        ("resnet34", "50K"): ([89.79, 91.34, 94.28, 94.23], 94.18),
    },
    "imagenet": {
        ("mobilenet_v2", "60% FLOPs"): ([70.05, 71.14, 71.53], 71.70),
        ("mobilenet_v2", "40% FLOPs"): ([69.23, 70.36, 71.10], None),
        ("resnet34", "60% FLOPs"): ([71.68, 72.56, 72.65], 73.20),
        ("resnet34", "40% FLOPs"): ([69.87, 71.44, 71.33], None),
    },
}


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("cifar10", "imagenet"), default="cifar10",
                   help="cifar10: the paper's Table 1; imagenet: its Table 2")
    p.add_argument("--archs", nargs="+", choices=PAPER_ARCHS, default=list(PAPER_ARCHS),
                   help="the networks to run (default: both)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context(f"pretraining-{args.dataset}", args, dataset=args.dataset)
    setup = SETUPS[ctx.dataset]
    results = []
    for arch in args.archs:
        for size in setup.sizes:
            results.append((arch, size, run_size(ctx, setup, arch, size)))
    ctx.write_table([
        ("This repository: pruned top-1 after each amount of pre-training",
         ours(ctx, setup, results)),
        ("The paper", paper(args.dataset)),
    ])


def run_size(ctx: Context, setup: Setup, arch: str, size: int | None) -> dict:
    """Pre-train one dense network with snapshots, prune and fine-tune every snapshot."""
    name = f"{arch}-n{size or 'all'}"
    subset = ["--train-subset", str(size)] if size else []
    batch = ["--batch-size", str(setup.batch)]
    every = setup.epochs(setup.snapshot, size)
    total = every * (setup.pretrain // setup.snapshot)  # the last snapshot is the final network
    width = launch.width_args(arch, ctx.width)
    # fine-tuning: CIFAR-10 counts iterations of the pre-training batch; ImageNet uses Ye et
    # al.'s recipe (the script's default batch 512)
    ft_batch = [] if setup.by_epoch else batch
    dense = ctx.train(arch, ctx.dir / name / "dense", *width, *subset, *batch,
                      "--lr", "0.1", "--lr-schedule", "cosine", "--weight-decay", "5e-4",
                      "--momentum", "0.9", "--no-nesterov", "--epochs", str(total),
                      "--save-every", str(every))
    ctx.run([dense])
    cells: dict[tuple[int, float], Step] = {}
    for epoch in range(every, total + 1, every):
        snapshot = str(dense.out / f"epoch_{epoch:03d}.pth")
        for epsilon in setup.epsilons[arch]:
            row = ctx.dir / f"{name}-ep{epoch}-eps{epsilon:g}"
            prune = ctx.prune(arch, row / "prune", snapshot, "--epsilon", f"{epsilon:g}")
            finetune = ctx.finetune(arch, prune, row / "finetune",
                                    setup.epochs(setup.finetune, size), *subset, *ft_batch,
                                    "--lr", "0.01", "--lr-schedule", "cosine")
            ctx.run([prune, finetune])
            cells[epoch, epsilon] = finetune
    return {"dense": dense, "cells": cells, "every": every, "total": total}


def ours(ctx: Context, setup: Setup, results: list) -> str:
    unit = "ep" if setup.by_epoch else "it"
    points = [f"{k * setup.snapshot:,} {unit}" for k in range(1, setup.pretrain // setup.snapshot
                                                                + 1)]
    rows = []
    for arch, size, r in results:
        epochs = list(range(r["every"], r["total"] + 1, r["every"]))
        dense = r["dense"].summary() or {}
        steps = setup.steps(size)
        actual = ", ".join(f"{e} ep = {e * steps:,} it" for e in epochs)
        for epsilon in setup.epsilons[arch]:
            cells = []
            for epoch in epochs:
                ft = r["cells"][epoch, epsilon].summary() or {}
                frac = f" ({ft['macs'] / ft['dense_macs']:.0%} MACs)" if ft else ""
                cells.append(f"{launch.pct(ft.get('top1'))}{frac}")
            rows.append([arch, size or f"all ({setup.full_size:,})", f"{epsilon:g}", *cells,
                         launch.pct(dense.get("top1")), actual])
    return launch.markdown(["arch", "training images", "epsilon", *points, "dense top-1",
                            "snapshots taken (epochs = iterations)"], rows) + (
        "\n\nCells: top-1 of the pruned, fine-tuned network (its MACs as a share of the "
        "dense network's; the paper's epsilons gave 60% of the dense FLOPs, \"a 40% decrease\", "
        "on both datasets). Networks in the layout of the dataset (CIFAR-10: the CIFAR layouts, "
        "models/). Pruning (the candidate batches and the stop rule's subset) reads the "
        "whole training set: the prune scripts have no --train-subset.")


def paper(dataset: str) -> str:
    points = "20K / 40K / 60K / 80K it." if dataset == "cifar10" else "50 / 100 / 150 epochs"
    rows = [[arch, key, " / ".join(f"{v:.2f}" for v in pruned), launch.pct(dense)]
            for (arch, key), (pruned, dense) in PAPER[dataset].items()]
    return launch.markdown(["arch", "dataset size" if dataset == "cifar10" else "FLOP ratio",
                            f"pruned top-1 after {points}", "dense top-1"], rows)


if __name__ == "__main__":
    launch.main(build)
