"""The command line shared by ``mobile2_finetune.py`` and ``resnet34_finetune.py``.

The second half of the pipeline (Ye et al., 2020, Sections 4.1-4.2). It trains

* a pruned network (``--pruned``, the slim model rebuilt from the prune script's cfg) from its
  inherited weights: the paper's fine-tuning (Table 1); or, with ``--from-scratch``, the same slim
  architecture from a new random initialization with Liu et al. (2019)'s Scratch-B budget: the
  re-training column of Table 2;
* a dense network (``--pretrained`` weights, or a random initialization): dense (pre-)training,
  whose checkpoints the prune scripts accept as ``--pretrained``. Wolfe et al. (2023) prune
  snapshots taken during pre-training (``--save-every``) on class-balanced subsets of the
  training set (``--train-subset``).

The defaults are the paper's fine-tuning recipe (Section 4.1): SGD with Nesterov momentum 0.9
and weight decay 5e-5, 150 epochs, global batch 512, 224 x 224 inputs with random-resized-crop
and horizontal flip, evaluation at resize 256 / center crop 224; MobileNetV2 decays its learning
rate from 0.01 with a cosine schedule, ResNet34 keeps a constant 2.5e-4. The cosine schedule is
stepped per iteration: the step-t learning rate of T = epochs x steps-per-epoch is
``lr * (1 + cos(pi * t / T)) / 2`` (``torch.optim.lr_scheduler.CosineAnnealingLR``).

One process, or ``torchrun --nproc_per_node=N`` (DDP; NCCL on GPUs, gloo on CPUs).
``--batch-size`` is the global batch; each rank gets batch-size / N. Only rank 0 logs and writes.

Files in ``--output-dir``:

    last.pth              checkpoint after every epoch (``--resume`` continues from it)
    best.pth              checkpoint at the best validation top-1 so far
    epoch_XXX.pth         every ``--save-every`` epochs (pre-training snapshots to prune later)
    metrics.jsonl         one JSON line per epoch
    summary.json          arch, macs, params, top1, top5 (percent), num_classes, epochs, seconds,
                          the device name, torch/CUDA versions and whether TF32 was allowed...
    tb/                   TensorBoard: train loss and learning rate, val top-1/top-5/loss

Checkpoint format (plain data, written atomically, readable with ``weights_only=True``)::

    format       pruning.checkpoint.FORMAT when cfg is set, else TRAIN_FORMAT
    arch, width, num_classes
    cfg          the pruned cfg (kept channels per space) or None for a dense model
    unit_kind    the unit kind the cfg refers to, or None
    model        the unwrapped model's state_dict
    state_dict   the same tensors (stored once), so that ``models.load_pruned`` /
                 ``pruning.checkpoint.rebuild`` read a fine-tuned pruned checkpoint like the prune
                 script's output and ``models.weights.load_pretrained`` reads a dense one
    optimizer, scheduler, scaler   their state_dicts
    epoch        epochs completed;  best_top1, best_epoch;  seconds (training time so far)
    rng          per rank: {torch, cuda, numpy, python} generator states
    args         the resolved arguments;  metrics: the last epoch's metrics line

Reproducibility: the shuffle is a function of (seed, epoch) (``DistributedSampler``), DataLoader
workers are re-seeded from (seed, rank, epoch) every epoch (so they are not persistent), and the
main process's generators (dropout; augmentation with ``--workers 0``) are saved per rank. A
resumed run therefore repeats the uninterrupted one exactly with the same world size (on GPUs up
to cuDNN's nondeterministic kernels).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

import data
import models
from data.seeding import mix_seed, seed_everything
from models.weights import PretrainedDownloadError, load_pretrained
from pruning import distributed
from pruning.checkpoint import FORMAT, load, rebuild, save_atomic
from pruning.flops import macs_and_params
from pruning.arguments import check_output_dir, finite_float
from pruning.grda import gRDA, grda_param_groups, sparsity_report
from pruning.precision import device_name, runtime_record, set_tf32, tf32_in_effect
from pruning.stop import NonFiniteLoss, require_finite, require_finite_parameters

TRAIN_FORMAT = "greedy-forward-selection/train-v1"

#: The paper's learning rate and schedule per architecture (Section 4.1).
ARCH_DEFAULTS = {
    "mobilenet_v2": {"lr": 0.01, "lr_schedule": "cosine"},
    "resnet34": {"lr": 2.5e-4, "lr_schedule": "constant"},
}
SGD_DEFAULTS = {"momentum": 0.9, "weight_decay": 5e-5, "nesterov": True}
#: gRDA's (c, mu): the example of the authors' README (Chao et al., 2020).
GRDA_DEFAULTS = {"grda_c": 0.005, "grda_mu": 0.51}

#: Arguments that define the training run: a resumed run must use the same values.
RUN_ARGS = (
    "arch", "width", "pruned", "pretrained", "from_scratch", "scratch_max_factor", "dataset",
    "data_path", "image_size", "synthetic_images", "synthetic_seed", "train_subset", "epochs",
    "batch_size", "lr", "lr_schedule", "optimizer", "momentum", "weight_decay", "nesterov",
    "grda_c", "grda_mu", "label_smoothing", "amp", "seed",
)

_RANK_STREAM = 0x7A11
_WORKER_STREAM = 0x3043


class UsageError(ValueError):
    """Bad input found before training starts; the scripts print it and exit non-zero."""


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not for options whose help already explains theirs."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def build_parser(arch: str) -> argparse.ArgumentParser:
    """Every knob of the run; defaults that depend on others are resolved by check_args."""
    p = argparse.ArgumentParser(
        description=f"Fine-tune, re-train or train {arch} (Ye et al., 2020, Sections 4.1-4.2).",
        formatter_class=_HelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--pruned", help="pruned checkpoint to train: the prune script's pruned.pth, or "
                                    "a checkpoint of this script trained from one")
    m.add_argument("--pretrained", default="",
                   help="dense weights to start from: a torchvision enum name (IMAGENET1K_V1) or "
                        "a file (default, and without --pruned: random initialization)")
    m.add_argument("--from-scratch", action="store_true",
                   help="with --pruned: re-initialize the slim architecture randomly and train "
                        "for the Scratch-B budget (Liu et al., 2019; paper Table 2)")
    m.add_argument("--scratch-max-factor", type=finite_float, default=2.0,
                   help="--from-scratch trains epochs x min(dense MACs / pruned MACs, this); "
                        "Liu et al. cap ImageNet at 2; 1 gives Scratch-E")
    if arch == "mobilenet_v2":
        m.add_argument("--width", type=finite_float, choices=(1.0, 0.75, 0.5), default=None,
                       help="width multiplier of a dense model (default 1.0; --pruned has its own)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=data.DATASETS, default="imagenet", help="dataset")
    d.add_argument("--data-path", help="dataset root (train/ and val/ folders, or CIFAR batches)")
    d.add_argument("--image-size", type=int,
                   help="input resolution (default: 224 ImageNet, 32 otherwise)")
    d.add_argument("--synthetic-images", type=int, default=2000,
                   help="training images of the synthetic dataset")
    d.add_argument("--synthetic-val-images", type=int, default=1000,
                   help="validation images of the synthetic dataset")
    d.add_argument("--synthetic-seed", type=int, default=0,
                   help="the synthetic dataset's class patterns and images (independent of "
                        "--seed, so every stage of a pipeline sees the same dataset)")
    d.add_argument("--train-subset", type=int, default=None,
                   help="train on a class-balanced random subset of K images (fixed by --seed)")
    d.add_argument("--workers", type=int, default=8, help="DataLoader workers per process")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=150,
                   help="training epochs; --from-scratch scales them (Scratch-B)")
    t.add_argument("--batch-size", type=int, default=512,
                   help="global batch size, split evenly over the torchrun processes")
    t.add_argument("--lr", type=finite_float, default=None,
                   help="initial learning rate (default: mobilenet_v2 0.01, resnet34 2.5e-4)")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"), default=None,
                   help="per-iteration cosine decay to 0, or constant (default: mobilenet_v2 "
                        "cosine, resnet34 constant)")
    t.add_argument("--optimizer", choices=("sgd", "grda"), default="sgd",
                   help="grda: gRDA (Chao et al., 2020), unstructured sparsity in summary.json")
    t.add_argument("--momentum", type=finite_float, default=None, help="SGD only (default 0.9)")
    t.add_argument("--weight-decay", type=finite_float, default=None,
                   help="SGD only (default 5e-5)")
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="SGD only (default on)")
    t.add_argument("--grda-c", type=finite_float, default=None,
                   help="gRDA threshold scale (default 0.005)")
    t.add_argument("--grda-mu", type=finite_float, default=None,
                   help="gRDA threshold growth (default 0.51)")
    t.add_argument("--label-smoothing", type=finite_float, default=0.0,
                   help="the paper uses none (the released script smoothed labels)")
    t.add_argument("--eval-batch-size", type=int, default=256, help="per process")
    s = p.add_argument_group("speed (all off by default)")
    s.add_argument("--amp", nargs="?", const="bfloat16", choices=("bfloat16", "float16"),
                   default=None, help="autocast; --amp alone means bfloat16 (float16 adds a "
                                      "GradScaler)")
    s.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    s.add_argument("--compile", action="store_true", help="torch.compile the training model")
    s.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="let float32 convolutions and matmuls run in TF32 on Ampere and newer "
                        "GPUs (faster, 10-bit mantissa); --no-tf32 keeps IEEE float32 (no "
                        "effect on a CPU or under --amp)")
    o = p.add_argument_group("run")
    o.add_argument("--output-dir", default=f"runs/{arch}_finetune",
                   help="checkpoints, metrics.jsonl, summary.json, tb/")
    o.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last.pth")
    o.add_argument("--overwrite", action="store_true",
                   help="replace the run (or evaluation) in --output-dir")
    o.add_argument("--save-every", type=int, default=0,
                   help="also keep epoch_XXX.pth every E epochs (0: off)")
    o.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the model on the validation set and write summary.json")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda; under torchrun each process uses cuda:LOCAL_RANK")
    o.add_argument("--seed", type=int, default=0,
                   help="initialization, shuffling, augmentation, --train-subset")
    o.add_argument("--log-interval", type=int, default=50,
                   help="TensorBoard train loss / lr every N steps")
    o.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: argparse.Namespace, world: distributed.World) -> None:
    """Every check that needs no data or model, so bad input fails in a second; also resolves
    the defaults that depend on the architecture and the optimizer."""
    for name in ("epochs", "batch_size", "eval_batch_size", "synthetic_images",
                 "synthetic_val_images", "log_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"{_flag(name)} must be >= 1, got {getattr(args, name)}")
    for name in ("workers", "save_every"):
        if getattr(args, name) < 0:
            raise UsageError(f"{_flag(name)} must be >= 0, got {getattr(args, name)}")
    if args.train_subset is not None and args.train_subset < 1:
        raise UsageError(f"--train-subset must be >= 1, got {args.train_subset}")
    if args.batch_size % world.size:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by world size "
                         f"{world.size}")
    if args.pruned and args.pretrained:
        raise UsageError("--pruned and --pretrained exclude each other: a pruned checkpoint "
                         "already holds its weights")
    if args.from_scratch and not args.pruned:
        raise UsageError("--from-scratch re-trains a pruned architecture: give --pruned (a dense "
                         "model without --pretrained is already trained from scratch)")
    if args.scratch_max_factor < 1:
        raise UsageError(f"--scratch-max-factor must be >= 1, got {args.scratch_max_factor}")
    if args.evaluate_only and (args.resume or args.from_scratch):
        raise UsageError("--evaluate-only takes neither --resume nor --from-scratch")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --output-dir, --overwrite replaces it: "
                         "give one")
    try:
        check_output_dir(Path(args.output_dir))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")

    for name, value in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    own, other = (SGD_DEFAULTS, GRDA_DEFAULTS) if args.optimizer == "sgd" else (GRDA_DEFAULTS,
                                                                               SGD_DEFAULTS)
    given = [_flag(k) for k in other if getattr(args, k) is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: not an option of --optimizer {args.optimizer}"
                         + (" (gRDA has no momentum or weight decay: its soft threshold is the "
                            "regularizer)" if args.optimizer == "grda" else ""))
    for name, value in own.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("momentum", "weight_decay", "grda_c", "grda_mu"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"{_flag(name)} must be >= 0, got {value}")
    if args.optimizer == "sgd" and args.nesterov and args.momentum == 0:
        raise UsageError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")
    args.device = _parse_device(args.device, world)
    set_tf32(args.tf32)


def _parse_device(text: str, world: distributed.World) -> torch.device:
    try:
        return distributed.resolve_device(text, world)
    except ValueError as error:
        raise UsageError(str(error)) from None


def saved_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain data for checkpoints and summary.json."""
    return {k: (str(v) if isinstance(v, torch.device | Path) else v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _read_checkpoint(path: str, flag: str) -> dict:
    try:
        ckpt = load(path)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except Exception as error:  # pickle/zip errors have no common base class
        raise UsageError(f"{flag} {path}: cannot read it as a checkpoint ({error})") from error
    if not isinstance(ckpt, dict):
        raise UsageError(f"{flag} {path}: not a checkpoint of this repository")
    return ckpt


def read_pruned(path: str, arch: str) -> dict:
    """The pruned checkpoint at ``path``, after checking that it is one and is for ``arch``."""
    ckpt = _read_checkpoint(path, "--pruned")
    if ckpt.get("format") == TRAIN_FORMAT:
        raise UsageError(f"--pruned {path}: holds a dense {ckpt.get('arch')}, not a pruned "
                         "network; pass it as --pretrained")
    if ckpt.get("format") != FORMAT:
        raise UsageError(f"--pruned {path}: not a pruned checkpoint of this repository "
                         f"(format {ckpt.get('format')!r})")
    if ckpt.get("arch") != arch:
        raise UsageError(f"--pruned {path}: checkpoint is for {ckpt.get('arch')}, this script "
                         f"trains {arch}")
    return ckpt


def reinitialize(model: nn.Module, arch: str) -> nn.Module:
    """A new random initialization of every layer, drawn for the layer's own (slim) shape.

    Re-training "from new random initialization" (paper Section 4.2; Liu et al.'s Scratch
    setting) means the architecture's usual initializer, not the dense model's initial weights
    cut to the slim shapes (their scale would follow the dense fan-out). This is torchvision's
    own initialization of ``mobilenet_v2`` and ``resnet34``: Kaiming-normal (fan_out) convs with
    zero bias, BatchNorm at identity with fresh running statistics; the classifier is
    N(0, 0.01) with zero bias for MobileNetV2 and PyTorch's default Linear init for ResNet.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1, counter 0
        elif isinstance(module, nn.Linear):
            if arch == "mobilenet_v2":
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
            else:
                module.reset_parameters()
    return model


def scratch_epochs(epochs: int, dense_macs: int, pruned_macs: int, max_factor: float) -> int:
    """Liu et al. (2019)'s Scratch-B budget: the dense training's FLOPs x epochs, spent on the
    smaller network, i.e. ``epochs * dense_macs / pruned_macs`` (rounded up), at most
    ``epochs * max_factor`` (they cap ImageNet at twice the epochs)."""
    factor = min(dense_macs / pruned_macs, max_factor)
    return max(epochs, math.ceil(epochs * factor - 1e-9))


def build_model(
    args: argparse.Namespace, num_classes: int, resume: dict | None, pruned: dict | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train and what it is: ``{width, cfg, unit_kind, init}``.

    From ``resume`` (a last.pth) when given, else from ``pruned`` (the checkpoint of
    ``--pruned``, re-initialized with ``--from-scratch``), else a dense model with
    ``--pretrained`` weights or a random initialization.
    """
    arch = args.arch
    if resume is not None:
        if resume["cfg"] is not None:
            model = rebuild(resume, models.build, models.prunable_units)
        else:
            model = models.build(arch, resume["width"], resume["num_classes"])
            model.load_state_dict(resume["model"])
        info = {k: resume[k] for k in ("width", "cfg", "unit_kind")}
        return model, {**info, "init": f"resumed from epoch {resume['epoch']}"}
    if pruned is not None:
        ckpt = pruned
        if args.width is not None and args.width != ckpt["width"]:
            raise UsageError(f"--width {args.width}: --pruned {args.pruned} is a width "
                             f"{ckpt['width']} network")
        if ckpt["num_classes"] != num_classes:
            raise UsageError(f"--pruned {args.pruned}: has {ckpt['num_classes']} classes, "
                             f"--dataset {args.dataset} has {num_classes}")
        model = rebuild(ckpt, models.build, models.prunable_units)
        init = f"pruned checkpoint {args.pruned}"
        if args.from_scratch:
            reinitialize(model, arch)
            init = f"architecture of {args.pruned}, new random initialization"
        return model, {"width": ckpt["width"], "cfg": ckpt["cfg"],
                       "unit_kind": ckpt["unit_kind"], "init": init}
    width = 1.0 if args.width is None else args.width
    model = models.build(arch, width, num_classes)
    init = "random initialization"
    if args.pretrained:
        try:  # load_pretrained describes "arch (width, classes) <- source": keep the source
            init = load_pretrained(model, arch, args.pretrained).split(" <- ", 1)[-1]
        except (ValueError, FileNotFoundError, PretrainedDownloadError) as error:
            raise UsageError(f"--pretrained {args.pretrained}: {error}") from error
    return model, {"width": width, "cfg": None, "unit_kind": None, "init": init}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def build_split(args: argparse.Namespace, split: str, image_size: int) -> tuple[Dataset, int]:
    """One split with the standard transforms (augmented for training, Section 4.1)."""
    synthetic = {}
    if args.dataset == "synthetic":
        images = args.synthetic_images if split == "train" else args.synthetic_val_images
        synthetic = {"num_images": images, "seed": args.synthetic_seed}
    return data.build_dataset(args.dataset, args.data_path, split, image_size=image_size,
                              augment=split == "train", **synthetic)


def train_subset(dataset: Dataset, k: int, seed: int) -> Dataset:
    """A class-balanced random subset of ``k`` training images (Wolfe et al.'s dataset sizes)."""
    try:
        indices = data.class_balanced_subset(dataset, k, seed)
    except data.DataError as error:
        raise UsageError(f"--train-subset {k}: {error}") from error
    return Subset(dataset, indices)


def train_loader(
    dataset: Dataset, args: argparse.Namespace, world: distributed.World
) -> DataLoader:
    """This rank's shard, reshuffled per epoch; workers are re-seeded per epoch (set_epoch)."""
    per_rank = args.batch_size // world.size
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=args.seed, drop_last=True)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                      num_workers=args.workers, pin_memory=args.device.type == "cuda",
                      generator=torch.Generator())


