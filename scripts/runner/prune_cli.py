"""The command line shared by ``mobile2_prune.py`` and ``resnet34_prune.py``: setup, select,
slim, report.

It parses and checks the arguments (before any long work) into a ``pruning.prune.PruneConfig``,
builds the data, the pretrained model and its units, and calls ``pruning.prune.prune`` (layer-wise
greedy forward selection or a baseline, then the slim network, verified) with hooks that show
progress and checkpoint after every unit; then it writes (``pruning.checkpoint``)

    <output-dir>/pruned.pth            the slim network (kind ``pruned``: weights + cfg)
    <output-dir>/masked.pth            the full-width network and every unit's mixing weights
                                       (kind ``masked``, as the released code saved it)
    <output-dir>/summary.json          MACs, params, kept channels, losses, timing, device
    <output-dir>/selection_state.pth   progress, for --resume (removed when the run ends)
    <output-dir>/tb/                   TensorBoard scalars

Selection runs the network in eval mode (BatchNorm uses its running statistics, as in the
released code) on mini-batches with the evaluation transform, drawn from one persistent loader.
The stop rule's losses are measured on a fixed, class-balanced subset of the training set.
Candidate scoring goes through one ``pruning.evaluators.CandidateEvaluator``; which one is used
changes only the speed, never the selection (up to float rounding; ``--precision bf16`` computes
the fast evaluator's candidate losses under bf16 autocast instead of float32). Everything else
that decides or reports (the plain evaluator, the stop rule's measurement, the first-order
scores, the slim-vs-masked check) runs in IEEE float32 with TF32 off (``pruning.precision``).
``--shortlist K`` does change the selection: each step evaluates exactly only the K best
candidates of the first-order ranking (``pruning.shortlist``); ``--shortlist-exact-steps E``
evaluates every candidate in each unit's first E steps and shortlists after.

Under ``torchrun --nproc_per_node=N`` every rank draws the same mini-batches and scores its share
of each step's candidates (``pruning.distributed_select``); all ranks make the same selection,
and only rank 0 shows progress and writes files.
"""

# Why this module is longer than 400 lines: it holds every flag of the prune scripts with its help
# text (about 90 lines) and the four stages a reader follows top to bottom (setup, select, slim,
# report); each function is short and the shared parts live in pruning/ (arguments, rundir,
# runlog, command, checkpoint).

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import data
import models
from data.seeding import seed_everything
from models.weights import PretrainedDownloadError, flagged, load_pretrained
from pruning.baselines import FIXED_SIZE_METHODS
from pruning.checkpoint import Checkpoint, CheckpointError, read, save, selection_cfg
from pruning.distributed_select import ShardedMeasure, sync_model
from pruning.flops import macs_and_params
from pruning.masks import Masks
from pruning.metrics import SubsetMeasure, loss_and_top1
from pruning.precision import CANDIDATE_PRECISIONS
from pruning.prune import (
    EVALUATORS,
    METHODS,
    STOPS,
    ConfigError,
    PruneConfig,
    PruneResult,
    build_stop,
    prune,
)
from pruning.selection import BatchStream, unit_seed
from pruning.stop import StopRule, require_finite, require_finite_parameters
from pruning.units import Splitter, Unit
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
    plain,
    require_at_least,
)
from scripts.runner.command import run_command
from scripts.runner.latency import measure_latency
from scripts.runner.machine import runtime_record
from scripts.runner.rundir import RunDir
from scripts.runner.runlog import RunLog, SelectionLog

