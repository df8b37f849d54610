"""Gated (squeeze-excitation) against additive units: the fast evaluator's speed-up over the plain
one, and how well the first-order score ranks the candidates.

    python scripts/bench_units.py                      # MobileNetV3-Small, CPU: about 2 CPU minutes
    python scripts/bench_units.py --quick              # tiny sizes: checks that it runs
    python scripts/bench_units.py --arch mobilenet_v2 --out mv2.json

Two parts, one table each (and one JSON file with ``--out``):

1. **Speed.** For one gated and one additive unit (default: the first unit of each kind with more
   than 16 channels, i.e. MobileNetV3-Small's ``features.4.hidden`` (SE) and
   ``features.2.hidden`` (no SE); ``--units a,b`` overrides), the time per candidate of
   ``PlainEvaluator.losses`` (one whole forward per candidate) and ``FastEvaluator.losses``
   (rank-one updates for an additive unit, every candidate re-gated for a gated one) on the same
   ``--speed-candidates`` unselected channels, from the same selection state (a random quarter of
   the unit's channels selected once; every other unit dense), on the same mini-batch. The two
   are timed in alternating rounds (plain first in even rounds, fast first in odd ones), each
   timing the median over ``--rounds``; the ratio plain/fast is of times measured side by side in
   one run. Fast and plain losses must agree to 1e-5 relative, or the script fails (exit 1,
   after writing what it measured).
2. **Ranking quality of the first-order score.** On the briefly trained network, exact greedy
   (without replacement, the prune scripts' default; every unselected channel a candidate) runs
   ``--rank-steps`` steps of each of several gated and additive units (default: up to 4 of each
   kind with more than 16 channels, spread over the network; ``--rank-units`` overrides), each
   from |S| = 0 with every other unit dense, one fresh mini-batch per step. At every step it
   computes the exact losses of all candidates (``FastEvaluator.losses``) and their linear
   scores (``FastEvaluator.linear_scores``, the shortlist's ranking) and records the Spearman rank
   correlation of the two, the rank of the exact best candidate in the linear ranking (1: the
   Frank-Wolfe vertex is the exact best), whether that rank is <= K (K = 4, 8, 16: the shortlist
   ``pruning.shortlist`` of size K would have picked what exact greedy picks), and the excess of
   the Frank-Wolfe vertex's exact loss over the exact minimum (in nats; the JSON also has it
   relative, which a minimum near 0 inflates). The selection then advances by the exact argmin.
   Per unit and per kind the table gives the means over steps, and per kind the mean Spearman at
   each step (the first-order ranking is poorest at small |S|, ``pruning.shortlist``).

The network: ``--arch`` (default MobileNetV3-Small) at width 1.0 for MobileNetV3-Small, else the
family's smallest width (``--width``), 10 classes, the ImageNet layout at 64 px (``--layout``,
``--image-size``): MobileNetV3-Small's last stage is then 2x2, so every SE block pools a real map;
its CIFAR layout at 32 px ends at 4x4 but costs 2.5x more per forward on this CPU. It is trained
``--train-steps`` AdamW steps (batch 64, one-cycle learning rate 3e-3, seeded) on the synthetic
dataset (``data.SyntheticPatterns``, 2048 training images, noise 1.3), and its BatchNorm running
statistics are then recomputed over the training images: MobileNetV3's BatchNorm momentum 0.01
leaves them mostly at their initial values after a few hundred steps (measured: 10% held-out top-1
in eval mode before, 94% after). The speed part uses the same network (speed does not depend on
the weights; the agreement check is more telling on a trained one).

On CPU the script runs single-threaded with glibc's allocator told to keep its buffers
(``bench_common.MALLOC_ENV``; it restarts itself with them when run as a script). Times are the
process's CPU time on CPU, wall clock on GPU. Everything runs in IEEE float32 (TF32 off).
"""

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_common import MALLOC_ENV, log  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
from models import splitter  # noqa: E402
from scripts.runner.arguments import (  # noqa: E402
    ArgumentParser,
    UsageError,
    check_image_and_batch,
    device,
    nonnegative_int,
    positive_int,
)
from pruning.evaluators import PlainEvaluator  # noqa: E402
from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass  # noqa: E402
from pruning.masks import Masks  # noqa: E402
from scripts.runner.machine import device_name  # noqa: E402
from pruning.shortlist import shortlist  # noqa: E402
from pruning.units import Unit  # noqa: E402