def set_epoch(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Fix epoch ``epoch``'s shuffle and its workers' random augmentation from the seed alone,
    so that a resumed run draws what the uninterrupted run drew."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(mix_seed(seed, _WORKER_STREAM, rank, epoch))


def val_loader(dataset: Dataset, args: argparse.Namespace, world: distributed.World) -> DataLoader:
    """Every rank evaluates images rank, rank + N, ...: each image exactly once over all ranks
    (DistributedSampler would pad the shards with repeats)."""
    shard = Subset(dataset, range(world.rank, len(dataset), world.size))
    return DataLoader(shard, batch_size=args.eval_batch_size, num_workers=args.workers,
                      pin_memory=args.device.type == "cuda")


# ----------------------------------------------------------------------------------------------
# Optimization
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Train / evaluate
# ----------------------------------------------------------------------------------------------


def _autocast(args: argparse.Namespace):
    if args.amp is None:
        return nullcontext()
    return torch.autocast(args.device.type, dtype=getattr(torch, args.amp))


def _prepare(x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
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
    world: distributed.World,
    writer: Any,
) -> dict[str, float]:
    """One pass over this rank's shard; returns the mean training loss over all ranks and the
    learning rate of the epoch's first step."""
    model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    loss_sum = torch.zeros((), dtype=torch.float64, device=args.device)
    count = 0
    first_lr = optimizer.param_groups[0]["lr"]
    steps = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
               disable=args.no_progress or not world.is_main)
    for step, (x, y) in enumerate(bar):
        x, y = _prepare(x, args), y.to(args.device, non_blocking=True)
        with _autocast(args):
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
        if global_step % args.log_interval == 0 and world.is_main:
            value = loss.item()
            writer.add_scalar("train/loss", value, global_step)
            writer.add_scalar("train/lr", lr, global_step)
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
        x, y = _prepare(x, args), y.to(args.device, non_blocking=True)
        with _autocast(args):
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


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def _load_resume(args: argparse.Namespace, out: Path) -> dict | None:
    """last.pth of the run in ``out`` when --resume is given, after checking it is the same run;
    refuses to overwrite a run otherwise."""
    path = out / "last.pth"
    if not path.exists():
        if args.resume:
            distributed.say(f"--resume: no last.pth in {out}, starting from the first epoch")
        return None
    if not args.resume:
        raise UsageError(f"--output-dir {out} holds a run (last.pth); pass --resume to continue "
                         "it, --overwrite to replace it, or choose another --output-dir")
    ckpt = _read_checkpoint(str(path), "--resume")
    if ckpt.get("arch") != args.arch:
        raise UsageError(f"--resume: {path} is for {ckpt.get('arch')}, this script trains "
                         f"{args.arch}")
    before, now = ckpt["args"], saved_args(args)
    changed = [f"{_flag(k)} (saved {before.get(k)!r}, now {now[k]!r})"
               for k in RUN_ARGS if k in now and before.get(k) != now[k]]
    if changed:
        raise UsageError("--resume: these arguments differ from the interrupted run: "
                         + ", ".join(changed))
    return ckpt