STATE_FILE = "selection_state.pth"
#: Each ``PruneConfig`` field and the flag (its dest) it is parsed from; --match-kept is a path,
#: read into the per-unit counts the config holds
CONFIG_FLAGS = {
    "method": "method", "stop": "stop", "epsilon": "epsilon", "top1_tol": "top1_tol",
    "keep_fraction": "keep_fraction", "match_kept": "match_kept", "evaluator": "evaluator",
    "precision": "precision", "shortlist": "shortlist", "exact_steps": "shortlist_exact_steps",
    "candidates": "candidates", "replacement": "with_replacement", "seed": "seed",
}
#: The network, data and fine-tune arguments the selection also depends on
INPUT_ARGS = (
    "arch", "width", "layout", "units", "dataset", "data_path", "image_size", "synthetic_images",
    "synthetic_seed", "pretrained", "batch_size", "eval_images", "finetune_between",
    "finetune_lr",
)
# Arguments that change what is selected (the evaluator only by float rounding, which can flip a
# near tie): a resumed run must use the same values (the state file's args).
SELECTION_ARGS = (*INPUT_ARGS, *CONFIG_FLAGS.values())


def build_parser(arch: str) -> argparse.ArgumentParser:
    family = models.get(arch)
    p = ArgumentParser(
        description=f"Prune {family.title} by layer-wise greedy forward selection "
                    "(Ye et al., 2020).", formatter_class=HelpFormatter)
    add_shared_arguments(p, family.title, family.has_width, family.layout_names,
                         f"runs/{arch}_prune")
    p.set_defaults(arch=arch)
    p.add_argument("--pretrained", default="",
                   help="weights to prune: a torchvision enum name (IMAGENET1K_V1) or a file "
                        "(without it: a randomly initialized network, a smoke test only)")
    s = p.add_argument_group("selection")
    s.add_argument("--units", choices=family.unit_kinds, default=family.default_units,
                   help="which channel groups to prune")
    s.add_argument("--method", choices=METHODS, default="greedy",
                   help="greedy: forward selection (the paper); backward: greedy backward "
                        "elimination; magnitude / random / uniform: fixed-size baselines that "
                        "need --stop fraction or --match-kept")
    s.add_argument("--match-kept", help="a pruned.pth whose per-unit kept channel counts this run "
                                        "stops at")
    s.add_argument("--stop", choices=STOPS, default="loss_gap",
                   help="loss_gap: the paper's epsilon rule; top1_tol: the released code's; "
                        "fraction: keep --keep-fraction of every unit")
    s.add_argument("--epsilon", type=finite_float, default=0.05,
                   help="loss_gap: stop a unit once loss - dense loss < epsilon")
    s.add_argument("--top1-tol", type=finite_float, default=0.02,
                   help="top1_tol: stop once top-1 >= (1 - tol) x top-1 at the unit's start")
    s.add_argument("--keep-fraction", type=finite_float, default=1.0,
                   help="fraction: channels kept per unit (with other rules: unused)")
    s.add_argument("--batch-size", type=int, default=128, help="mini-batch per greedy step")
    s.add_argument("--eval-images", type=int, default=1024,
                   help="size of the fixed class-balanced subset the stop rule measures")
    s.add_argument("--candidates", type=int,
                   help="score a random K-subset of candidates per step (default: all)")
    s.add_argument("--with-replacement", action="store_true",
                   help="let a channel be selected again (the paper's two-layer theory); by "
                        "default each channel is selected once, so a unit can always reach the "
                        "dense loss")
    s.add_argument("--finetune-between", type=finite_float, default=0.0,
                   help="epochs of SGD after each unit (the released code used 0.1); 0 = off")
    s.add_argument("--finetune-lr", type=finite_float, default=1e-3,
                   help="learning rate of --finetune-between")
    e = p.add_argument_group("speed")
    e.add_argument("--evaluator", choices=EVALUATORS, default="fast",
                   help="plain: one full forward per candidate (the released code); fast: the "
                        "same losses from a cached prefix, additive updates and batched "
                        "candidates (see --precision)")
    e.add_argument("--precision", choices=tuple(CANDIDATE_PRECISIONS), default="fp32",
                   help="candidate losses of --evaluator fast: IEEE float32 (the plain "
                        "evaluator's picks) or bf16 autocast with channels_last on a GPU")
    e.add_argument("--shortlist", type=int,
                   help="greedy: evaluate exactly only the K best candidates of the first-order "
                        "(Frank-Wolfe) ranking, which keeps the guarantee (default: all)")
    e.add_argument("--shortlist-exact-steps", type=int, default=0, metavar="E",
                   help="with --shortlist: evaluate every candidate exactly in each unit's "
                        "first E steps, where the first-order ranking is poorest, and only the "
                        "top K after")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no data or model, so bad input fails in a second."""
    family = models.get(args.arch)
    args.width = 1.0 if getattr(args, "width", None) is None else args.width
    try:
        family.check_width(args.width)
    except ValueError as error:
        raise UsageError(str(error)) from None
    args.layout = args.layout or models.default_layout(args.arch, args.dataset)
    check_shared(args, distributed.world_from_env())
    for name in ("batch_size", "eval_images"):
        require_at_least(args, name, 1)
    check_images(args, {"--batch-size": args.batch_size, "--eval-batch-size": args.eval_batch_size},
                 training=False)
    if args.finetune_between < 0:
        raise UsageError(f"--finetune-between must be >= 0, got {args.finetune_between}")
    if not args.finetune_lr > 0:
        raise UsageError(f"--finetune-lr must be > 0, got {args.finetune_lr}")
    if args.match_kept:
        parser = build_parser(args.arch)
        ignored = [f"--{name.replace('_', '-')} {getattr(args, name)}"
                   for name in ("stop", "epsilon", "top1_tol", "keep_fraction")
                   if getattr(args, name) != parser.get_default(name)]
        if ignored:
            raise UsageError(f"--match-kept {args.match_kept} stops every unit at that run's kept "
                             f"counts, so {' '.join(ignored)} would be ignored: give one or the "
                             "other")
    check_config(args)
    if args.evaluator == "fast" and family.split is None:
        raise UsageError(f"--evaluator fast: {family.title} declares no split; use "
                         "--evaluator plain")


def check_config(args: argparse.Namespace) -> None:
    """``PruneConfig``'s own checks on the selection flags, worded in the flags: each check
    exists once, in the library (``ConfigError.render``). --match-kept's counts are read only
    once the run folder is claimed (``setup``); an empty map stands for them here, as the
    checks ask only whether there are any."""
    try:
        prune_config(args, {} if args.match_kept else None)
    except ConfigError as error:
        raise UsageError(error.render(as_flag)) from None


def as_flag(field: str, value: str | None) -> str:
    """A ``PruneConfig`` field spelled as its flag: ``--shortlist``, ``--method greedy``."""
    flag = "--" + CONFIG_FLAGS.get(field, field).replace("_", "-")
    return flag if value is None else f"{flag} {value}"


def selection_args(args: argparse.Namespace) -> dict:
    """The arguments that decide the selection, as plain data; those that the chosen stop rule,
    method or evaluator never reads are left out, so that changing them does not block --resume.
    """
    unused = set()
    if args.match_kept or args.stop != "loss_gap":
        unused.add("epsilon")
    if args.match_kept or args.stop != "top1_tol":
        unused.add("top1_tol")
    if args.match_kept or args.stop != "fraction":
        unused.add("keep_fraction")
    if not args.finetune_between:
        unused.add("finetune_lr")
    return {k: v for k, v in plain(args).items() if k in SELECTION_ARGS and k not in unused}


def matched_kept(cfg: dict, path: str, units: list[Unit]) -> dict[str, int]:
    """Per-unit kept channel counts of another pruned checkpoint of the same units (its
    architecture was checked when it was read, ``models.read_pruned``; its width and unit kind
    can only be checked against the units)."""
    missing = [u.name for u in units if u.name not in cfg or cfg[u.name]["total"] != u.size]
    if missing:
        raise UsageError(f"--match-kept {path}: no matching unit for {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''} (another width or --units?)")
    return {u.name: cfg[u.name]["kept"] for u in units}


def short_finetune(model: nn.Module, masks: Masks, batches, steps: int, lr: float,
                   seed: int) -> None:
    """A few SGD steps on the masked network between units (the released code's 0.1 epoch).

    Two things keep them stable (unstable, a MobileNetV2 x0.5 went to a NaN loss). BatchNorm
    stays in eval mode: in train mode it normalizes a unit that kept one channel with that
    channel's batch statistics, unlike the network selection measures, and its running
    statistics drift toward them. And the steps are taken in the slim network's
    parametrization (``Masks.folded``): with the multipliers N/|S| on the hooks, the weights
    reading a kept channel move (N/|S|)^2 times too far.

    Dropout draws from the global RNG, which is seeded per unit so a resumed run repeats it.
    """
    torch.manual_seed(seed)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    with masks.folded(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                    weight_decay=5e-5)
        for _ in range(steps):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything a selection needs, built by ``setup``."""

    args: argparse.Namespace
    world: distributed.World
    log: RunLog
    train_set: Dataset
    num_classes: int
    image_size: int
    eval_batches: list
    model: nn.Module
    units: list[Unit]
    masks: Masks
    dense: tuple[float, float]
    saved: Checkpoint | None
    batches: BatchStream
    measure: SubsetMeasure | ShardedMeasure
    stop: StopRule
    start: float
    folder: RunDir | None = None  # rank 0 claims it, commits after a checkpoint (rundir)
    config: PruneConfig | None = None  # what decides the selection (``prune_config``)
    splits: Splitter | None = None  # the network's cut, for --evaluator fast


def parse(arch: str, argv: list[str] | None) -> argparse.Namespace:
    args = build_parser(arch).parse_args(argv)
    check_args(args)
    return args


def run_dir(args: argparse.Namespace) -> RunDir:
    """The run folder of a prune run (``runner.rundir``: its files, the lock, --overwrite)."""
    return RunDir(Path(args.output_dir), "prune", args.arch)


def read_state(path: Path | None, args: argparse.Namespace) -> Checkpoint | None:
    """The interrupted run's selection state, after checking it is the same run."""
    if path is None:
        return None
    try:
        state = read(path, "--resume", ("selection",))
    except CheckpointError as error:
        raise UsageError(f"--resume: cannot read {path} ({error.detail}); pass --overwrite to "
                         "start the run again") from None
    defaults = {k: v for k, v in vars(build_parser(args.arch).parse_args([])).items()}
    check_same_run(state.args, selection_args(args), defaults)
    return state


def check_pretrained(args: argparse.Namespace) -> None:
    """Weights of another architecture or width are refused before any data is scanned."""
    if args.pretrained:
        checked = models.build(args.arch, args.width, layout=args.layout)
        try:
            load_pretrained(checked, args.arch, args.pretrained, allow_head_mismatch=True,
                            layout=args.layout)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(flagged("--pretrained", args.pretrained, error)) from None
        require_finite_parameters(checked, f"--pretrained {args.pretrained}")


def load_data(args: argparse.Namespace) -> tuple[Dataset, int, int, list]:
    """The training set (evaluation transform), its class count, the image size, and the
    stop rule's fixed class-balanced subset as a list of device batches."""
    image_size = args.image_size or data.default_image_size(args.dataset)
    synthetic = ({"num_images": args.synthetic_images, "seed": args.synthetic_seed}
                 if args.dataset == "synthetic" else {})
    train_set, num_classes = data.build_dataset(
        args.dataset, args.data_path, "train", image_size=image_size, augment=False, **synthetic)
    eval_batches = data.evaluation_batches(train_set, args.eval_images, args.eval_batch_size,
                                           seed=args.seed, device=args.device,
                                           workers=args.workers)
    return train_set, num_classes, image_size, eval_batches


def prune_config(args: argparse.Namespace, match_kept: dict[str, int] | None = None
                 ) -> PruneConfig:
    """The selection arguments as the library's ``PruneConfig`` (``match_kept``: the per-unit
    counts of --match-kept, which override --stop)."""
    values = {field: getattr(args, flag) for field, flag in CONFIG_FLAGS.items()}
    # samples_per_pass: the default of the model's device (args.device)
    return PruneConfig(**{**values, "match_kept": match_kept})


def setup(args: argparse.Namespace, world: distributed.World,
          folder: RunDir | None = None) -> Job:
    """The run folder, data, pretrained model, units, dense measurement and stop rule.

    Rank 0 claims the folder first (the lock, its kind, resume or refuse); every input is read
    before the folder changes, and only then does --overwrite move the old run aside.
    """
    folder = folder or run_dir(args)
    log = RunLog(Path(args.output_dir), world.is_main, not args.no_progress)
    saved = read_state(distributed.on_main(lambda: folder.claim(args.resume, args.overwrite)),
                       args)
    # the one reader of pruned checkpoints, before any data: another architecture's fails here
    match = (models.read_pruned(args.match_kept, "--match-kept", arch=args.arch)
             if args.match_kept else None)
    check_pretrained(args)
    start = time.time()
    seed_everything(args.seed)
    train_set, num_classes, image_size, eval_batches = load_data(args)
    model = models.build(args.arch, args.width, num_classes, args.layout)
    log.say(load_pretrained(model, args.arch, args.pretrained, layout=args.layout)
            if args.pretrained else
            "no --pretrained given: pruning a randomly initialized network (a smoke test only)")
    model.to(args.device).eval()
    units = models.prunable_units(args.arch, model, args.units)
    dense = loss_and_top1(model, eval_batches)
    require_finite(dense[0], "the dense network's loss on the evaluation subset")
    log.say(f"dense: loss {dense[0]:.4f}, top-1 {100 * dense[1]:.2f}% on "
            f"{sum(len(y) for _, y in eval_batches)} training images; {len(units)} units, "
            f"{sum(u.size for u in units)} channels")
    drawn = 0
    if saved is not None:
        model.load_state_dict(saved.state_dict)
        drawn = saved.state["batches_drawn"]
        log.say(f"resuming after {len(saved.state['completed'])} of {len(units)} units")
    loader = data.make_infinite_loader(train_set, args.batch_size, seed=args.seed,
                                       start_batch=drawn, workers=args.workers,
                                       pin_memory=args.device.type == "cuda")
    # the stop rules' measurement reuses each unit's block inputs on the subset (fast runs);
    # under torchrun each rank measures its share of the subset
    splits = models.splitter(args.arch, model) if args.evaluator == "fast" else None
    measure = (ShardedMeasure(model, eval_batches, splits) if world.distributed else
               SubsetMeasure(model, eval_batches, splits))
    config = prune_config(args, None if match is None else
                          matched_kept(match.cfg["units"], args.match_kept, units))
    stop = build_stop(config, dense[0], measure, world.distributed)
    distributed.barrier()  # every rank has read its inputs: the folder may change now
    distributed.on_main(folder.begin)
    return Job(args, world, log, train_set, num_classes, image_size, eval_batches, model, units,
               Masks(model, units), dense, saved, BatchStream(loader, args.device, drawn),
               measure, stop, start, folder, config, splits)


# ----------------------------------------------------------------------------------------------
# Select
# ----------------------------------------------------------------------------------------------


class SelectionProgress(SelectionLog):
    """The hooks ``prune`` calls: a bar per unit, TensorBoard scalars and the measurement after
    each unit (``SelectionLog``), the optional short fine-tune (``finetune``), and the
    checkpoint that makes --resume possible (``save_state``)."""

    def __init__(self, job: Job, completed: dict[str, torch.Tensor], seconds_before: float):
        super().__init__(job.log, job.dense, job.measure, job.stop.target,
                         step=sum(int(c.sum()) for c in completed.values()))
        self.job = job
        self.seconds_before = seconds_before
        args = job.args
        self.steps_between = math.ceil(args.finetune_between * len(job.train_set)
                                       / args.batch_size)

    def finetune(self, unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        """--finetune-between, after the unit's measurement and before its checkpoint."""
        job = self.job
        if self.steps_between:
            short_finetune(job.model, job.masks, job.batches, self.steps_between,
                           job.args.finetune_lr, seed=unit_seed(job.args.seed, len(counts)))
            sync_model(job.model)  # ranks continue from rank 0's weights, not their own rounding
            job.measure.forget()
            require_finite(job.measure()[0], f"after the short fine-tune following unit "
                           f"{unit.name}, the loss on the evaluation subset")

    def save_state(self, unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        job = self.job

        def write() -> None:  # rank 0; a full disk stops every rank (distributed.on_main)
            save(self.checkpoint("selection", job.model.state_dict(), None, selection_args(
                job.args), {}, {"completed": counts, "batches_drawn": job.batches.drawn,
                                "seconds": self.seconds()}), Path(job.args.output_dir) / STATE_FILE)
            if job.folder is not None:
                job.folder.commit()  # the first checkpoint: the run --overwrite replaced goes

        distributed.on_main(write)

    def seconds(self) -> float:
        return time.time() - self.job.start + self.seconds_before

    def checkpoint(self, kind: str, state_dict: dict, cfg: dict | None, args: dict,
                   metrics: dict, state: dict) -> Checkpoint:
        job = self.job
        return Checkpoint(kind, job.args.arch, job.args.width, job.num_classes, state_dict,
                          job.args.units, cfg, args, metrics, state, job.args.layout)


def prune_job(job: Job, progress: SelectionProgress) -> PruneResult:
    """``pruning.prune.prune`` on the job's pieces, with the progress, fine-tune and checkpoint
    hooks, the torchrun partition and the units a resumed run completed; the fixed-size methods
    take no hooks (their first checkpoint is pruned.pth)."""
    args = job.args
    fixed = args.method in FIXED_SIZE_METHODS
    hooks = {} if fixed else dict(on_step=progress.on_step, after_unit=progress.after_unit,
                                  finetune=progress.finetune, checkpoint=progress.save_state)
    completed = job.saved.state["completed"] if job.saved is not None and not fixed else None
    return prune(job.model, job.units, job.config, job.batches, job.eval_batches, job.splits,
                 masks=job.masks, dense=job.dense, stop=job.stop,
                 distributed=job.world.distributed, completed=completed,
                 on_selected=None if fixed else lambda counts: job.log.close(), **hooks)


# ----------------------------------------------------------------------------------------------
# Slim and report
# ----------------------------------------------------------------------------------------------


def summarize(job: Job, counts: dict, network: nn.Module, kept: dict, verification: dict,
              masked: tuple[float, float], seconds: float) -> dict:
    args, units = job.args, job.units
    slim_loss, slim_top1 = loss_and_top1(network, job.eval_batches)
    require_finite(slim_loss, "the pruned network's loss on the evaluation subset")
    dense_macs, dense_params = macs_and_params(
        models.build(args.arch, args.width, job.num_classes, args.layout), job.image_size)
    macs, params = macs_and_params(network, job.image_size)
    return {
        "arch": args.arch, "width": args.width, "layout": args.layout, "units": args.units,
        "method": args.method,
        "dataset": args.dataset, "num_classes": job.num_classes, "image_size": job.image_size,
        "macs": macs, "params": params, "dense_macs": dense_macs, "dense_params": dense_params,
        "kept": {u.name: f"{int((counts[u.name] > 0).sum())}/{u.size}" for u in units},
        "kept_channels": sum(len(v) for v in kept.values()),
        "total_channels": sum(u.size for u in units),
        "selections": sum(int(c.sum()) for c in counts.values()),
        "loss_dense": job.dense[0], "top1_dense": 100 * job.dense[1],
        "loss_pruned": slim_loss, "top1_pruned": 100 * slim_top1,
        "loss_pruned_masked": masked[0], "top1_pruned_masked": 100 * masked[1],
        **verification,
        "eval_images": sum(len(y) for _, y in job.eval_batches),
        "batches_drawn": job.batches.drawn, "seconds": seconds,
        # dense vs slim forward time on this device, batch 1 and the selection batch; rank 0
        # only (it alone writes the summary): ranks timing at once on one machine would contend
        "latency": measure_latency(job.model, network, job.image_size, (1, args.batch_size),
                                   args.device) if job.world.is_main else None,
        "device": str(args.device), **runtime_record(args.device, args.precision),
        "args": {k: str(v) for k, v in vars(args).items()},
    }


def report(job: Job, progress: SelectionProgress, result: PruneResult) -> dict:
    """Measure the slim network and write pruned.pth, masked.pth and summary.json. A slim
    network that is not the masked one ended the run in ``prune`` (``pruning.verify.SlimMismatch``,
    exit status 1) before anything was written: the selection stays in the state file."""
    counts, network, kept = result.counts, result.model, result.kept
    weights, verification, full_width = result.masks, result.verification, result.full_width
    summary = summarize(job, counts, network, kept, verification, result.masked,
                        progress.seconds())
    out = Path(job.args.output_dir)
    if job.world.is_main:
        cfg = selection_cfg(job.units, counts, kept)
        save(progress.checkpoint("pruned", network.state_dict(), cfg, summary["args"], summary,
                                 {}), out / "pruned.pth")
        save(progress.checkpoint("masked", full_width, cfg, summary["args"], summary,
                                 {"mixing_weights": {k: v.cpu() for k, v in weights.items()}}),
             out / "masked.pth")
        job.log.write_json("summary.json", summary)
        (out / STATE_FILE).unlink(missing_ok=True)
    distributed.barrier()
    job.log.say(
        f"MACs {summary['macs'] / 1e6:.1f}M of {summary['dense_macs'] / 1e6:.1f}M, params "
        f"{summary['params'] / 1e6:.2f}M of {summary['dense_params'] / 1e6:.2f}M; loss "
        f"{summary['loss_pruned']:.4f} (dense {job.dense[0]:.4f}), top-1 "
        f"{summary['top1_pruned']:.2f}% (dense {100 * job.dense[1]:.2f}%); slim vs masked max "
        f"|diff| {verification['max_abs_diff_slim_vs_masked']:.2e} "
        f"({verification['max_rel_diff_slim_vs_masked']:.1e} of max |logit|); candidates "
        f"{job.args.precision}; wrote {out / 'pruned.pth'}")
    return summary


def run(arch: str, argv: list[str] | None = None) -> dict:
    """Setup -> select -> slim -> report; returns the summary (on every rank)."""
    args = parse(arch, argv)
    world = distributed.init(args.device.type)
    folder = run_dir(args)
    try:
        job = setup(args, world, folder)
        previous = job.saved.state["seconds"] if job.saved is not None else 0.0
        progress = SelectionProgress(job, job.saved.state["completed"] if job.saved else {},
                                     previous)
        summary = report(job, progress, prune_job(job, progress))
        if world.is_main:
            folder.commit()  # a fixed-size method's first checkpoint is pruned.pth
        return summary
    finally:
        folder.release()


def main(arch: str) -> None:
    run_command(lambda: run(arch), bad_input=(PretrainedDownloadError,),
                on_nonfinite=f"the selection stops (the completed units stay in {STATE_FILE})",
                on_mismatch=f"nothing was written; the selection stays in {STATE_FILE}: fix the "
                            f"unit declaration and --resume",
                on_interrupt="the completed units are saved; continue with the same command "
                             "and --resume")
