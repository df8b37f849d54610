"""``bench_select.py --whole``: the estimated time of a whole MobileNetV2 selection through the
prune script's own code path, beside the plain evaluator's, the shortlist's and the hybrid's
(tracker issue 16). ``whole`` says what is timed and how the estimate is built.
"""

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import data
import models
from scripts.runner import prune_cli
from bench_common import NUM_CLASSES, SLOW_CANDIDATES, TABLE_UNITS, WHOLE, device_name, log
from data.seeding import seed_everything
from scripts.runner import distributed
from pruning.distributed_select import ShardedMeasure
from pruning.masks import Masks
from pruning.metrics import SubsetMeasure, loss_and_top1
from pruning.prune import build_evaluator, build_stop
from scripts.runner.runlog import RunLog
from pruning.selection import BatchStream, SelectionSettings, select_unit
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import MaxFraction, StopRule

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


class TimedBatches:
    def __init__(self, batches, watch: Stopwatch):
        self.batches, self.watch = batches, watch

    def __iter__(self):
        return self

    def __next__(self):
        return self.watch.time("data", next, self.batches)


class TimedEvaluator:
    def __init__(self, inner, watch: Stopwatch):
        self.inner, self.watch, self.pools = inner, watch, []

    def losses(self, unit, counts, candidates, batch):
        self.pools.append(len(candidates))
        return self.watch.time("evaluator", self.inner.losses, unit, counts, candidates, batch)


class StepLimit(StopRule):
    """The prune script's stop rule, measured after every step as in a real run, but the unit
    ends after ``steps`` steps whatever it says."""

    def __init__(self, inner: StopRule, steps: int, watch: Stopwatch):
        self.inner, self.steps, self.watch, self.taken = inner, steps, watch, 0

    def start(self, unit) -> None:
        self.taken = 0
        self.watch.time("measure", self.inner.start, unit)

    def done(self, unit, counts) -> bool:
        self.watch.time("measure", self.inner.done, unit, counts)
        self.last_loss = self.inner.last_loss
        self.taken += 1
        return self.taken >= self.steps


def prune_argv(args: argparse.Namespace, output_dir: str) -> list[str]:
    """The prune script's command line that --whole times (the paper's loss-gap stop rule, so
    that the evaluation subset is measured after every step)."""
    return ["--dataset", "synthetic", "--width", str(args.width),
            "--image-size", str(args.image_size), "--synthetic-images", str(args.synthetic_images),
            "--batch-size", str(args.batch_size), "--eval-images", str(args.eval_images),
            "--workers", str(args.workers), "--device", str(args.device),
            "--precision", args.precision, "--stop", "loss_gap", "--no-progress",
            "--output-dir", output_dir]