def remove_run(out: Path) -> None:
    """--overwrite: delete what a run or evaluation wrote in ``out`` (nothing else)."""
    for path in (out / "last.pth", out / "best.pth", out / "metrics.jsonl",
                 out / "summary.json", *out.glob("epoch_*.pth")):
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def _keep_metrics_up_to(path: Path, epoch: int) -> None:
    """Drop metrics lines of epochs after the checkpoint (written just before a crash)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if line.strip() and json.loads(line)["epoch"] <= epoch]
        path.write_text("".join(line + "\n" for line in lines))


def prepare(arch: str, argv: list[str] | None) -> dict[str, Any]:
    """Parse and check everything, build data and model: all bad input fails here, before any
    training step, as a UsageError naming the argument."""
    args = build_parser(arch).parse_args(argv)
    args.arch = arch
    args.width = getattr(args, "width", None)  # only MobileNetV2 has a width multiplier
    world = distributed.world_from_env()
    check_args(args, world)
    out = Path(args.output_dir)
    resume = None
    if args.overwrite:
        remove_run(out)
    if args.evaluate_only:
        if (out / "last.pth").exists():
            raise UsageError(f"--output-dir {out} holds a training run; give --evaluate-only "
                             "its own --output-dir")
        if (out / "summary.json").exists():
            raise UsageError(f"--output-dir {out} holds an evaluation (summary.json); choose "
                             "another --output-dir or pass --overwrite")
    else:
        resume = _load_resume(args, out)
    # checked before any data is read: a checkpoint of another architecture fails in a second
    pruned = read_pruned(args.pruned, arch) if args.pruned and resume is None else None

    image_size = args.image_size or data.default_image_size(args.dataset)
    try:
        val_set, num_classes = build_split(args, "val", image_size)
        train_set = None
        if not args.evaluate_only:
            train_set, _ = build_split(args, "train", image_size)
            if args.train_subset is not None:
                train_set = train_subset(train_set, args.train_subset, args.seed)
            if len(train_set) // world.size < args.batch_size // world.size:
                raise UsageError(f"--batch-size {args.batch_size}: larger than the training set "
                                 f"({len(train_set)} images)")
    except data.DataError as error:
        raise UsageError(str(error)) from error
    seed_everything(args.seed)  # the same initialization on every rank
    model, info = build_model(args, num_classes, resume, pruned)
    dense_macs, dense_params = macs_and_params(models.build(arch, info["width"], num_classes),
                                               image_size)
    macs, params = macs_and_params(model, image_size)
    epochs = args.epochs
    if args.from_scratch:
        epochs = scratch_epochs(args.epochs, dense_macs, macs, args.scratch_max_factor)
    return {"args": args, "world": world, "out": out, "resume": resume, "model": model,
            "info": info, "train_set": train_set, "val_set": val_set, "num_classes": num_classes,
            "image_size": image_size, "epochs": epochs, "macs": macs, "params": params,
            "dense_macs": dense_macs, "dense_params": dense_params}


def run(arch: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or evaluate) as the arguments say; returns the summary (on every rank)."""
    start = time.time()
    setup = prepare(arch, argv)
    distributed.init(setup["args"].device.type)
    try:
        return _train(setup, start)
    finally:
        distributed.cleanup()


