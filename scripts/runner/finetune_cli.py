"""The command line shared by ``mobile2_finetune.py`` and ``resnet34_finetune.py``.

The second half of the pipeline (Ye et al., 2020, Sections 4.1-4.2). It trains

* a pruned network (``--pruned``: the prune script's pruned.pth or masked.pth, rebuilt from its
  cfg) from its inherited weights: the paper's fine-tuning (Table 1); or, with
  ``--from-scratch``, the same slim architecture from a new random initialization with Liu et
  al. (2019)'s Scratch-B budget: the re-training column of Table 2;
* a dense network (``--pretrained`` weights, or a random initialization): dense (pre-)training,
  whose checkpoints the prune scripts accept as ``--pretrained``. Wolfe et al. (2023) prune
  snapshots taken during pre-training (``--save-every``) on class-balanced subsets of the
  training set (``--train-subset``).

The defaults are the paper's fine-tuning recipe (Section 4.1): SGD with Nesterov momentum 0.9
and weight decay 5e-5, 150 epochs, global batch 512, 224 x 224 inputs with random-resized-crop
and horizontal flip, evaluation at resize 256 / center crop 224; the learning rate and its
schedule come from the architecture's recipe (``models.registry``: MobileNetV2 cosine from 0.01,
ResNet34 a constant 2.5e-4). The cosine schedule is stepped per iteration: the step-t learning
rate of T = epochs x steps-per-epoch is ``lr * (1 + cos(pi * t / T)) / 2``.

One process, or ``torchrun --nproc_per_node=N`` (DDP; NCCL on GPUs, gloo on CPUs).
``--batch-size`` is the global batch; each rank gets batch-size / N. Only rank 0 logs and writes.

Files in ``--output-dir`` (checkpoints of kind ``training``, ``pruning.checkpoint``):

    last.pth              after every epoch (``--resume`` continues from it)
    best.pth              at the best validation top-1 so far
    epoch_XXX.pth         every ``--save-every`` epochs (pre-training snapshots to prune later)
    metrics.jsonl         one JSON line per epoch
    summary.json          arch, macs, params, top1, top5 (percent), num_classes, epochs, seconds,
                          the device name, torch/CUDA versions and whether TF32 was allowed...
    tb/                   TensorBoard: train loss and learning rate, val top-1/top-5/loss

The training machinery (``train_one_epoch``, ``evaluate``, loaders, optimizer, schedule, random
state) is ``scripts.runner.training``; a resumed run repeats the uninterrupted one exactly.
"""

# Why this module is longer than 400 lines: every flag of the fine-tune scripts with its help text
# (about 90 lines), their checks, and the run read top to bottom (prepare, restore, the epoch loop
# with its one checkpoint block, finish); the training steps themselves are scripts.runner.training.

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

import data
import models
from data.seeding import mix_seed, seed_everything
from models.weights import PretrainedDownloadError, flagged, load_pretrained
from pruning.checkpoint import Checkpoint, CheckpointError, read, save, write_atomic
from pruning.flops import macs_and_params
from pruning.precision import set_tf32
from pruning.stop import require_finite, require_finite_parameters
from scripts.runner import distributed
from scripts.runner.arguments import (
    ArgumentParser,
    HelpFormatter,
    UsageError,
    add_shared_arguments,
    check_images,
    check_same_run,
    check_shared,
    finite_float,
    flag,
    plain,
    require_at_least,
    require_batchnorm_batch,
)
from scripts.runner.command import run_command
from scripts.runner.grda import sparsity_report
from scripts.runner.machine import device_name, runtime_record, tf32_in_effect
from scripts.runner.rundir import KINDS, RunDir
from scripts.runner.runlog import RunLog
from scripts.runner.training import (
    RANK_STREAM,
    evaluate,
    make_optimizer,
    make_scheduler,
    rng_state,
    scratch_epochs,
    set_rng_state,
    train_loader,
    train_one_epoch,
    val_loader,
)