TOP_K = (4, 8, 16)
TOLERANCE = 1e-5  # fast vs plain losses, relative
KINDS = ("gated", "additive")
PER_KIND = 4  # default ranking units per kind
NUM_CLASSES = 10
TRAIN_BATCH = 64
VAL_IMAGES = 512
#: Families whose default width is not their smallest one.
DEFAULT_WIDTH = {"mobilenet_v3_small": 1.0}
QUICK = {"train_steps": 3, "train_images": 128, "batch_size": 8, "speed_candidates": 4,
         "rounds": 2, "rank_steps": 2, "rank_candidates": 6, "per_kind": 1}
DEFAULTS = {"train_steps": 300, "train_images": 2048, "batch_size": 32, "speed_candidates": 16,
            "rounds": 3, "rank_steps": 8, "rank_candidates": None, "per_kind": PER_KIND}


def kind_of(unit: Unit) -> str:
    return "additive" if unit.additive else "gated"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="mobilenet_v3_small", choices=models.names())
    p.add_argument("--width", type=float,
                   help="default: 1.0 for MobileNetV3-Small, else the family's smallest width")
    p.add_argument("--layout", default=models.DEFAULT_LAYOUT)
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (a few candidates, 2 steps, a 3-step-trained network) for "
                        "checking that the benchmark runs")
    p.add_argument("--batch-size", type=positive_int,
                   help="mini-batch of the candidate losses (default: 32)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="the network's initialization and training batches")
    p.add_argument("--train-steps", type=nonnegative_int, help="AdamW steps (default: 300)")
    p.add_argument("--train-images", type=positive_int,
                   help="synthetic training images (default: 2048)")
    p.add_argument("--noise", type=float, default=1.3, help="SyntheticPatterns' noise")
    p.add_argument("--units", help="comma-separated units of the speed part (default: the first "
                                   "unit of each kind with more than 16 channels)")
    p.add_argument("--speed-candidates", type=positive_int,
                   help="candidates timed per unit (default: 16)")
    p.add_argument("--rounds", type=positive_int, help="alternating timing rounds (default: 3)")
    p.add_argument("--rank-units", help="comma-separated units of the ranking part (default: up "
                                        f"to {PER_KIND} of each kind with more than 16 channels)")
    p.add_argument("--rank-steps", type=positive_int,
                   help="exact greedy steps per unit (default: 8)")
    p.add_argument("--rank-candidates", type=positive_int,
                   help="a random subset of this many candidates per step (default: all)")
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    family = models.get(args.arch)
    if family.split is None:
        p.error(f"--arch {args.arch}: {family.title} declares no fast-evaluator split")
    if args.width is None:
        args.width = DEFAULT_WIDTH.get(args.arch, min(family.widths))
    try:
        family.check_width(args.width)
        family.check_layout(args.layout)
        check_image_and_batch(args.arch, args.layout, args.width, args.image_size,
                              {"--batch-size": max(args.batch_size, TRAIN_BATCH)}, args.device,
                              training=True)
    except (UsageError, ValueError) as error:
        p.error(str(error))
    with torch.device("meta"):
        names = {u.name: u for u in models.prunable_units(
            args.arch, models.build(args.arch, args.width, NUM_CLASSES, args.layout))}
    for flag in ("units", "rank_units"):
        chosen = getattr(args, flag)
        if chosen is not None:
            listed = [n for n in chosen.split(",") if n]
            unknown = [n for n in listed if n not in names]
            if unknown or not listed:
                p.error(f"--{flag.replace('_', '-')}: unknown units {unknown}; {family.title} "
                        f"has {list(names)}")
            setattr(args, flag, listed)
    return args


def spread(units: list[Unit], count: int) -> list[Unit]:
    """Up to ``count`` of ``units``, evenly spaced from the first to the last."""
    if len(units) <= count:
        return list(units)
    if count == 1:
        return units[:1]
    return [units[round(i * (len(units) - 1) / (count - 1))] for i in range(count)]


def default_units(units: list[Unit], per_kind: int) -> list[Unit]:
    """Per kind, up to ``per_kind`` units with more channels than the largest K (a unit of at
    most K channels has every candidate in the top K), spread over the network; of a kind
    with none that large, its largest units. Gated units first."""
    chosen = []
    for kind in KINDS:
        of_kind = [u for u in units if kind_of(u) == kind]
        large = [u for u in of_kind if u.size > max(TOP_K)]
        chosen += spread(large or sorted(of_kind, key=lambda u: -u.size), per_kind)
    return chosen


def recompute_batchnorm(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> None:
    """The BatchNorm running statistics as the plain average over the images ``x`` (train-mode
    forwards without gradients; momentum restored after)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            model(x[start:start + chunk])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()


def images(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([dataset[i][0] for i in range(len(dataset))]),
            torch.tensor(dataset.targets))


def trained_network(args: argparse.Namespace) -> tuple:
    """The network trained on the synthetic dataset (module docstring), in eval mode, with its
    training images and labels and its held-out loss and top-1."""
    dev, size = args.device, args.image_size
    torch.manual_seed(args.seed)
    train = data.SyntheticPatterns(args.train_images, NUM_CLASSES, size, "train", seed=0,
                                   augment=False, noise=args.noise)
    val = data.SyntheticPatterns(64 if args.quick else VAL_IMAGES, NUM_CLASSES, size, "val",
                                 seed=0, noise=args.noise)
    x, y = (t.to(dev) for t in images(train))
    xv, yv = (t.to(dev) for t in images(val))
    model = models.build(args.arch, args.width, NUM_CLASSES, args.layout).to(dev)
    steps, generator = args.train_steps, torch.Generator().manual_seed(args.seed)
    batch = min(TRAIN_BATCH, len(x))
    model.train()
    if steps:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=generator).to(dev)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            schedule.step()
    recompute_batchnorm(model, x)
    with torch.no_grad():
        logits = model(xv)
    held_out = {"val_images": len(xv), "val_loss": F.cross_entropy(logits, yv).item(),
                "val_top1": (logits.argmax(1) == yv).float().mean().item()}
    return model, x, y, held_out


def clock(dev: torch.device):
    """This process's CPU time on CPU (one thread: the compute time, without other jobs' load);
    wall clock on GPU (the evaluators return CPU tensors, so the GPU has finished)."""
    return time.perf_counter if dev.type == "cuda" else time.process_time


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-30)).max()) if len(a) else 0.0


def speed(unit: Unit, masks: Masks, plain: PlainEvaluator, fast: FastEvaluator, x, y,
          args: argparse.Namespace, index: int) -> dict:
    """Time per candidate of plain and fast on the same candidates, state and batch
    (module docstring, part 1)."""
    generator = torch.Generator().manual_seed(1000 + index)
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[torch.randperm(unit.size, generator=generator)[: max(1, unit.size // 4)]] = 1
    masks.set_counts(unit.name, counts)
    pool = torch.nonzero(counts == 0).flatten()
    candidates = pool[torch.randperm(len(pool), generator=generator)[: args.speed_candidates]]
    idx = torch.randint(0, len(x), (args.batch_size,), generator=generator).to(x.device)
    batch = (x[idx], y[idx])
    evaluators = {"plain": plain, "fast": fast}
    for evaluator in evaluators.values():  # warm-up
        evaluator.losses(unit, counts, candidates[:2], batch)
    times: dict[str, list[float]] = {"plain": [], "fast": []}
    difference, now = 0.0, clock(args.device)
    for r in range(args.rounds):
        got = {}
        for name in ("plain", "fast") if r % 2 == 0 else ("fast", "plain"):
            start = now()
            got[name] = evaluators[name].losses(unit, counts, candidates, batch)
            times[name].append((now() - start) / len(candidates))
        difference = max(difference, relative_difference(got["fast"], got["plain"]))
    masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
    t_plain, t_fast = statistics.median(times["plain"]), statistics.median(times["fast"])
    return {"unit": unit.name, "kind": kind_of(unit), "size": unit.size,
            "selected": int(counts.sum()), "candidates": len(candidates),
            "plain_s_per_candidate": t_plain, "fast_s_per_candidate": t_fast,
            "ratio": t_plain / t_fast, "rounds_plain_s": times["plain"],
            "rounds_fast_s": times["fast"], "max_rel_diff": difference}


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties given their average rank (as Spearman's rho needs)."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True,
                                      return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    return ((ends - counts.double() + 1 + ends) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of ``a`` and ``b``; NaN when either is constant."""
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / norm if norm > 0 else math.nan


def ranking(unit: Unit, masks: Masks, fast: FastEvaluator, x, y, args: argparse.Namespace,
            index: int) -> dict:
    """Exact greedy on ``unit`` recording how the linear scores rank each step's candidates
    (module docstring, part 2)."""
    generator = torch.Generator().manual_seed(2000 + index)
    counts = torch.zeros(unit.size, dtype=torch.long)
    masks.set_counts(unit.name, counts)
    now, steps = clock(args.device), []
    exact_s = score_s = 0.0
    for step in range(min(args.rank_steps, unit.size)):
        pool = torch.nonzero(counts == 0).flatten()
        if args.rank_candidates is not None and args.rank_candidates < len(pool):
            pool = pool[torch.randperm(len(pool), generator=generator)[: args.rank_candidates]]
        idx = torch.randint(0, len(x), (args.batch_size,), generator=generator).to(x.device)
        batch = (x[idx], y[idx])
        start = now()
        exact = fast.losses(unit, counts, pool, batch)
        middle = now()
        scores = fast.linear_scores(unit, counts, pool, batch)
        exact_s += middle - start
        score_s += now() - middle
        order = shortlist(scores, len(pool))
        best = int(torch.argmin(exact))
        rank = int(torch.nonzero(order == best)[0, 0]) + 1
        vertex = float(exact[order[0]])
        steps.append({"step": step, "selected": int(counts.sum()), "pool": len(pool),
                      "spearman": spearman(scores, exact), "rank": rank,
                      "top": {str(k): rank <= k for k in TOP_K},
                      "fw_excess": vertex - float(exact[best]),
                      "fw_excess_relative": (vertex - float(exact[best])) / float(exact[best]),
                      "best": int(pool[best]), "best_loss": float(exact[best])})
        counts[pool[best]] += 1
        masks.set_counts(unit.name, counts)
    masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
    return {"unit": unit.name, "kind": kind_of(unit), "size": unit.size, "steps": steps,
            "exact_s_per_step": exact_s / len(steps), "score_s_per_step": score_s / len(steps),
            **summary(steps)}


def summary(steps: list[dict]) -> dict:
    """Means over ``steps`` (Spearman over the steps where it is defined)."""
    rhos = [s["spearman"] for s in steps if not math.isnan(s["spearman"])]
    return {"steps_count": len(steps),
            "spearman_mean": sum(rhos) / len(rhos) if rhos else math.nan,
            "top_fraction": {str(k): sum(s["top"][str(k)] for s in steps) / len(steps)
                             for k in TOP_K},
            "mean_rank": sum(s["rank"] for s in steps) / len(steps),
            "mean_pool": sum(s["pool"] for s in steps) / len(steps),
            "fw_excess_mean": sum(s["fw_excess"] for s in steps) / len(steps)}


def spearman_by_step(steps: list[dict]) -> list[float]:
    """Mean Spearman over ``steps`` with the same step index (|S| before the step)."""
    by_step: dict[int, list[float]] = {}
    for s in steps:
        if not math.isnan(s["spearman"]):
            by_step.setdefault(s["step"], []).append(s["spearman"])
    return [sum(v) / len(v) for _, v in sorted(by_step.items())]


def finite_or_none(value):
    """JSON without NaN (which standard JSON lacks): NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def command_line(argv: list[str] | None) -> str:
    env = " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items() if os.environ.get(k) == v)
    python = os.path.relpath(sys.executable) if not os.path.relpath(
        sys.executable).startswith("..") else sys.executable
    script = os.path.relpath(__file__) if argv is not None else sys.argv[0]
    words = shlex.join([python, script, *(sys.argv[1:] if argv is None else argv)])
    return f"{env} {words}" if env else words


def print_tables(result: dict) -> None:
    net, speed_rows, rank = result["network"], result["speed"], result["ranking"]
    print(f"Gated vs additive units: {net['title']} w{result['width']}, {result['layout']} "
          f"layout, {result['image_size']} px, batch {result['batch_size']}")
    print(f"device: {result['device']} ({result['threads']} thread{'s' * (result['threads'] > 1)})"
          f"; precision: {result['precision']}; torch {result['torch']}")
    print(f"command: {result['command']}")
    print(f"network: trained {net['train_steps']} AdamW steps (batch {net['train_batch']}, seed "
          f"{net['seed']}) on SyntheticPatterns ({net['train_images']} images, noise "
          f"{net['noise']}), BatchNorm statistics recomputed; held-out ({net['val_images']} "
          f"images) loss {net['val_loss']:.4f}, top-1 {100 * net['val_top1']:.1f}%")
    print()
    first = speed_rows[0] if speed_rows else {"candidates": 0}
    print(f"Speed: {result['time']} per candidate, median of {result['rounds']} alternating "
          f"rounds, {first['candidates']} unselected candidates from a quarter of the channels "
          f"selected; fast: {result['candidates_per_pass']} candidates per tail pass")
    print(f"{'unit':<20}{'kind':<10}{'N':>5}{'|S|':>5}{'plain ms':>10}{'fast ms':>10}"
          f"{'plain/fast':>12}{'max rel diff':>14}")
    for r in speed_rows:
        print(f"{r['unit']:<20}{r['kind']:<10}{r['size']:>5}{r['selected']:>5}"
              f"{1e3 * r['plain_s_per_candidate']:>10.2f}{1e3 * r['fast_s_per_candidate']:>10.2f}"
              f"{r['ratio']:>11.2f}x{r['max_rel_diff']:>14.2e}")
    agreement = result["agreement"]
    print(f"fast = plain within {agreement['tolerance']:.0e} relative: "
          f"{'yes' if agreement['held'] else 'NO'} (max {agreement['max_rel_diff']:.2e})")
    print()
    pool = ("all unselected channels" if result["rank_candidates"] is None else
            f"{result['rank_candidates']} random unselected channels")
    print(f"Ranking: exact greedy, {result['rank_steps']} steps per unit from |S| = 0 (other units "
          f"dense), candidates: {pool}; score: FastEvaluator.linear_scores; means over steps")
    tops = "".join(f"{'top-' + str(k):>7}" for k in TOP_K)
    print(f"{'unit':<20}{'kind':<10}{'N':>5}{'steps':>6}{'spearman':>10}{tops}{'rank':>7}"
          f"{'FW excess':>11}{'exact s':>9}{'score s':>9}")

    def row(name: str, kind: str, size: str, s: dict, extra: str = "") -> None:
        rho = s["spearman_mean"]
        hits = "".join(f"{s['top_fraction'][str(k)]:>7.2f}" for k in TOP_K)
        print(f"{name:<20}{kind:<10}{size:>5}{s['steps_count']:>6}"
              f"{'nan' if math.isnan(rho) else f'{rho:.3f}':>10}{hits}{s['mean_rank']:>7.1f}"
              f"{s['fw_excess_mean']:>11.3f}{extra}")

    for u in rank["units"]:
        row(u["unit"], u["kind"], str(u["size"]), u,
            f"{u['exact_s_per_step']:>9.3f}{u['score_s_per_step']:>9.3f}")
    for kind, s in rank["kinds"].items():
        row(f"{kind} ({s['units']} units)", "", "", s)
    for kind, s in rank["kinds"].items():
        print(f"{kind} spearman by step (|S| = 0, 1, ...): "
              + " ".join(f"{rho:+.2f}" for rho in s["spearman_by_step"]))
    print(f"(top-K: fraction of steps whose exact best is in the linear top K; rank: its mean "
          f"1-based rank there; FW excess: exact loss of the linear argmin minus the exact "
          f"minimum, in nats; exact s / score s: {result['time']} of one step's exact losses / "
          f"linear scores)")
    print(f"benchmark took {result['wall_s']:.0f} s (wall clock)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cpu":
        missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
        if missing and argv is None:  # run as a script: restart with glibc's buffers kept
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
        torch.set_num_threads(1)
    begin = time.perf_counter()
    command = command_line(argv)
    log(f"bench_units: training {args.arch} for {args.train_steps} steps")
    model, x, y, held_out = trained_network(args)
    log(f"bench_units: held-out loss {held_out['val_loss']:.4f}, "
        f"top-1 {100 * held_out['val_top1']:.1f}%")
    units = models.prunable_units(args.arch, model)
    by_name = {u.name: u for u in units}
    masks = Masks(model, units)
    per_pass = default_samples_per_pass(args.device)
    fast = FastEvaluator(model, splitter(args.arch, model), per_pass)
    plain = PlainEvaluator(model, masks)
    timed = ([by_name[n] for n in args.units] if args.units is not None
             else default_units(units, 1))
    speed_rows = []
    for i, unit in enumerate(timed):
        speed_rows.append(speed(unit, masks, plain, fast, x, y, args, i))
        log(f"bench_units: speed {unit.name}: plain/fast {speed_rows[-1]['ratio']:.2f}x")
    worst = max((r["max_rel_diff"] for r in speed_rows), default=0.0)
    ranked = ([by_name[n] for n in args.rank_units] if args.rank_units is not None
              else default_units(units, args.per_kind))
    unit_rows = []
    for i, unit in enumerate(ranked):
        unit_rows.append(ranking(unit, masks, fast, x, y, args, i))
        log(f"bench_units: ranking {unit.name}: spearman {unit_rows[-1]['spearman_mean']:.3f}")
    kinds = {}
    for kind in KINDS:
        rows = [u for u in unit_rows if u["kind"] == kind]
        if rows:
            kinds[kind] = {"units": len(rows), "unit_names": [u["unit"] for u in rows],
                           **summary([s for u in rows for s in u["steps"]]),
                           "spearman_by_step": spearman_by_step(
                               [s for u in rows for s in u["steps"]])}
    result = {
        "command": command, "device": device_name(args.device), "device_type": args.device.type,
        "threads": torch.get_num_threads(), "precision": "IEEE float32 (TF32 off)",
        "torch": str(torch.__version__),
        "time": "wall clock" if args.device.type == "cuda" else "process CPU time",
        "arch": args.arch, "width": args.width, "layout": args.layout,
        "image_size": args.image_size, "batch_size": args.batch_size, "rounds": args.rounds,
        "candidates_per_pass": max(1, per_pass // args.batch_size),
        "rank_steps": args.rank_steps, "rank_candidates": args.rank_candidates,
        "top_k": list(TOP_K), "quick": args.quick,
        "network": {"title": models.get(args.arch).title, "train_steps": args.train_steps,
                    "train_batch": min(TRAIN_BATCH, args.train_images), "seed": args.seed,
                    "train_images": args.train_images, "noise": args.noise, **held_out},
        "speed": speed_rows,
        "agreement": {"tolerance": TOLERANCE, "max_rel_diff": worst, "held": worst <= TOLERANCE},
        "ranking": {"units": unit_rows, "kinds": kinds},
        "wall_s": time.perf_counter() - begin,
    }
    print_tables(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite_or_none(result), indent=1) + "\n")
    if not result["agreement"]["held"]:
        print(f"bench_units: FAILED: fast and plain losses differ by {worst:.2e} relative "
              f"(> {TOLERANCE:.0e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
