"""``bench_select.py --whole``: the estimated time of a whole MobileNetV2 selection through the
prune scripts' own call, ``pruning.prune.prune``, beside the plain evaluator's, the shortlist's and
the hybrid's (tracker issue 16). ``whole`` says what is timed and how the estimate is built.
"""

import argparse
import contextlib
import dataclasses
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import data
import models
from bench_common import NUM_CLASSES, SLOW_CANDIDATES, TABLE_UNITS, WHOLE, device_name, log
from data.seeding import seed_everything
from pruning.checkpoint import Checkpoint, save
from pruning.distributed_select import ShardedMeasure
from pruning.masks import Masks
from pruning.metrics import SubsetMeasure, loss_and_top1
from pruning.prune import PruneConfig, build_evaluator, build_stop, prune
from pruning.selection import BatchStream
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import MaxFraction, StopRule
from pruning.units import Splitter, Unit
from scripts.runner import distributed
from scripts.runner.runlog import RunLog, SelectionLog

#: The prune scripts' defaults that a --whole run keeps: --seed and --synthetic-seed, and
#: --eval-batch-size (the stop rule's subset in batches of this many images)
SEED = 0
EVAL_BATCH_SIZE = 256

#: The kept fraction of every hidden unit of MobileNetV2 (width 1.0) whose slim network has about
#: 220M MACs at 224 px (ptflops, pytorch backend; 219.93M with ceil(f N) channels per unit):
#: ``fraction_for_macs(220e6)``, recomputed when ptflops is installed, this otherwise.
MACS_TARGET = 220e6
MACS_FRACTION = 0.6588


def uniform_macs(fraction: float, image_size: int = 224, width: float = 1.0) -> int:
    """MACs (ptflops) of MobileNetV2 keeping ceil(fraction * N) channels of every hidden unit."""
    from pruning.flops import macs_and_params  # ptflops: not installed on every GPU node

    model = models.build(WHOLE, width, NUM_CLASSES).eval()
    units = models.prunable_units(WHOLE, model)
    masks = Masks(model, units)
    for unit in units:
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[: math.ceil(fraction * unit.size)] = 1
        masks.set_counts(unit.name, counts)
    return macs_and_params(masks.slim(model)[0], image_size)[0]


def fraction_for_macs(target: float = MACS_TARGET, image_size: int = 224,
                      tolerance: float = 1e-4) -> float:
    """The largest uniform kept fraction (to ``tolerance``) whose MobileNetV2 has at most
    ``target`` MACs at ``image_size``, by bisection (MACs only grow with the fraction)."""
    low, high = 0.0, 1.0
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if uniform_macs(middle, image_size) <= target else (low, middle)
    return round(low, 4)


def default_keep_fraction() -> tuple[float, str]:
    try:
        fraction = fraction_for_macs()
    except ImportError:
        return MACS_FRACTION, "the stored bisection result: ptflops is not installed"
    return fraction, f"bisection with ptflops: {uniform_macs(fraction) / 1e6:.1f}M MACs at 224 px"


class Stopwatch:
    """Named laps: wall clock with the device synchronized on either side on GPU (or with
    ``wall``), the process's CPU time otherwise."""

    def __init__(self, device: torch.device, wall: bool):
        self.device = device
        self.clock = time.perf_counter if wall or device.type == "cuda" else time.process_time
        self.laps: dict[str, list[float]] = defaultdict(list)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, name: str, fn, *args):
        self.sync()
        start = self.clock()
        result = fn(*args)
        self.sync()
        self.laps[name].append(self.clock() - start)
        return result

    def best(self, name: str, fn, *args, repeats: int = 2) -> float:
        """The fastest of ``repeats`` timings of ``fn(*args)``."""
        for _ in range(repeats):
            self.time(name, fn, *args)
        return min(self.laps[name][-repeats:])


class UnitLaps:
    """The current unit's ``Stopwatch`` and the candidate pools its evaluator was given.

    ``prune`` runs every unit in one call, so the timed pieces look the watch up here at each
    call, and ``StepLimit.start`` (a unit's first event) starts a fresh one.
    """

    def __init__(self, device: torch.device, wall: bool):
        self.device, self.wall = device, wall
        self.new_unit()

    def new_unit(self) -> None:
        self.watch = Stopwatch(self.device, self.wall)
        self.pools: list[int] = []

    def time(self, name: str, fn, *args):
        return self.watch.time(name, fn, *args)