__all__ = ["UsageError", "build_parser", "check_args", "evaluate", "main", "make_scheduler",
           "prepare", "run", "scratch_epochs", "train_one_epoch"]

SGD_DEFAULTS = {"momentum": 0.9, "weight_decay": 5e-5, "nesterov": True}
#: gRDA's (c, mu): the example of the authors' README (Chao et al., 2020).
GRDA_DEFAULTS = {"grda_c": 0.005, "grda_mu": 0.51}
#: Liu et al.'s cap of the Scratch-B budget on ImageNet.
SCRATCH_MAX_FACTOR = 2.0

#: Arguments that define the training run: a resumed run must use the same values.
RUN_ARGS = (
    "arch", "width", "layout", "pruned", "pretrained", "from_scratch", "scratch_max_factor",
    "dataset", "data_path", "image_size", "synthetic_images", "synthetic_seed", "train_subset",
    "epochs", "batch_size", "lr", "lr_schedule", "optimizer", "momentum", "weight_decay",
    "nesterov", "grda_c", "grda_mu", "label_smoothing", "amp", "seed",
)
TRAINING_FILES = KINDS["fine-tune"].files  # what a run writes: scripts.runner.rundir


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def build_parser(arch: str) -> argparse.ArgumentParser:
    """Every knob of the run; defaults that depend on others are resolved by check_args."""
    family = models.get(arch)
    recipe = ", ".join(f"{k} {v}" for k, v in family.recipe.items())
    p = ArgumentParser(
        description=f"Fine-tune, re-train or train {family.title} (Ye et al., 2020, "
                    "Sections 4.1-4.2).", formatter_class=HelpFormatter)
    add_shared_arguments(p, family.title, family.has_width, family.layout_names,
                         f"runs/{arch}_finetune")
    p.set_defaults(arch=arch)
    m = p.add_argument_group("starting point")
    m.add_argument("--pruned", help="pruned checkpoint to train: the prune script's pruned.pth "
                                    "or masked.pth, or this script's checkpoint of one")
    m.add_argument("--pretrained", default="",
                   help="dense weights to start from: a torchvision enum name (IMAGENET1K_V1) or "
                        "a file (default, and without --pruned: random initialization)")
    m.add_argument("--from-scratch", action="store_true",
                   help="with --pruned: re-initialize the slim architecture randomly and train "
                        "for the Scratch-B budget (Liu et al., 2019; paper Table 2)")
    m.add_argument("--scratch-max-factor", type=finite_float, default=SCRATCH_MAX_FACTOR,
                   help="--from-scratch trains epochs x min(dense MACs / pruned MACs, this); "
                        "Liu et al. cap ImageNet at 2; 1 gives Scratch-E")
    p.add_argument("--synthetic-val-images", type=int, default=1000,
                   help="validation images of the synthetic dataset")
    p.add_argument("--train-subset", type=int,
                   help="train on a class-balanced random subset of K images (fixed by --seed)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=150,
                   help="training epochs; --from-scratch scales them (Scratch-B)")
    t.add_argument("--batch-size", type=int, default=512,
                   help="global batch size, split evenly over the torchrun processes")
    t.add_argument("--lr", type=finite_float, help=f"initial learning rate (default: {recipe})")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"),
                   help=f"per-iteration cosine decay to 0, or constant (default: {recipe})")
    t.add_argument("--optimizer", choices=("sgd", "grda"), default="sgd",
                   help="grda: gRDA (Chao et al., 2020), unstructured sparsity in summary.json")
    t.add_argument("--momentum", type=finite_float, help="SGD only (default 0.9)")
    t.add_argument("--weight-decay", type=finite_float, help="SGD only (default 5e-5)")
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help="SGD only (default on)")
    t.add_argument("--grda-c", type=finite_float, help="gRDA threshold scale (default 0.005)")
    t.add_argument("--grda-mu", type=finite_float, help="gRDA threshold growth (default 0.51)")
    t.add_argument("--label-smoothing", type=finite_float, default=0.0,
                   help="the paper uses none (the released script smoothed labels)")
    s = p.add_argument_group("speed (off by default, but TF32)")
    s.add_argument("--amp", nargs="?", const="bfloat16", choices=("bfloat16", "float16"),
                   help="autocast; --amp alone means bfloat16 (float16 adds a GradScaler)")
    s.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    s.add_argument("--compile", action="store_true", help="torch.compile the training model")
    s.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="let float32 convolutions and matmuls run in TF32 on Ampere and newer "
                        "GPUs (faster, 10-bit mantissa); --no-tf32 keeps IEEE float32 (no "
                        "effect on a CPU or under --amp)")
    o = p.add_argument_group("run")
    o.add_argument("--save-every", type=int, default=0,
                   help="also keep epoch_XXX.pth every E epochs (0: off)")
    o.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the model on the validation set and write summary.json")
    o.add_argument("--log-interval", type=int, default=50,
                   help="TensorBoard train loss / lr every N steps")
    return p


