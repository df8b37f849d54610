"""The command line shared by ``mobile2_prune.py`` and ``resnet34_prune.py``.

It parses and checks the arguments (before any long work), builds the data, the pretrained model
and its units, runs layer-wise greedy forward selection (``pruning.selection``), checkpoints
after every unit, removes the dead channels physically, and writes

    <output-dir>/pruned.pth        slim state_dict + cfg (rebuilt by ``models.load_pruned``)
    <output-dir>/summary.json      MACs, params, kept channels, losses, timing
    <output-dir>/selection_state.pth   progress, for --resume
    <output-dir>/tb/               TensorBoard scalars

Selection runs the network in eval mode (BatchNorm uses its running statistics, as in the
released code) on mini-batches with the evaluation transform, drawn from one persistent loader.
The stop rule's losses are measured on a fixed, class-balanced subset of the training set.
Candidate scoring goes through one ``pruning.evaluators.CandidateEvaluator``; which one is used
changes only the speed, never the selection (up to float rounding; ``--precision bf16`` computes
the fast evaluator's candidate losses under bf16 autocast instead of float32). Everything else
that decides or reports (the plain evaluator, the stop rule's measurement, the first-order
scores, the slim-vs-masked check) runs in IEEE float32 with TF32 off (``pruning.precision``).
``--shortlist K`` does change the selection: each step evaluates exactly only the K best
candidates of the first-order ranking (``pruning.shortlist``).

Under ``torchrun --nproc_per_node=N`` every rank draws the same mini-batches and scores its share
of each step's candidates (``pruning.distributed_select``); all ranks make the same selection,
and only rank 0 shows progress and writes files.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import data
from data.seeding import seed_everything
import models
from models.suffix import splitter
from models.weights import PretrainedDownloadError, load_pretrained
from pruning import distributed
from pruning.arguments import check_output_dir, finite_float
from pruning.distributed import say
from pruning.baselines import FIXED_SIZE_METHODS, backward_elimination, fixed_size_counts
from pruning.checkpoint import load, load_error, pruned_checkpoint, save_atomic, selection_cfg
from pruning.distributed_select import CandidatePartition, RankZeroStop, sync_model
from pruning.evaluators import CandidateEvaluator, PlainEvaluator
from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass
from pruning.flops import macs_and_params
from pruning.masks import Masks
from pruning.measure import SubsetMeasure
from pruning.metrics import loss_and_top1
from pruning.precision import CANDIDATE_PRECISIONS, exact_float32, runtime_record
from pruning.selection import BatchStream, SelectionSettings, greedy_forward_selection
from pruning.shortlist import ShortlistEvaluator
from pruning.slim import float64_logits, slim_model, slim_verification
from pruning.stop import (
    LossGap,
    MatchKept,
    MaxFraction,
    NonFiniteLoss,
    Top1Tolerance,
    require_finite,
    require_finite_parameters,
)

STATE_FILE = "selection_state.pth"
# Arguments that change what is selected (the evaluator only by float rounding, which can flip a
# near tie): a resumed run must use the same values.
SELECTION_ARGS = (
    "arch", "width", "units", "dataset", "data_path", "image_size", "synthetic_images",
    "pretrained", "epsilon", "stop", "top1_tol", "keep_fraction", "batch_size", "eval_images",
    "candidates", "with_replacement", "seed", "finetune_between", "finetune_lr", "method",
    "match_kept", "shortlist", "evaluator", "precision",
)
METHODS = ("greedy", "backward", *FIXED_SIZE_METHODS)


def build_parser(arch: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=f"Prune {arch} by layer-wise greedy forward selection (Ye et al., 2020).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=data.DATASETS, default="imagenet")
    p.add_argument("--data-path", help="dataset root (train/ and val/ folders, or CIFAR batches)")
    p.add_argument("--image-size", type=int,
                   help="input resolution (default: 224 ImageNet, 32 otherwise)")
    p.add_argument("--synthetic-images", type=int, default=2000,
                   help="training images of the synthetic dataset")
    p.add_argument("--pretrained", default="",
                   help="weights to prune: a torchvision enum name (IMAGENET1K_V1) or a file")
    if arch == "mobilenet_v2":
        p.add_argument("--width", type=float, default=1.0, choices=(1.0, 0.75, 0.5))
    p.add_argument("--units", choices=models.UNIT_KINDS[arch], default=models.DEFAULT_UNITS[arch],
                   help="which channel groups to prune")
    p.add_argument("--method", choices=METHODS, default="greedy",
                   help="greedy: forward selection (the paper); backward: greedy backward "
                        "elimination; magnitude / random / uniform: fixed-size baselines that "
                        "need --stop fraction or --match-kept")
    p.add_argument("--match-kept", default=None,
                   help="a pruned.pth whose per-unit kept channel counts this run stops at")
    p.add_argument("--stop", choices=("loss_gap", "top1_tol", "fraction"), default="loss_gap",
                   help="loss_gap: the paper's epsilon rule; top1_tol: the released code's; "
                        "fraction: keep --keep-fraction of every unit")
    p.add_argument("--epsilon", type=finite_float, default=0.05,
                   help="loss_gap: stop a unit once loss - dense loss < epsilon")
    p.add_argument("--top1-tol", type=finite_float, default=0.02,
                   help="top1_tol: stop once top-1 >= (1 - tol) x top-1 at the unit's start")
    p.add_argument("--keep-fraction", type=finite_float, default=1.0,
                   help="fraction: channels kept per unit (with other rules: unused)")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch per greedy step")
    p.add_argument("--eval-images", type=int, default=1024,
                   help="size of the fixed class-balanced subset the stop rule measures")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--candidates", type=int, default=None,
                   help="score a random K-subset of candidates per step (default: all)")
    p.add_argument("--evaluator", choices=("plain", "fast"), default="fast",
                   help="plain: one full forward per candidate (the released code); fast: the "
                        "same losses from a cached prefix, additive updates and batched "
                        "candidates (see --precision)")
    p.add_argument("--precision", choices=tuple(CANDIDATE_PRECISIONS), default="fp32",
                   help="candidate losses of --evaluator fast: IEEE float32 (the plain "
                        "evaluator's picks) or bf16 autocast with channels_last on a GPU")
    p.add_argument("--shortlist", type=int, default=None,
                   help="greedy: evaluate exactly only the K best candidates of the first-order "
                        "(Frank-Wolfe) ranking, which keeps the guarantee; default: all")
    p.add_argument("--with-replacement", action="store_true",
                   help="let a channel be selected again (the paper's two-layer theory); by "
                        "default each channel is selected once, so a unit can always reach the "
                        "dense loss")
    p.add_argument("--finetune-between", type=finite_float, default=0.0,
                   help="epochs of SGD after each unit (the released code used 0.1); 0 = off")
    p.add_argument("--finetune-lr", type=finite_float, default=1e-3,
                   help="learning rate of --finetune-between")
    p.add_argument("--output-dir", default=f"runs/{arch}_prune")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last completed unit; a "
                        "finished run is reported and left as it is")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run (finished or not) in --output-dir")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no data or model, so bad input fails in a second."""
    if not args.epsilon > 0:
        raise ValueError(f"--epsilon must be > 0, got {args.epsilon}")
    for name in ("batch_size", "eval_images", "eval_batch_size", "synthetic_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.finetune_between < 0:
        raise ValueError(f"--finetune-between must be >= 0, got {args.finetune_between}")
    if not args.finetune_lr > 0:
        raise ValueError(f"--finetune-lr must be > 0, got {args.finetune_lr}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --output-dir, --overwrite replaces it: "
                         "give one")
    check_output_dir(Path(args.output_dir))
    if args.image_size is not None and args.image_size < 8:
        raise ValueError(f"--image-size must be >= 8, got {args.image_size}")
    MaxFraction(args.keep_fraction)
    if args.method in FIXED_SIZE_METHODS and args.stop != "fraction" and not args.match_kept:
        raise ValueError(f"--method {args.method} keeps a given number of channels: "
                         "use --stop fraction --keep-fraction F or --match-kept PATH")
    Top1Tolerance(args.top1_tol, measure=None)
    SelectionSettings(candidates=args.candidates)
    if args.shortlist is not None:
        if args.shortlist < 1:
            raise ValueError(f"--shortlist must be >= 1, got {args.shortlist}")
        if args.method != "greedy" or args.evaluator != "fast":
            raise ValueError("--shortlist needs --method greedy and --evaluator fast")
    args.device = distributed.resolve_device(args.device, distributed.world_from_env())
    if args.precision == "bf16" and args.evaluator == "plain":
        raise ValueError("--precision bf16 needs --evaluator fast (the plain evaluator is the "
                         "float32 reference)")


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
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k in SELECTION_ARGS and k not in unused}