class TimedBatches:
    def __init__(self, batches, laps: UnitLaps):
        self.batches, self.laps = batches, laps

    def __iter__(self):
        return self

    def __next__(self):
        return self.laps.time("data", next, self.batches)


class TimedEvaluator:
    def __init__(self, inner, laps: UnitLaps):
        self.inner, self.laps = inner, laps

    def losses(self, unit, counts, candidates, batch):
        self.laps.pools.append(len(candidates))
        return self.laps.time("evaluator", self.inner.losses, unit, counts, candidates, batch)


class StepLimit(StopRule):
    """The prune script's stop rule, measured after every step as in a real run, but the unit
    ends after ``steps`` steps whatever it says."""

    def __init__(self, inner: StopRule, steps: int, laps: UnitLaps):
        self.inner, self.steps, self.laps, self.taken = inner, steps, laps, 0

    def start(self, unit) -> None:
        self.taken = 0
        self.laps.new_unit()
        self.laps.time("measure", self.inner.start, unit)

    def done(self, unit, counts) -> bool:
        self.laps.time("measure", self.inner.done, unit, counts)
        self.last_loss = self.inner.last_loss
        self.taken += 1
        return self.taken >= self.steps


def whole(args: argparse.Namespace) -> None:
    """Estimated wall time of a whole MobileNetV2 selection through ``mobile2_prune.py``.

    The pieces the prune script builds for a fresh run on the synthetic dataset without
    --pretrained, made here from the library (``setup``: data, model, units, dense measurement,
    ``BatchStream``, the ``PruneConfig`` of ``--evaluator fast --stop loss_gap`` and
    ``--precision`` as given), handed to ``pruning.prune.prune`` as the prune script hands
    them: the evaluator ``build_evaluator`` makes (under torchrun partitioned across the ranks),
    the loss-gap stop rule ``build_stop`` makes, measured after every step, and hooks that do
    the prune script's work (``ScriptHooks``): per step a TensorBoard scalar and the bar (bars
    off), per unit the measurement and the checkpoint. Per unit, ``prune`` runs
    ``--whole-steps`` real steps; then, with |S| = n - 1 random channels installed (n = the
    unit's kept count, ceil(f N)), the evaluator is timed on the last step's pool (N - n + 1
    candidates) and on all N candidates (the last shows that the cost per candidate does not
    depend on |S|: the ``|S| x`` column, per-candidate time at |S| = n - 1 over that of the
    first steps; timed for the early, middle and late unit of the default table, or for every
    ``--unit``, to keep the benchmark short). A unit's estimate is

        n * (data + measure + log) + sum over its n steps of evaluator(pool) + one-off,

    pool = N - s at step s (selection without replacement), evaluator(pool) linear between
    the first steps' and the last step's measurement (so the sum is n times its value at the
    mean pool), one-off = the first step's excess over the next ones (the measurement's cached
    block inputs, warm-up) plus the per-unit hooks. The plain evaluator (the released code's
    way) is timed per candidate on a few candidates before the fast one converts the model,
    with the stop rule's full forward (``SubsetMeasure`` without splits, as the prune script
    measures with ``--evaluator plain``): n * (data + full measure + log) + t_candidate *
    sum(pool). The shortlist (``--shortlist`` K) is timed once per unit at |S| = n - 1 (a
    linear-score backward and K candidates); the hybrid (``--exact-steps`` E) takes the exact
    evaluator's time for its first min(n, E) steps. ``prune`` ends as it always does, slimming
    the network and checking it against the masked one (untimed).

    Timings: wall clock with the GPU synchronized around each part on CUDA; on CPU the
    process's CPU time (one thread, ``--workers 0`` by default so that loading is counted),
    or the wall clock with ``--wall-clock`` (the default under torchrun).
    """
    world = distributed.world_from_env()
    started = time.perf_counter()
    if args.keep_fraction is not None:
        fraction, how = args.keep_fraction, "given"
    elif args.quick:
        fraction, how = MACS_FRACTION, "the stored bisection result (--quick)"
    else:
        fraction, how = default_keep_fraction()
    wall = args.wall_clock or world.distributed
    watch = Stopwatch(args.device, wall)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        run = setup(args, distributed.init(args.device.type), Path(tmp) / "run")
        units = [u for u in run.units if not args.unit or u.name in args.unit]
        if args.unit and len(units) != len(set(args.unit)):
            raise SystemExit(f"--unit: unknown unit among {args.unit}; units are "
                             f"{[u.name for u in run.units]}")
        rows = whole_rows(args, run, units, fraction, watch)
        distributed.barrier()
    if not world.is_main:
        return
    print_whole(args, rows, fraction, how, wall, time.perf_counter() - started, world.size)