def check_args(args: argparse.Namespace, world: distributed.World) -> None:
    """Every check that needs no data or model, so bad input fails in a second; also resolves
    the defaults that depend on the architecture and the optimizer."""
    check_shared(args, world)
    for name in ("epochs", "batch_size", "synthetic_val_images", "log_interval"):
        require_at_least(args, name, 1)
    require_at_least(args, "save_every", 0)
    if args.train_subset is not None:
        require_at_least(args, "train_subset", 1)
    if args.batch_size % world.size:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by world size "
                         f"{world.size}")
    if not args.evaluate_only:
        require_batchnorm_batch(args.batch_size, processes=world.size)
    if args.evaluate_only:
        check_images(args, {"--eval-batch-size": args.eval_batch_size}, training=False)
    else:
        check_images(args, {"--batch-size": args.batch_size // world.size}, training=True,
                     bytes_per_float=2 if args.amp else 4)
    if args.pruned and args.pretrained:
        raise UsageError("--pruned and --pretrained exclude each other: a pruned checkpoint "
                         "already holds its weights")
    if args.from_scratch and not args.pruned:
        raise UsageError("--from-scratch re-trains a pruned architecture: give --pruned (a dense "
                         "model without --pretrained is already trained from scratch)")
    if args.scratch_max_factor < 1:
        raise UsageError(f"--scratch-max-factor must be >= 1, got {args.scratch_max_factor}")
    if not args.from_scratch and args.scratch_max_factor != SCRATCH_MAX_FACTOR:
        raise UsageError(f"--scratch-max-factor {args.scratch_max_factor}: sets the budget of "
                         "--from-scratch, which is not given (it would be ignored)")
    if args.evaluate_only and (args.resume or args.from_scratch):
        raise UsageError("--evaluate-only takes neither --resume nor --from-scratch")
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    args.layout = args.layout or models.default_layout(args.arch, args.dataset)
    resolve_recipe(args)
    set_tf32(args.tf32)


def resolve_recipe(args: argparse.Namespace) -> None:
    """The architecture's learning rate and schedule and the optimizer's own defaults, for the
    flags left unset; flags of the other optimizer are refused."""
    for name, value in models.get(args.arch).recipe.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    own, other = ((SGD_DEFAULTS, GRDA_DEFAULTS) if args.optimizer == "sgd"
                  else (GRDA_DEFAULTS, SGD_DEFAULTS))
    given = [flag(k) for k in other if getattr(args, k) is not None]
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
            raise UsageError(f"{flag(name)} must be >= 0, got {value}")
    if args.optimizer == "sgd" and args.nesterov and args.momentum == 0:
        raise UsageError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def pruned_network(args: argparse.Namespace) -> tuple[nn.Module, Checkpoint]:
    """``--pruned`` through the one reader of pruned checkpoints (``models.load_pruned``): its
    kind, cfg, architecture, layout and weights are checked and the slim network rebuilt before
    any data is read; a refusal is a UsageError."""
    try:
        return models.load_pruned(args.pruned, "--pruned", arch=args.arch, layout=args.layout)
    except CheckpointError as error:
        raise UsageError(str(error)) from None


def from_pruned(args: argparse.Namespace, pruned: tuple[nn.Module, Checkpoint],
                num_classes: int) -> tuple[nn.Module, Checkpoint, str]:
    """The network ``pruned_network`` rebuilt (a masked checkpoint is already the same slim
    network), checked against --width and against the dataset's classes, which are known only
    once the data is read; re-initialized with --from-scratch."""
    model, ckpt = pruned
    if args.width is not None and args.width != ckpt.width:
        raise UsageError(f"--width {args.width}: --pruned {args.pruned} is a width "
                         f"{ckpt.width} network")
    if ckpt.num_classes != num_classes:
        raise UsageError(f"--pruned {args.pruned}: has {ckpt.num_classes} classes, "
                         f"--dataset {args.dataset} has {num_classes}")
    if not args.from_scratch:
        return model, ckpt, f"{ckpt.kind} checkpoint {args.pruned}"
    models.get(args.arch).reinitialize(model)
    return model, ckpt, f"architecture of {args.pruned}, new random initialization"


def build_model(args: argparse.Namespace, num_classes: int, resume: Checkpoint | None,
                pruned: tuple[nn.Module, Checkpoint] | None
                ) -> tuple[nn.Module, Checkpoint | None, str]:
    """The model to train, the checkpoint whose architecture it has (None: dense), and a
    description of its initialization.

    From ``resume`` (a last.pth) when given, else from ``pruned`` (``--pruned``'s network and
    checkpoint, re-initialized with ``--from-scratch``), else a dense model with
    ``--pretrained`` weights or a random initialization.
    """
    if resume is not None:
        return (models.load_model(resume), resume if resume.cfg is not None else None,
                f"resumed from epoch {resume.state['epoch']}")
    if pruned is not None:
        return from_pruned(args, pruned, num_classes)
    model = models.build(args.arch, 1.0 if args.width is None else args.width, num_classes,
                         args.layout)
    if not args.pretrained:
        return model, None, "random initialization"
    try:  # load_pretrained describes "arch (width, classes) <- source": keep the source
        loaded = load_pretrained(model, args.arch, args.pretrained, layout=args.layout)
        return model, None, loaded.split(" <- ")[-1]
    except (ValueError, FileNotFoundError, PretrainedDownloadError) as error:
        raise UsageError(flagged("--pretrained", args.pretrained, error)) from None


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """A checked run, its data and its model, before any training step (``prepare``)."""

    args: argparse.Namespace
    world: distributed.World
    log: RunLog
    resume: Checkpoint | None
    model: nn.Module
    width: float
    pruned: Checkpoint | None  # the checkpoint whose cfg the model has; None for a dense model
    init: str
    train_set: Dataset | None
    val_set: Dataset
    num_classes: int
    image_size: int
    epochs: int
    macs: int
    params: int
    dense_macs: int
    dense_params: int
    folder: RunDir | None = None  # rank 0 claimed it; commit after a checkpoint (rundir)


def build_split(args: argparse.Namespace, split: str, image_size: int) -> tuple[Dataset, int]:
    """One split with the standard transforms (augmented for training, Section 4.1)."""
    synthetic = {}
    if args.dataset == "synthetic":
        images = args.synthetic_images if split == "train" else args.synthetic_val_images
        synthetic = {"num_images": images, "seed": args.synthetic_seed}
    return data.build_dataset(args.dataset, args.data_path, split, image_size=image_size,
                              augment=split == "train", **synthetic)


def load_data(args: argparse.Namespace, world: distributed.World,
              image_size: int) -> tuple[Dataset | None, Dataset, int]:
    """The training set (None with --evaluate-only, a class-balanced subset with
    --train-subset), the validation set and the number of classes."""
    try:
        val_set, num_classes = build_split(args, "val", image_size)
        if args.evaluate_only:
            return None, val_set, num_classes
        train_set, _ = build_split(args, "train", image_size)
    except data.DataError as error:
        raise UsageError(str(error)) from error
    if args.train_subset is not None:
        try:
            indices = data.class_balanced_subset(train_set, args.train_subset, args.seed)
        except data.DataError as error:
            raise UsageError(f"--train-subset {args.train_subset}: {error}") from error
        train_set = Subset(train_set, indices)
    if len(train_set) // world.size < args.batch_size // world.size:
        raise UsageError(f"--batch-size {args.batch_size}: larger than the training set "
                         f"({len(train_set)} images)")
    return train_set, val_set, num_classes


def run_folder(args: argparse.Namespace) -> RunDir:
    """The run folder (``scripts.runner.rundir``): a fine-tune run's, or an evaluation's."""
    return RunDir(Path(args.output_dir), "evaluate" if args.evaluate_only else "fine-tune",
                  args.arch)


def start_run(args: argparse.Namespace, folder: RunDir | None = None) -> Checkpoint | None:
    """The run-folder policy (``scripts.runner.rundir``), applied by rank 0 (the lock, the folder's
    kind, resume or refuse): last.pth to resume from, or None."""
    folder = folder or run_folder(args)
    path = distributed.on_main(lambda: folder.claim(args.resume and not args.evaluate_only,
                                                    args.overwrite))
    if path is None:
        return None
    try:
        ckpt = read(path, "--resume", ("training",))
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    if ckpt.arch != args.arch:
        raise UsageError(f"--resume: {path} is for {ckpt.arch}, this script trains {args.arch}")
    defaults = vars(build_parser(args.arch).parse_args([]))
    check_same_run(ckpt.args, {k: v for k, v in plain(args).items() if k in RUN_ARGS}, defaults)
    return ckpt


def prepare(arch: str, argv: list[str] | None) -> Setup:
    """Parse and check everything, join the process group, build data and model: all bad input
    fails here, before any training step, as a UsageError naming the argument."""
    args = build_parser(arch).parse_args(argv)
    args.width = getattr(args, "width", None)  # only families with a width multiplier have it
    check_args(args, distributed.world_from_env())
    world = distributed.init(args.device.type)  # as the prune scripts: before any data
    folder = run_folder(args)
    try:
        return prepared(args, world, folder, start_run(args, folder))
    except BaseException:
        folder.release()
        raise


def prepared(args: argparse.Namespace, world: distributed.World, folder: RunDir,
             resume: Checkpoint | None) -> Setup:
    """``prepare`` once rank 0 has claimed the folder: every input is read (into memory) before
    the folder changes; only then does --overwrite move the old run aside (``RunDir.begin``)."""
    arch = args.arch
    # checked before any data is read: a checkpoint of another architecture fails in a second
    pruned = pruned_network(args) if args.pruned and resume is None else None
    image_size = args.image_size or data.default_image_size(args.dataset)
    train_set, val_set, num_classes = load_data(args, world, image_size)
    seed_everything(args.seed)  # the same initialization on every rank
    model, shape, init = build_model(args, num_classes, resume, pruned)
    width = shape.width if shape is not None else (1.0 if args.width is None else args.width)
    if resume is not None:
        width = resume.width
    dense_macs, dense_params = macs_and_params(
        models.build(arch, width, num_classes, args.layout), image_size)
    macs, params = macs_and_params(model, image_size)
    epochs = (scratch_epochs(args.epochs, dense_macs, macs, args.scratch_max_factor)
              if args.from_scratch else args.epochs)
    log = RunLog(Path(args.output_dir), world.is_main, not args.no_progress)
    distributed.barrier()  # every rank has read its inputs: the folder may change now
    distributed.on_main(folder.begin)
    return Setup(args, world, log, resume, model, width, shape, init, train_set, val_set,
                 num_classes, image_size, epochs, macs, params, dense_macs, dense_params, folder)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def summary_of(setup: Setup, metrics: dict[str, Any], epochs: int, seconds: float,
               extra: dict[str, Any]) -> dict[str, Any]:
    args = setup.args
    return {
        "arch": args.arch, "width": setup.width, "layout": args.layout, "macs": setup.macs,
        "params": setup.params,
        "top1": metrics["top1"], "top5": metrics["top5"], "num_classes": setup.num_classes,
        "epochs": epochs, "seconds": seconds, "val_loss": metrics["val_loss"],
        "dense_macs": setup.dense_macs, "dense_params": setup.dense_params,
        "pruned": setup.pruned is not None, "init": setup.init, "dataset": args.dataset,
        "image_size": setup.image_size, "world_size": setup.world.size,
        **runtime_record(args.device), **extra, "args": plain(args),
    }


def evaluate_only(setup: Setup, net: nn.Module, start: float) -> dict[str, Any]:
    metrics = evaluate(net, val_loader(setup.val_set, setup.args, setup.world), setup.args)
    require_finite(metrics["val_loss"], "the model's validation loss")
    summary = summary_of(setup, metrics, 0, time.time() - start, {})
    path = setup.log.write_json("summary.json", summary)
    if setup.world.is_main and setup.folder is not None:
        setup.folder.commit()  # the evaluation's one file: the run --overwrite replaced goes
    setup.log.say(f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, "
                  f"loss {metrics['val_loss']:.4f}; wrote {path}")
    return summary


@dataclass
class Progress:
    """Where training stands: restored from last.pth by ``--resume``, saved with every epoch."""

    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    seconds: float = 0.0
    metrics: dict | None = None


def restore(setup: Setup, optimizer, scheduler, scaler) -> Progress:
    """The optimizer, schedule, scaler and generator states of ``--resume``'s last.pth, or a
    fresh start with this rank's generators seeded."""
    args, world, resume = setup.args, setup.world, setup.resume
    if resume is None:
        seed_everything(mix_seed(args.seed, RANK_STREAM, world.rank))
        if world.is_main:  # lines of an attempt that stopped before its first checkpoint
            (setup.log.out / "metrics.jsonl").unlink(missing_ok=True)
        return Progress()
    state = resume.state
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    progress = Progress(state["epoch"], state["best_top1"], state["best_epoch"],
                        state["seconds"], resume.metrics)
    if len(state["rng"]) == world.size:
        set_rng_state(state["rng"][world.rank])
    else:
        setup.log.say(f"--resume: saved by {len(state['rng'])} processes, now {world.size}: "
                      "random state re-seeded, so the run will not repeat the uninterrupted "
                      "one exactly")
        seed_everything(mix_seed(args.seed, RANK_STREAM, world.rank, progress.epoch))
    distributed.on_main(lambda: keep_metrics_up_to(setup.log.out / "metrics.jsonl",
                                                   progress.epoch))
    setup.log.say(f"resuming after epoch {progress.epoch} of {setup.epochs}")
    return progress


def keep_metrics_up_to(path: Path, epoch: int) -> None:
    """Drop metrics lines of epochs after the checkpoint (written just before a crash), and a
    torn last line (a crash while it was appended: that epoch was never saved); any other line
    that is not an epoch's metrics is refused in one line naming the file and the line."""
    if not path.exists():
        return
    try:
        text = path.read_text()
    except (OSError, ValueError) as error:
        raise UsageError(f"--resume: cannot read {path} ({error}); move it away (the "
                         "checkpoints do not depend on it) and --resume again") from None
    lines, kept = text.splitlines(), []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
                raise ValueError("no integer 'epoch'")
        except ValueError as error:
            if number == len(lines) and not text.endswith("\n"):
                continue  # torn: the run stopped while appending it, before its checkpoint
            raise UsageError(f"--resume: {path}, line {number}: not an epoch's metrics "
                             f"({str(error)[:80]}); repair or delete that line (the checkpoints "
                             "do not depend on it) and --resume again") from None
        if entry["epoch"] <= epoch:
            kept.append(line)
    new = "".join(line + "\n" for line in kept)
    if new != text:
        write_atomic(path, lambda f: f.write(new.encode()))


def save_checkpoints(setup: Setup, net: nn.Module, progress: Progress, is_best: bool,
                     states: dict[str, Any]) -> None:
    """The one checkpoint block: last.pth every epoch, best.pth, epoch_XXX.pth (rank 0)."""
    args, out = setup.args, setup.log.out
    shape = setup.pruned
    ckpt = Checkpoint(
        "training", args.arch, setup.width, setup.num_classes, net.state_dict(),
        shape.unit_kind if shape else None, shape.cfg if shape else None, plain(args),
        progress.metrics, {**states, "epoch": progress.epoch, "best_top1": progress.best_top1,
                           "best_epoch": progress.best_epoch, "seconds": progress.seconds},
        args.layout)
    save(ckpt, out / "last.pth")
    if is_best:
        save(ckpt, out / "best.pth")
    if args.save_every and progress.epoch % args.save_every == 0:
        save(ckpt, out / f"epoch_{progress.epoch:03d}.pth")


def describe(setup: Setup, train_steps: int) -> None:
    args, log = setup.args, setup.log
    if args.from_scratch:
        log.say(f"--from-scratch: Scratch-B budget {args.epochs} x min({setup.dense_macs} / "
                f"{setup.macs} MACs, {args.scratch_max_factor}) = {setup.epochs} epochs")
    precision = f"autocast {args.amp}" if args.amp else (
        "float32, TF32 allowed" if tf32_in_effect(args.device) else "IEEE float32")
    log.say(f"training {setup.epochs} epochs x {train_steps} steps, global batch "
            f"{args.batch_size} on {setup.world.size} process(es), {args.optimizer} lr "
            f"{args.lr} ({args.lr_schedule}), {len(setup.train_set)} training images, "
            f"{precision} on {device_name(args.device)}")


def epoch_metrics(setup: Setup, net, optimizer, metrics: dict, progress: Progress,
                  epoch_start: float) -> bool:
    """Check the epoch's numbers (before anything of it is saved: last.pth keeps the last good
    epoch), update ``progress``; True when this epoch has the best top-1 so far."""
    epoch = progress.epoch + 1
    for name, what in (("train_loss", "training"), ("val_loss", "validation")):
        require_finite(metrics[name], f"epoch {epoch}: the {what} loss")
    require_finite_parameters(net, f"epoch {epoch}")  # e.g. weights no input reaches
    is_best = metrics["top1"] > progress.best_top1
    if is_best:
        progress.best_top1, progress.best_epoch = metrics["top1"], epoch
    progress.epoch = epoch
    progress.metrics = {"epoch": epoch, **metrics, "best_top1": progress.best_top1,
                        "seconds": time.time() - epoch_start}
    if setup.args.optimizer == "grda":
        progress.metrics["sparsity"] = sparsity_report(net, optimizer)["total"]["sparsity"]
    return is_best


def train(setup: Setup, net: nn.Module) -> dict[str, Any]:
    """The epochs: train_one_epoch, evaluate, one checkpoint block; then summary.json."""
    args, world, log = setup.args, setup.world, setup.log
    train_batches = train_loader(setup.train_set, args, world)
    val = val_loader(setup.val_set, args, world)
    model = net
    if world.distributed:
        model = DistributedDataParallel(
            net, device_ids=[world.local_rank] if args.device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(args, net)
    scheduler = make_scheduler(args.lr_schedule, optimizer, setup.epochs * len(train_batches))
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.amp == "float16")
    progress = restore(setup, optimizer, scheduler, scaler)
    describe(setup, len(train_batches))
    run_start, seconds_before = time.time(), progress.seconds
    while progress.epoch < setup.epochs:
        data.set_epoch(train_batches, args.seed, world.rank, progress.epoch)
        epoch_start = time.time()
        metrics = train_one_epoch(model, train_batches, optimizer, scheduler, scaler, args,
                                  progress.epoch, setup.epochs, log)
        distributed.broadcast_buffers(net)
        metrics.update(evaluate(net, val, args))
        is_best = epoch_metrics(setup, net, optimizer, metrics, progress, epoch_start)
        progress.seconds = seconds_before + time.time() - run_start
        states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "scaler": scaler.state_dict(), "rng": distributed.all_gather_objects(rng_state())}

        def save_epoch(is_best=is_best, states=states, metrics=metrics) -> None:
            """Rank 0 writes; a full disk stops every rank (``distributed.on_main``)."""
            log.append_jsonl("metrics.jsonl", progress.metrics)
            save_checkpoints(setup, net, progress, is_best, states)
            if setup.folder is not None:
                setup.folder.commit()  # the first checkpoint: the run --overwrite replaced goes
            for name in ("train_loss", "lr", "val_loss", "top1", "top5"):
                log.scalar(f"epoch/{name}", metrics[name], progress.epoch)

        distributed.on_main(save_epoch)
        m = progress.metrics
        log.say(f"epoch {progress.epoch}/{setup.epochs}: train loss {m['train_loss']:.4f}, lr "
                f"{m['lr']:.3g}; val loss {m['val_loss']:.4f}, top-1 {m['top1']:.2f}%, top-5 "
                f"{m['top5']:.2f}% (best {progress.best_top1:.2f}%), {m['seconds']:.0f} s")
    distributed.barrier()
    return finish(setup, net, optimizer, progress)