def _summary(setup: dict[str, Any], metrics: dict[str, Any], epochs: int, seconds: float,
             extra: dict[str, Any]) -> dict[str, Any]:
    args, info = setup["args"], setup["info"]
    return {
        "arch": args.arch, "width": info["width"], "macs": setup["macs"],
        "params": setup["params"], "top1": metrics["top1"], "top5": metrics["top5"],
        "num_classes": setup["num_classes"], "epochs": epochs, "seconds": seconds,
        "val_loss": metrics["val_loss"], "dense_macs": setup["dense_macs"],
        "dense_params": setup["dense_params"], "pruned": info["cfg"] is not None,
        "init": info["init"], "dataset": args.dataset, "image_size": setup["image_size"],
        "world_size": setup["world"].size, **runtime_record(args.device), **extra,
        "args": saved_args(args),
    }


def _train(setup: dict[str, Any], start: float) -> dict[str, Any]:
    args, world, out, info = setup["args"], setup["world"], setup["out"], setup["info"]
    log = distributed.say
    net = setup["model"].to(args.device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    log(f"{args.arch} (width {info['width']}, {setup['num_classes']} classes) <- {info['init']}; "
        f"{setup['macs'] / 1e6:.1f}M MACs of {setup['dense_macs'] / 1e6:.1f}M dense, "
        f"{setup['params'] / 1e6:.2f}M params at {setup['image_size']} px")
    val = val_loader(setup["val_set"], args, world)

    if args.evaluate_only:
        metrics = evaluate(net, val, args)
        require_finite(metrics["val_loss"], "the model's validation loss")
        summary = _summary(setup, metrics, 0, time.time() - start, {})
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        log(f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, "
            f"loss {metrics['val_loss']:.4f}; wrote {out / 'summary.json'}")
        return summary

    epochs = setup["epochs"]
    if args.from_scratch:
        log(f"--from-scratch: Scratch-B budget {args.epochs} x min({setup['dense_macs']} / "
            f"{setup['macs']} MACs, {args.scratch_max_factor}) = {epochs} epochs")
    train = train_loader(setup["train_set"], args, world)
    model: nn.Module = net
    if world.distributed:
        device_ids = [world.local_rank] if args.device.type == "cuda" else None
        model = DistributedDataParallel(net, device_ids=device_ids)
    if args.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(args, net)
    scheduler = make_scheduler(args.lr_schedule, optimizer, epochs * len(train))
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.amp == "float16")

    resume = setup["resume"]
    first_epoch, best_top1, best_epoch, seconds_before, metrics = 0, -1.0, 0, 0.0, None
    if resume is None:
        seed_everything(mix_seed(args.seed, _RANK_STREAM, world.rank))
    else:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        first_epoch, best_top1 = resume["epoch"], resume["best_top1"]
        best_epoch, seconds_before = resume["best_epoch"], resume["seconds"]
        metrics = resume["metrics"]
        if len(resume["rng"]) == world.size:
            set_rng_state(resume["rng"][world.rank])
        else:
            log(f"--resume: saved by {len(resume['rng'])} processes, now {world.size}: random "
                "state re-seeded, so the run will not repeat the uninterrupted one exactly")
            seed_everything(mix_seed(args.seed, _RANK_STREAM, world.rank, first_epoch))
        if world.is_main:
            _keep_metrics_up_to(out / "metrics.jsonl", first_epoch)
        log(f"resuming after epoch {first_epoch} of {epochs}")
    precision = f"autocast {args.amp}" if args.amp else (
        "float32, TF32 allowed" if tf32_in_effect(args.device) else "IEEE float32")
    log(f"training {epochs} epochs x {len(train)} steps, global batch {args.batch_size} on "
        f"{world.size} process(es), {args.optimizer} lr {args.lr} ({args.lr_schedule}), "
        f"{len(setup['train_set'])} training images, {precision} on {device_name(args.device)}")

    writer = None
    if world.is_main:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(out / "tb"))
    run_start = time.time()
    for epoch in range(first_epoch, epochs):
        set_epoch(train, args.seed, world.rank, epoch)
        epoch_start = time.time()
        metrics = train_one_epoch(model, train, optimizer, scheduler, scaler, args, epoch,
                                  epochs, world, writer)
        distributed.broadcast_buffers(net)
        metrics.update(evaluate(net, val, args))
        for name, what in (("train_loss", "training"), ("val_loss", "validation")):
            # before anything of this epoch is saved: last.pth keeps the last good epoch
            require_finite(metrics[name], f"epoch {epoch + 1}: the {what} loss")
        require_finite_parameters(net, f"epoch {epoch + 1}")  # e.g. weights no input reaches
        is_best = metrics["top1"] > best_top1
        if is_best:
            best_top1, best_epoch = metrics["top1"], epoch + 1
        metrics = {"epoch": epoch + 1, **metrics, "best_top1": best_top1,
                   "seconds": time.time() - epoch_start}
        if args.optimizer == "grda":
            metrics["sparsity"] = sparsity_report(net, optimizer)["total"]["sparsity"]
        rng = distributed.all_gather_objects(rng_state())
        if world.is_main:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics, allow_nan=False) + "\n")
            state = net.state_dict()
            ckpt = {
                "format": FORMAT if info["cfg"] is not None else TRAIN_FORMAT,
                "arch": args.arch, "width": info["width"], "num_classes": setup["num_classes"],
                "cfg": info["cfg"], "unit_kind": info["unit_kind"],
                "model": state, "state_dict": state,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_top1": best_top1,
                "best_epoch": best_epoch, "seconds": seconds_before + time.time() - run_start,
                "rng": rng, "args": saved_args(args),
                "metrics": metrics,
            }
            save_atomic(ckpt, out / "last.pth")
            if is_best:
                save_atomic(ckpt, out / "best.pth")
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_atomic(ckpt, out / f"epoch_{epoch + 1:03d}.pth")
            for name in ("train_loss", "lr", "val_loss", "top1", "top5"):
                writer.add_scalar(f"epoch/{name}", metrics[name], epoch + 1)
        log(f"epoch {epoch + 1}/{epochs}: train loss {metrics['train_loss']:.4f}, lr "
            f"{metrics['lr']:.3g}; val loss {metrics['val_loss']:.4f}, top-1 "
            f"{metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% (best {best_top1:.2f}%), "
            f"{metrics['seconds']:.0f} s")
    distributed.barrier()
    extra = {"best_top1": best_top1, "best_epoch": best_epoch, "optimizer": args.optimizer,
             "lr": args.lr, "lr_schedule": args.lr_schedule, "batch_size": args.batch_size,
             "train_images": len(setup["train_set"])}
    if args.optimizer == "grda":
        extra["sparsity"] = sparsity_report(net, optimizer)
    summary = _summary(setup, metrics, epochs, seconds_before + time.time() - run_start, extra)
    if world.is_main:
        writer.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        log(f"final top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% (best "
            f"{best_top1:.2f}% at epoch {best_epoch}); wrote {out / 'summary.json'}")
    return summary


def main(arch: str) -> None:
    """Entry point of the thin scripts: bad input prints ``error: ...`` and exits with 2, a
    non-finite loss with 1, Ctrl-C with one line."""
    try:
        run(arch)
    except (UsageError, data.DataError) as error:  # DataError: e.g. an unreadable image
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLoss as error:
        print(f"error: {error}; nothing of that epoch was saved (last.pth, if any, holds the "
              "last good one); try a smaller --lr, or another --amp", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: last.pth holds the last completed epoch; continue with the same "
              "command and --resume", file=sys.stderr)
        sys.exit(130)