@dataclass
class Setup:
    """What ``prune`` is given, built as the prune script builds it (``setup``)."""

    args: argparse.Namespace
    world: distributed.World
    log: RunLog
    out: Path
    train_set: Dataset
    num_classes: int
    eval_batches: list
    model: nn.Module
    units: list[Unit]
    masks: Masks
    dense: tuple[float, float]
    batches: BatchStream
    measure: SubsetMeasure | ShardedMeasure
    splits: Splitter
    config: PruneConfig
    stop: StopRule


def setup(args: argparse.Namespace, world: distributed.World, out: Path) -> Setup:
    """The prune script's pieces for a fresh run on the synthetic dataset without --pretrained,
    from the library's public functions: the training set with the evaluation transform, the
    stop rule's class-balanced subset, the network and its default units, the dense
    measurement, the batch stream, the config (the script's defaults: ``--evaluator fast``,
    ``--stop loss_gap``, ``--epsilon 0.05``, seed 0) and its stop rule."""
    seed_everything(SEED)
    train_set, num_classes = data.build_dataset(
        "synthetic", None, "train", image_size=args.image_size, augment=False,
        num_images=args.synthetic_images, seed=SEED)
    eval_batches = data.evaluation_batches(train_set, args.eval_images, EVAL_BATCH_SIZE,
                                           seed=SEED, device=args.device, workers=args.workers)
    model = models.build(WHOLE, args.width, num_classes, models.default_layout(WHOLE, "synthetic"))
    model.to(args.device).eval()
    units = models.prunable_units(WHOLE, model)
    dense = loss_and_top1(model, eval_batches)
    loader = data.make_infinite_loader(train_set, args.batch_size, seed=SEED,
                                       workers=args.workers,
                                       pin_memory=args.device.type == "cuda")
    splits = models.splitter(WHOLE, model)
    measure = (ShardedMeasure(model, eval_batches, splits) if world.distributed else
               SubsetMeasure(model, eval_batches, splits))
    config = PruneConfig(evaluator="fast", precision=args.precision, seed=SEED)
    stop = build_stop(config, dense[0], measure, world.distributed)
    return Setup(args, world, RunLog(out, world.is_main, progress=False), out, train_set,
                 num_classes, eval_batches, model, units, Masks(model, units), dense,
                 BatchStream(loader, args.device), measure, splits, config, stop)