class Finished(Exception):
    """--resume found a finished run: nothing to do."""


def load_state(args: argparse.Namespace, out: Path) -> dict | None:
    """The saved progress of an interrupted run, after checking it is the same run.

    A finished run (pruned.pth) or one in progress is never replaced silently: --resume
    continues it (a finished one is only reported: ``Finished``), --overwrite removes it.
    """
    path = out / STATE_FILE
    finished = (out / "pruned.pth").exists()
    if args.overwrite:
        for name in ("pruned.pth", "summary.json", STATE_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tb", ignore_errors=True)
        return None
    if finished and not path.exists():
        if args.resume:
            raise Finished(f"--resume: {out} holds a finished run (pruned.pth); nothing to do")
        raise ValueError(f"--output-dir {out} holds a finished run (pruned.pth); choose another "
                         "--output-dir or pass --overwrite to replace it")
    if not path.exists():
        if args.resume:
            say(f"--resume: no {STATE_FILE} in {out}, starting from the first unit")
        return None
    if not args.resume:
        raise ValueError(f"--output-dir {out} holds a run in progress ({STATE_FILE}); "
                         "pass --resume to continue it, --overwrite to replace it, or choose "
                         "another --output-dir")
    try:
        state = load(path)
        saved = state["args"]
    except Exception as error:  # truncated or foreign file: pickle/zip errors share no base
        raise ValueError(f"--resume: cannot read {path} ({load_error(error)}); pass "
                         "--overwrite to start the run again") from None
    now = selection_args(args)
    changed = [f"--{k.replace('_', '-')} (saved {saved.get(k)!r}, now {now[k]!r})"
               for k in now if k in saved and saved[k] != now[k]]
    changed += [f"--{k.replace('_', '-')} (now {now[k]!r}, not saved)"
                for k in now if k not in saved and k != "precision"]
    if changed:
        raise ValueError("--resume: these arguments differ from the interrupted run: "
                         + ", ".join(changed))
    return state


def read_match_kept(path: str) -> dict:
    """The per-unit cfg of --match-kept's pruned checkpoint, read before any work."""
    try:
        ckpt = load(path)
    except FileNotFoundError:
        raise ValueError(f"--match-kept {path}: no such file") from None
    except Exception as error:  # pickle/zip errors share no base class
        raise ValueError(f"--match-kept {path}: not a checkpoint ({load_error(error)})") from None
    cfg = ckpt.get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("units"), dict):
        raise ValueError(f"--match-kept {path}: not a pruned checkpoint (no cfg of kept "
                         "channels); give a prune run's pruned.pth")
    return cfg["units"]