def whole(args: argparse.Namespace) -> None:
    """Estimated wall time of a whole MobileNetV2 selection through ``mobile2_prune.py``.

    The prune script's own objects (``build_job``: its arguments parsed into the library's
    ``PruneConfig``, its data and ``BatchStream``), the evaluator ``pruning.prune.
    build_evaluator`` makes (``--evaluator fast``, ``--precision`` as given; under torchrun
    partitioned across the ranks), the loss-gap stop rule ``pruning.prune.build_stop`` makes,
    measured after every step, the prune script's per-step hook (``SelectionProgress.on_step``:
    TensorBoard scalar, bar; bars off) and its per-unit ones (``after_unit``, ``save_state``:
    measurement, checkpoint). Per unit, ``select_unit`` runs
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
    block inputs, warm-up) plus ``after_unit``. The plain evaluator (the released code's way)
    is timed per candidate on a few candidates before the fast one converts the model, with the
    stop rule's full forward (``SubsetMeasure`` without splits, as the prune script measures
    with ``--evaluator plain``): n * (data + full measure + log) + t_candidate * sum(pool). The
    shortlist (``--shortlist`` K) is timed once per unit at |S| = n - 1 (a linear-score
    backward and K candidates); the hybrid (``--exact-steps`` E) takes the exact evaluator's
    time for its first min(n, E) steps.

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
        pargs = prune_cli.parse(WHOLE, prune_argv(args, str(Path(tmp) / "run")))
        job = build_job(pargs, distributed.init(pargs.device.type))
        units = [u for u in job.units if not args.unit or u.name in args.unit]
        if args.unit and len(units) != len(set(args.unit)):
            raise SystemExit(f"--unit: unknown unit among {args.unit}; units are "
                             f"{[u.name for u in job.units]}")
        rows = whole_rows(args, job, units, fraction, watch)
        distributed.barrier()
    if not world.is_main:
        return
    print_whole(args, rows, fraction, how, wall, time.perf_counter() - started, world.size)


def build_job(args: argparse.Namespace, world: distributed.World) -> prune_cli.Job:
    """What the prune script sets up for a fresh run without --pretrained (no run folder):
    data, model, units, dense measurement, ``PruneConfig``, stop rule and the batch stream."""
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    train_set, num_classes, image_size, eval_batches = prune_cli.load_data(args)
    model = models.build(args.arch, args.width, num_classes, args.layout).to(args.device).eval()
    units = models.prunable_units(args.arch, model, args.units)
    dense = loss_and_top1(model, eval_batches)
    loader = data.make_infinite_loader(train_set, args.batch_size, seed=args.seed,
                                       workers=args.workers,
                                       pin_memory=args.device.type == "cuda")
    splits = models.splitter(args.arch, model) if args.evaluator == "fast" else None
    measure = (ShardedMeasure(model, eval_batches, splits) if world.distributed else
               SubsetMeasure(model, eval_batches, splits))
    config = prune_cli.prune_config(args)
    stop = build_stop(config, dense[0], measure, world.distributed)
    log_ = RunLog(Path(args.output_dir), world.is_main, not args.no_progress)
    return prune_cli.Job(args, world, log_, train_set, num_classes, image_size, eval_batches,
                         model, units, Masks(model, units), dense, None,
                         BatchStream(loader, args.device), measure, stop, time.time(),
                         config=config)


def evaluator_of(job: prune_cli.Job, evaluator: str):
    """``build_evaluator`` as the prune script calls it, with ``--evaluator`` as given."""
    config = dataclasses.replace(job.config, evaluator=evaluator)
    splits = models.splitter(job.args.arch, job.model) if evaluator == "fast" else None
    return build_evaluator(config, job.model, job.masks, splits, job.world.distributed)


def whole_rows(args, job, units, fraction: float, watch: Stopwatch) -> list[dict]:
    """Per unit: its size, kept count, measured parts and the three estimates (``whole``)."""
    k, world = args.shortlist, job.world
    pick = torch.Generator().manual_seed(2)
    batch = next(job.batches)
    # --- the plain evaluator and the full measurement, before the fast evaluator's conversion
    plain = evaluator_of(job, "plain")
    full_measure = SubsetMeasure(job.model, job.eval_batches)
    plain_times = {}
    few = torch.arange(SLOW_CANDIDATES * world.size)
    plain.losses(units[0], torch.zeros(units[0].size, dtype=torch.long), few[:world.size],
                 batch)  # warm-up
    for unit in units:
        zero = torch.zeros(unit.size, dtype=torch.long)
        per_candidate = watch.best("plain", plain.losses, unit, zero, few, batch) / len(few)
        plain_times[unit.name] = (per_candidate, watch.best("full measure", full_measure, unit))
        job.masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
    # --- the prune script's evaluator, stop rule and callbacks, a few real steps per unit
    fast = evaluator_of(job, "fast")
    shortlisted = ShortlistEvaluator(fast, k)
    progress = prune_cli.SelectionProgress(job, {}, 0.0)
    settings = SelectionSettings(seed=job.config.seed)
    stop = MaxFraction(fraction)
    counts, rows = {}, []
    for index, unit in enumerate(job.units):
        if unit not in units:
            continue
        laps = Stopwatch(args.device, watch.clock is time.perf_counter)
        timed = TimedEvaluator(fast, laps)
        counts[unit.name] = select_unit(
            unit, job.masks, timed, TimedBatches(job.batches, laps),
            StepLimit(job.stop, args.whole_steps, laps), settings, index,
            functools.partial(laps.time, "log", progress.on_step))
        laps.time("after unit", progress.after_unit, unit, counts)
        laps.time("after unit", progress.save_state, unit, counts)
        n, size = stop.target(unit), unit.size
        late = torch.zeros(size, dtype=torch.long)
        late[torch.randperm(size, generator=pick)[: n - 1]] = 1
        job.masks.set_counts(unit.name, late)
        pool = torch.nonzero(late == 0).flatten()
        e_late = laps.best("late", fast.losses, unit, late, pool, batch)
        e_all = (laps.best("all", fast.losses, unit, late, torch.arange(size), batch, repeats=1)
                 if args.unit or unit.name in TABLE_UNITS[WHOLE] else None)
        e_short = laps.best("shortlist", shortlisted.losses, unit, late, pool, batch)
        job.masks.set_counts(unit.name, counts[unit.name])
        steady = slice(1, None) if args.whole_steps > 1 else slice(None)
        per_step = {name: laps.laps[name] for name in ("data", "evaluator", "measure", "log")}
        # the stop rule's start() is one more "measure" lap: the per-step laps are the last ones
        per_step["measure"] = per_step["measure"][-args.whole_steps:]
        steps_total = [sum(v[i] for v in per_step.values()) for i in range(args.whole_steps)]
        mean = {name: sum(v[steady]) / len(v[steady]) for name, v in per_step.items()}
        early_pool = sum(timed.pools[steady]) / len(timed.pools[steady])
        one_off = (steps_total[0] - sum(mean.values()) + sum(laps.laps["after unit"])
                   + sum(laps.laps["measure"][:-args.whole_steps]))

        def evaluator_at(p: float, e_early=mean["evaluator"], early_pool=early_pool,
                         e_late=e_late, late_pool=len(pool)) -> float:
            if early_pool == late_pool:
                return e_early
            return e_early + (e_late - e_early) * (early_pool - p) / (early_pool - late_pool)

        overhead = mean["data"] + mean["measure"] + mean["log"]
        exact_eval = n * evaluator_at(size - (n - 1) / 2)
        pools = n * size - n * (n - 1) / 2
        t_plain, full = plain_times[unit.name]
        hybrid = {}
        for e in args.exact_steps:
            m = min(n, e)
            exact_part = m * evaluator_at(size - (m - 1) / 2) if m else 0.0
            hybrid[e] = one_off + n * overhead + exact_part + (n - m) * e_short
        rows.append({
            "unit": unit.name, "N": size, "n": n, "pools": pools,
            "data": mean["data"], "measure": mean["measure"], "log": mean["log"],
            "e_first": mean["evaluator"], "e_last": e_late, "step": sum(mean.values()),
            "s_effect": None if e_all is None else (e_all / size) / (mean["evaluator"]
                                                                     / early_pool),
            "fast": one_off + n * overhead + exact_eval,
            "fast_no_measure": one_off + n * (mean["data"] + mean["log"]) + exact_eval,
            "eval_only": exact_eval,
            "plain": n * (mean["data"] + full + mean["log"]) + t_plain * pools
            + sum(laps.laps["after unit"]),
            "plain_no_measure": n * (mean["data"] + mean["log"]) + t_plain * pools
            + sum(laps.laps["after unit"]),
            "short": one_off + n * overhead + n * e_short, "hybrid": hybrid})
        log(f"whole: {unit.name} timed (rank {world.rank}: per step "
            + ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in mean.items()) + ")")
    return rows


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