def finish(setup: Setup, net: nn.Module, optimizer, progress: Progress) -> dict[str, Any]:
    args = setup.args
    extra = {"best_top1": progress.best_top1, "best_epoch": progress.best_epoch,
             "optimizer": args.optimizer, "lr": args.lr, "lr_schedule": args.lr_schedule,
             "batch_size": args.batch_size, "train_images": len(setup.train_set)}
    if args.optimizer == "grda":
        extra["sparsity"] = sparsity_report(net, optimizer)
    summary = summary_of(setup, progress.metrics, setup.epochs, progress.seconds, extra)
    path = setup.log.write_json("summary.json", summary)
    setup.log.close()
    setup.log.say(f"final top-1 {summary['top1']:.2f}%, top-5 {summary['top5']:.2f}% (best "
                  f"{progress.best_top1:.2f}% at epoch {progress.best_epoch}); wrote {path}")
    return summary


def run(arch: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or evaluate) as the arguments say; returns the summary (on every rank)."""
    start, setup = time.time(), None
    try:
        setup = prepare(arch, argv)
        net = setup.model.to(setup.args.device)
        if setup.args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        setup.log.say(f"{arch} (width {setup.width}, {setup.num_classes} classes) <- "
                      f"{setup.init}; {setup.macs / 1e6:.1f}M MACs of "
                      f"{setup.dense_macs / 1e6:.1f}M dense, {setup.params / 1e6:.2f}M params "
                      f"at {setup.image_size} px")
        if setup.args.evaluate_only:
            return evaluate_only(setup, net, start)
        return train(setup, net)
    finally:
        if setup is not None and setup.folder is not None:
            setup.folder.release()
        distributed.cleanup()


def main(arch: str) -> None:
    """Entry point of the thin scripts (exit statuses: ``scripts.runner.command``)."""
    run_command(lambda: run(arch), bad_input=(PretrainedDownloadError,),
                on_nonfinite="nothing of that epoch was saved (last.pth, if any, holds the last "
                             "good one); try a smaller --lr, or another --amp",
                on_interrupt="last.pth holds the last completed epoch; continue with the same "
                             "command and --resume")