def matched_kept(cfg: dict, path: str, units) -> dict[str, int]:
    """Per-unit kept channel counts of another pruned checkpoint of the same units."""
    missing = [u.name for u in units if u.name not in cfg or cfg[u.name]["total"] != u.size]
    if missing:
        raise ValueError(f"--match-kept {path}: no matching unit for {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''} (another architecture or --units?)")
    return {u.name: cfg[u.name]["kept"] for u in units}


def build_evaluator(args: argparse.Namespace, model, masks,
                    world: distributed.World) -> CandidateEvaluator:
    """--evaluator, shared across the ranks of a torchrun job, with the --shortlist on top."""
    gpu = args.device.type == "cuda"
    if args.evaluator == "plain":
        evaluator = PlainEvaluator(model, masks)
    else:
        evaluator = FastEvaluator(model, splitter(args.arch, model),
                                  default_samples_per_pass(args.device),
                                  amp=CANDIDATE_PRECISIONS[args.precision],
                                  channels_last=gpu and args.precision == "bf16")
    if world.distributed:
        evaluator = CandidatePartition(evaluator)
    if args.shortlist is not None:
        evaluator = ShortlistEvaluator(evaluator, args.shortlist)
    return evaluator


def short_finetune(model, masks: Masks, batches, steps: int, lr: float, seed: int) -> None:
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