class ScriptHooks(SelectionLog):
    """The hooks the prune script gives ``prune``, doing the same work, so that the ``log``
    and per-unit parts cost here what they cost there: ``SelectionLog``'s per-step scalars and
    bar (off, as with --no-progress) and per-unit measurement and line, both the prune script's
    own class, and the checkpoint a --resume reads (``save_state``)."""

    def __init__(self, run: Setup):
        super().__init__(run.log, run.dense, run.measure, run.stop.target)
        self.run, self.start = run, time.time()

    def save_state(self, unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        run = self.run
        state = {"completed": counts, "batches_drawn": run.batches.drawn,
                 "seconds": time.time() - self.start}
        distributed.on_main(lambda: save(Checkpoint(
            "selection", WHOLE, run.args.width, run.num_classes, run.model.state_dict(),
            models.get(WHOLE).default_units, None, dataclasses.asdict(run.config), {}, state,
            models.default_layout(WHOLE, "synthetic")), run.out / "selection_state.pth"))


def whole_rows(args, run: Setup, units: list[Unit], fraction: float,
               watch: Stopwatch) -> list[dict]:
    """Per unit: its size, kept count, measured parts and the three estimates (``whole``)."""
    world = run.world
    batch = next(run.batches)
    # --- the plain evaluator and the full measurement, before the fast evaluator's conversion
    plain = build_evaluator(dataclasses.replace(run.config, evaluator="plain", precision="fp32"),
                            run.model, run.masks, None, world.distributed)
    full_measure = SubsetMeasure(run.model, run.eval_batches)
    plain_times = {}
    few = torch.arange(SLOW_CANDIDATES * world.size)
    plain.losses(units[0], torch.zeros(units[0].size, dtype=torch.long), few[:world.size],
                 batch)  # warm-up
    for unit in units:
        zero = torch.zeros(unit.size, dtype=torch.long)
        per_candidate = watch.best("plain", plain.losses, unit, zero, few, batch) / len(few)
        plain_times[unit.name] = (per_candidate, watch.best("full measure", full_measure, unit))
        run.masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
    # --- prune() with the prune script's evaluator, stop rule and hooks, a few steps per unit
    return WholeRun(args, run, fraction, watch.clock is time.perf_counter, plain_times,
                    batch).rows(units)


class WholeRun:
    """``prune`` on the script's pieces, its evaluator, data and stop rule timed; each unit's
    row is computed in the unit's last hook, while ``prune`` holds its masks (``unit_done``)."""

    def __init__(self, args, run: Setup, fraction: float, wall: bool, plain_times: dict,
                 batch):
        self.args, self.run, self.plain_times, self.batch = args, run, plain_times, batch
        self.fast = build_evaluator(run.config, run.model, run.masks, run.splits,
                                    run.world.distributed)
        self.shortlisted = ShortlistEvaluator(self.fast, args.shortlist)
        self.laps = UnitLaps(args.device, wall)
        self.hooks = ScriptHooks(run)
        self.target = MaxFraction(fraction)
        self.pick = torch.Generator().manual_seed(2)
        self._rows: list[dict] = []

    def rows(self, units: list[Unit]) -> list[dict]:
        """Prune with ``--whole-steps`` steps per unit of ``units``; the others are installed
        dense and skipped (``prune``'s ``completed``), so every unit keeps its position."""
        run, laps, hooks = self.run, self.laps, self.hooks
        skipped = {u.name: torch.ones(u.size, dtype=torch.long) for u in run.units
                   if u not in units}
        prune(run.model, run.units, run.config, TimedBatches(run.batches, laps),
              run.eval_batches, run.splits, masks=run.masks, dense=run.dense,
              stop=StepLimit(run.stop, self.args.whole_steps, laps),
              evaluator=TimedEvaluator(self.fast, laps), distributed=run.world.distributed,
              completed=skipped, on_step=lambda *step: laps.time("log", hooks.on_step, *step),
              after_unit=lambda unit, counts: laps.time("after unit", hooks.after_unit, unit,
                                                        counts),
              checkpoint=self.unit_done)
        return self._rows

    def unit_done(self, unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        """The checkpoint hook, timed, then the unit's row."""
        self.laps.time("after unit", self.hooks.save_state, unit, counts)
        self._rows.append(self.row(unit, counts))

    def row(self, unit: Unit, counts: dict[str, torch.Tensor]) -> dict:
        args, masks, fast, batch = self.args, self.run.masks, self.fast, self.batch
        laps, pools = self.laps.watch, self.laps.pools
        n, size = self.target.target(unit), unit.size
        late = torch.zeros(size, dtype=torch.long)
        late[torch.randperm(size, generator=self.pick)[: n - 1]] = 1
        masks.set_counts(unit.name, late)
        pool = torch.nonzero(late == 0).flatten()
        e_late = laps.best("late", fast.losses, unit, late, pool, batch)
        e_all = (laps.best("all", fast.losses, unit, late, torch.arange(size), batch, repeats=1)
                 if args.unit or unit.name in TABLE_UNITS[WHOLE] else None)
        e_short = laps.best("shortlist", self.shortlisted.losses, unit, late, pool, batch)
        masks.set_counts(unit.name, counts[unit.name])
        steady = slice(1, None) if args.whole_steps > 1 else slice(None)
        per_step = {name: laps.laps[name] for name in ("data", "evaluator", "measure", "log")}
        # the stop rule's start() is one more "measure" lap: the per-step laps are the last ones
        per_step["measure"] = per_step["measure"][-args.whole_steps:]
        steps_total = [sum(v[i] for v in per_step.values()) for i in range(args.whole_steps)]
        mean = {name: sum(v[steady]) / len(v[steady]) for name, v in per_step.items()}
        early_pool = sum(pools[steady]) / len(pools[steady])
        one_off = (steps_total[0] - sum(mean.values()) + sum(laps.laps["after unit"])
                   + sum(laps.laps["measure"][:-args.whole_steps]))

        def evaluator_at(p: float, e_early=mean["evaluator"], early_pool=early_pool,
                         e_late=e_late, late_pool=len(pool)) -> float:
            if early_pool == late_pool:
                return e_early
            return e_early + (e_late - e_early) * (early_pool - p) / (early_pool - late_pool)

        overhead = mean["data"] + mean["measure"] + mean["log"]
        exact_eval = n * evaluator_at(size - (n - 1) / 2)
        pools_total = n * size - n * (n - 1) / 2
        t_plain, full = self.plain_times[unit.name]
        hybrid = {}
        for e in args.exact_steps:
            m = min(n, e)
            exact_part = m * evaluator_at(size - (m - 1) / 2) if m else 0.0
            hybrid[e] = one_off + n * overhead + exact_part + (n - m) * e_short
        log(f"whole: {unit.name} timed (rank {self.run.world.rank}: per step "
            + ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in mean.items()) + ")")
        return {
            "unit": unit.name, "N": size, "n": n, "pools": pools_total,
            "data": mean["data"], "measure": mean["measure"], "log": mean["log"],
            "e_first": mean["evaluator"], "e_last": e_late, "step": sum(mean.values()),
            "s_effect": None if e_all is None else (e_all / size) / (mean["evaluator"]
                                                                     / early_pool),
            "fast": one_off + n * overhead + exact_eval,
            "fast_no_measure": one_off + n * (mean["data"] + mean["log"]) + exact_eval,
            "eval_only": exact_eval,
            "plain": n * (mean["data"] + full + mean["log"]) + t_plain * pools_total
            + sum(laps.laps["after unit"]),
            "plain_no_measure": n * (mean["data"] + mean["log"]) + t_plain * pools_total
            + sum(laps.laps["after unit"]),
            "short": one_off + n * overhead + n * e_short, "hybrid": hybrid}


def hms(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else (
        f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")


def print_whole(args, rows: list[dict], fraction: float, how: str, wall: bool, took: float,
                processes: int) -> None:
    k = args.shortlist
    clock = "wall clock" if wall else "process CPU time"
    ranks = f", {processes} processes (torchrun)" if processes > 1 else ""
    print(f"Whole MobileNetV2 selection through the prune script's code path: width "
          f"{args.width}, {args.image_size} px, batch {args.batch_size}, every hidden unit keeps "
          f"ceil({fraction:.4f} N) channels ({how}), stop-rule subset {args.eval_images} images, "
          f"{args.whole_steps} steps per unit timed; device: {device_name(args)}{ranks}; "
          f"time: {clock}")
    hybrid_heads = "".join(f"{f'E={e} s':>10}" for e in args.exact_steps)
    print(f"{'unit':<20}{'N':>5}{'n':>5}{'data ms':>9}{'meas ms':>9}{'log ms':>8}"
          f"{'eval first':>11}{'eval last':>10}{'|S| x':>7}{'steps/s':>9}{'exact s':>10}"
          f"{'plain s':>10}"
          f"{f'K={k} s':>10}{hybrid_heads}")
    for r in rows:
        hybrid = "".join(f"{r['hybrid'][e]:>10.1f}" for e in args.exact_steps)
        s_effect = "-" if r["s_effect"] is None else f"{r['s_effect']:.2f}"
        print(f"{r['unit']:<20}{r['N']:>5}{r['n']:>5}{1e3 * r['data']:>9.2f}"
              f"{1e3 * r['measure']:>9.2f}{1e3 * r['log']:>8.2f}{r['e_first']:>11.4f}"
              f"{r['e_last']:>10.4f}{s_effect:>7}{1 / r['step']:>9.2f}{r['fast']:>10.1f}"
              f"{r['plain']:>10.1f}"
              f"{r['short']:>10.1f}{hybrid}")

    def total(key: str) -> float:
        return sum(r[key] for r in rows)

    fast, plain, short = total("fast"), total("plain"), total("short")
    hybrid = ", ".join(f"hybrid E={e} {hms(sum(r['hybrid'][e] for r in rows))} "
                       f"({fast / sum(r['hybrid'][e] for r in rows):.1f}x less than exact)"
                       for e in args.exact_steps)
    print(f"total {len(rows)} units, {sum(r['n'] for r in rows)} steps, "
          f"{total('pools'):.0f} candidate evaluations: exact greedy (fast) {hms(fast)}, plain "
          f"{hms(plain)} ({plain / fast:.1f}x slower), shortlist K={k} {hms(short)} "
          f"({fast / short:.1f}x less than exact){', ' + hybrid if hybrid else ''}; exact "
          f"greedy {total('pools') / fast:.0f} candidates/s, evaluator "
          f"{100 * total('eval_only') / fast:.0f}% of it")
    print(f"without the stop-rule measurement (--stop fraction): exact greedy (fast) "
          f"{hms(total('fast_no_measure'))}, plain {hms(total('plain_no_measure'))}; "
          f"benchmark took {took:.0f} s")