def run(arch: str, argv: list[str] | None = None) -> dict:
    args = build_parser(arch).parse_args(argv)
    args.arch = arch
    args.width = getattr(args, "width", 1.0)
    check_args(args)
    world = distributed.init(args.device.type)
    out = Path(args.output_dir)
    state = load_state(args, out)
    match_cfg = read_match_kept(args.match_kept) if args.match_kept else None
    if args.pretrained:  # refuse weights of another architecture/width before scanning any data
        checked = models.build(arch, args.width)
        load_pretrained(checked, arch, args.pretrained, allow_head_mismatch=True)
        require_finite_parameters(checked, f"--pretrained {args.pretrained}")
    start = time.time()
    seed_everything(args.seed)

    image_size = args.image_size or data.default_image_size(args.dataset)
    synthetic = {"num_images": args.synthetic_images} if args.dataset == "synthetic" else {}
    train_set, num_classes = data.build_dataset(
        args.dataset, args.data_path, "train", image_size=image_size, augment=False, **synthetic
    )
    eval_indices = data.class_balanced_subset(
        data.get_targets(train_set), min(args.eval_images, len(train_set)), seed=args.seed)
    device = args.device
    eval_loader = DataLoader(Subset(train_set, eval_indices), batch_size=args.eval_batch_size,
                             num_workers=args.workers)
    eval_batches = [(x.to(device), y.to(device)) for x, y in eval_loader]

    model = models.build(arch, args.width, num_classes)
    if args.pretrained:
        say(load_pretrained(model, arch, args.pretrained))
    else:
        say("no --pretrained given: pruning a randomly initialized network")
    model.to(device).eval()
    units = models.prunable_units(arch, model, args.units)
    masks = Masks(model, units)
    dense_loss, dense_top1 = loss_and_top1(model, eval_batches)
    require_finite(dense_loss, "the dense network's loss on the evaluation subset")
    say(f"dense: loss {dense_loss:.4f}, top-1 {100 * dense_top1:.2f}% on {len(eval_indices)} "
        f"training images; {len(units)} units, {sum(u.size for u in units)} channels")

    completed, drawn, previous_seconds = {}, 0, 0.0
    if state is not None:
        completed, drawn = state["completed"], state["batches_drawn"]
        previous_seconds = state["seconds"]
        model.load_state_dict(state["model"])
        say(f"resuming after {len(completed)} of {len(units)} units")
    loader = data.make_infinite_loader(train_set, args.batch_size, seed=args.seed,
                                       start_batch=drawn, workers=args.workers,
                                       pin_memory=device.type == "cuda")
    batches = BatchStream(loader, device, drawn)

    # the stop rules' measurement reuses each unit's block inputs on the subset (fast runs)
    measure = SubsetMeasure(model, eval_batches,
                            splitter(arch, model) if args.evaluator == "fast" else None)

    if args.match_kept:
        stop = MatchKept(matched_kept(match_cfg, args.match_kept, units))
    elif args.stop == "loss_gap":
        stop = LossGap(args.epsilon, dense_loss, measure)
    elif args.stop == "top1_tol":
        stop = Top1Tolerance(args.top1_tol, measure)
    else:
        stop = MaxFraction(args.keep_fraction)
    if world.distributed and isinstance(stop, (LossGap, Top1Tolerance)):
        stop = RankZeroStop(stop)  # one verdict for all ranks, whatever their rounding
    settings = SelectionSettings(args.candidates, args.with_replacement, args.seed)
    evaluator = build_evaluator(args, model, masks, world)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb")) if world.is_main else None
    bars: dict[str, tqdm] = {}
    pending = [u for u in units if u.name not in completed]

    def open_bar(position: int) -> None:
        """The next unit's bar, opened when its selection starts so that its rate is right."""
        if writer is not None and not args.no_progress and position < len(pending):
            unit = pending[position]
            bars[unit.name] = tqdm(total=unit.size, desc=unit.name, leave=False)

    global_step = [sum(int(c.sum()) for c in completed.values())]

    def log_step(unit, step, best, batch_loss, eval_loss):
        global_step[0] += 1
        if writer is None:
            return
        writer.add_scalar("select/batch_loss", batch_loss, global_step[0])
        if eval_loss is not None:
            writer.add_scalar("select/eval_loss_gap", eval_loss - dense_loss, global_step[0])
        bar = bars.get(unit.name)
        if bar is not None:
            bar.update(1)
            if eval_loss is not None:
                bar.set_postfix(gap=f"{eval_loss - dense_loss:.4f}")

    steps_between = math.ceil(args.finetune_between * len(train_set) / args.batch_size)

    def after_unit(unit, counts):
        if unit.name in bars:
            bars.pop(unit.name).close()
        kept = int((counts[unit.name] > 0).sum())
        if writer is not None:
            writer.add_scalar("select/kept_fraction", kept / unit.size, len(counts))
        loss, top1 = measure(unit)
        say(f"{unit.name}: kept {kept}/{unit.size}, loss {loss:.4f} "
            f"(dense {dense_loss:.4f}), top-1 {100 * top1:.2f}%")
        if steps_between:
            short_finetune(model, masks, batches, steps_between, args.finetune_lr,
                           seed=args.seed * 1_000_003 + len(counts))
            sync_model(model)  # ranks continue from rank 0's weights, not their own rounding
            measure.forget()
            require_finite(measure()[0], f"after the short fine-tune following unit {unit.name}, "
                           "the loss on the evaluation subset")
        if world.is_main:
            save_atomic({"args": selection_args(args), "completed": counts,
                         "batches_drawn": batches.drawn, "model": model.state_dict(),
                         "seconds": time.time() - start + previous_seconds},
                        out / STATE_FILE)
        open_bar(pending.index(unit) + 1)

    if args.method in FIXED_SIZE_METHODS:
        generator = torch.Generator().manual_seed(args.seed)
        counts = {u.name: fixed_size_counts(args.method, model, u, stop.target(u), generator)
                  for u in units}
        for name, c in counts.items():
            masks.set_counts(name, c)
    else:
        search = greedy_forward_selection if args.method == "greedy" else backward_elimination
        open_bar(0)
        counts = search(units, masks, evaluator, batches, stop, settings, completed, after_unit,
                        log_step)
    if writer is not None:
        writer.close()

    pruned_loss, pruned_top1 = loss_and_top1(model, eval_batches)
    probe = eval_batches[0][0][:64]  # the float64 reference is slow on a CPU at 224 px
    with torch.no_grad(), exact_float32():
        masked_logits = model(probe)
        reference = float64_logits(model, probe)
    weights = {name: w.detach().clone() for name, w in masks.weights.items()}
    masks.remove()
    slim, kept = slim_model(model, units, weights)
    with torch.no_grad(), exact_float32():
        verification = slim_verification(slim(probe), masked_logits, reference)
    max_diff, rel_diff = (verification["max_abs_diff_slim_vs_masked"],
                          verification["max_rel_diff_slim_vs_masked"])
    slim_loss, slim_top1 = loss_and_top1(slim, eval_batches)
    require_finite(slim_loss, "the pruned network's loss on the evaluation subset")
    dense_macs, dense_params = macs_and_params(models.build(arch, args.width, num_classes),
                                               image_size)
    macs, params = macs_and_params(slim, image_size)
    summary = {
        "arch": arch, "width": args.width, "units": args.units, "method": args.method,
        "dataset": args.dataset,
        "num_classes": num_classes, "image_size": image_size,
        "macs": macs, "params": params, "dense_macs": dense_macs, "dense_params": dense_params,
        "kept": {u.name: f"{int((counts[u.name] > 0).sum())}/{u.size}" for u in units},
        "kept_channels": sum(len(v) for v in kept.values()),
        "total_channels": sum(u.size for u in units),
        "selections": sum(int(c.sum()) for c in counts.values()),
        "loss_dense": dense_loss, "top1_dense": 100 * dense_top1,
        "loss_pruned": slim_loss, "top1_pruned": 100 * slim_top1,
        "loss_pruned_masked": pruned_loss, "top1_pruned_masked": 100 * pruned_top1,
        **verification,
        "eval_images": len(eval_indices), "batches_drawn": batches.drawn,
        "seconds": time.time() - start + previous_seconds,
        "device": str(device), **runtime_record(device, args.precision),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if world.is_main:
        cfg = selection_cfg(units, counts, kept)
        save_atomic(pruned_checkpoint(arch, args.width, num_classes, args.units, cfg,
                                      slim.state_dict(), summary["args"], summary),
                    out / "pruned.pth")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        (out / STATE_FILE).unlink(missing_ok=True)
    distributed.barrier()
    say(f"MACs {macs / 1e6:.1f}M of {dense_macs / 1e6:.1f}M, params {params / 1e6:.2f}M of "
        f"{dense_params / 1e6:.2f}M; loss {slim_loss:.4f} (dense {dense_loss:.4f}), "
        f"top-1 {100 * slim_top1:.2f}% (dense {100 * dense_top1:.2f}%); "
        f"slim vs masked max |diff| {max_diff:.2e} ({rel_diff:.1e} of max |logit|); candidates "
        f"{args.precision}; wrote {out / 'pruned.pth'}")
    return summary


def main(arch: str) -> None:
    try:
        run(arch)
    except Finished as done:
        say(str(done))
    except NonFiniteLoss as error:
        sys.exit(f"error: {error}; the selection stops (the completed units stay in "
                 f"{STATE_FILE})")
    except KeyboardInterrupt:
        sys.exit("interrupted: the completed units are saved; continue with the same command "
                 "and --resume")
    except (ValueError, FileNotFoundError, PretrainedDownloadError) as error:
        sys.exit(f"error: {error}")
    finally:
        distributed.cleanup()
