"""Benchmark of the candidate evaluators of greedy forward selection (tracker issues 6 and 16).

    python scripts/bench_select.py                 # GPU at 224 px if CUDA is available
    python scripts/bench_select.py --device cpu    # CPU, one thread, 64 px (about 7 minutes)
    python scripts/bench_select.py --quick         # tiny sizes: checks that it runs, times nothing
    python scripts/bench_select.py --whole         # a whole selection through the prune script
    python scripts/bench_select.py --quality       # shortlist and hybrid against exact greedy
    torchrun --standalone --nproc_per_node=2 scripts/bench_select.py --whole --device cpu \
        --wall-clock --unit features.9.hidden      # steps/s of one unit with 2 processes

Default mode: the evaluator ladder below. ``--whole`` (the estimated time of a whole 220M-MAC
MobileNetV2 selection through the prune script's own code, beside the plain evaluator's and
the shortlist's) and ``--quality`` (held-out loss of exact greedy, the shortlist and the hybrid
at equal kept counts, over seeds) live in ``bench_whole.py`` and ``bench_shortlist.py``, whose
``whole`` and ``quality`` say what they time and how; both also take
``--quick`` (the test suite's tiny sizes).

Prints one table: for an early, a middle and a late unit of MobileNetV2 and of ResNet34, the
time of one greedy step (all N candidates of the unit) and candidates per second for

    plain        one full forward per candidate (``PlainEvaluator``, the released code's way)
    +prefix      the block's input computed once per step (``PrefixCachedEvaluator``)
    +additive    candidate k as a rank-one update of the consumer output, one tail per candidate
    +batched     candidates stacked along the batch, in ``--precision`` (the prune scripts' flag:
                 IEEE float32, or bf16 autocast with channels_last on GPU)
    shortlist    linear scores of all N candidates, exact losses of the top K only

Step times of plain/+prefix/+additive are the time per candidate (measured on a few
candidates; their cost is exactly linear in the candidate count) times N; +batched is timed on
two full passes and scaled to N (which counts its per-step prefix once per pass: conservative);
the shortlist step is timed whole. Then the fidelity of the shortlist: a MobileNetV2 (width 0.5,
32 px) briefly trained on the synthetic dataset is pruned (all 17 hidden units, a fixed kept
fraction) by exact greedy while recording at every step whether the shortlist would have picked
the same channel; a second selection with the shortlist gives its final loss. The last line is
the speed-up of a whole MobileNetV2 selection (all 17 hidden units) over the plain evaluator,
estimated as sum_u N_u * N_u * t_plain / sum_u N_u * T_u (t_plain: plain time per candidate,
the same for every unit; T_u: measured step time of unit u), i.e. assuming every unit keeps the
same fraction of its channels, so that unit u takes a number of steps proportional to N_u.

On CPU the script runs single-threaded with glibc's allocator told to keep its buffers
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_): it restarts itself with them if they are not set.
CPU timings are the process's CPU time, so that other jobs on a shared machine do not count;
GPU timings are wall clock. The fidelity run's durations are wall clock on both.
"""

import argparse
import os
import sys
import time
from pathlib import Path

for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_common import (  # noqa: E402
    MALLOC_ENV,
    NUM_CLASSES,
    SLOW_CANDIDATES,
    TABLE_UNITS,
    WHOLE,
    device_name,
    log,
)
from bench_shortlist import LATE_STEP, fidelity, quality  # noqa: E402
from bench_whole import MACS_TARGET, whole  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import models  # noqa: E402
from models import splitter  # noqa: E402
from pruning.evaluators import PlainEvaluator  # noqa: E402
from pruning.fast_evaluators import (  # noqa: E402
    FastEvaluator,
    PrefixCachedEvaluator,
    default_samples_per_pass,
)
from scripts.runner.arguments import (  # noqa: E402
    ArgumentParser,
    UsageError,
    check_image_and_batch,
    device,
    nonnegative_int,
    positive_int,
    unit_fraction,
)
from pruning.masks import Masks  # noqa: E402
from pruning.precision import CANDIDATE_PRECISIONS  # noqa: E402
from pruning.shortlist import ShortlistEvaluator  # noqa: E402

QUICK = {"image_size": 16, "batch_size": 2, "shortlist": 4, "fidelity_fraction": 0.02,
         "fidelity_batch_size": 4, "fidelity_train_steps": 2}
WHOLE_DEFAULTS = {  # --whole: (GPU, CPU, --quick)
    "width": (1.0, 0.5, 0.5), "image_size": (224, 32, 16), "batch_size": (128, 32, 2),
    "eval_images": (1024, 256, 8), "synthetic_images": (4096, 1024, 64), "workers": (8, 0, 0),
    "whole_steps": (3, 3, 2)}
QUALITY_QUICK = {"seeds": 1, "exact_steps": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny defaults (16 px, batch 2, K=4, a 2-step-trained fidelity network) "
                        "for checking that the benchmark runs (scripts/gpu_check.py)")
    p.add_argument("--image-size", type=positive_int, help="default: 224 on GPU, 64 on CPU")
    p.add_argument("--batch-size", type=positive_int,
                   help="mini-batch per step (default: 128 GPU, 32 CPU)")
    p.add_argument("--shortlist", type=positive_int, help="K of the shortlist rung (default: 16)")
    p.add_argument("--precision", choices=tuple(CANDIDATE_PRECISIONS), default="fp32",
                   help="candidate losses of the +batched and shortlist rungs, as the prune "
                        "scripts' --precision (bf16 adds channels_last on GPU)")
    p.add_argument("--fidelity-fraction", type=unit_fraction,
                   help="kept fraction of each unit in the fidelity run (default: 0.3)")
    p.add_argument("--fidelity-batch-size", type=positive_int,
                   help="mini-batch of the fidelity run (default: 128 GPU, 16 CPU)")
    p.add_argument("--fidelity-train-steps", type=nonnegative_int,
                   help="AdamW steps (batch 64) that train the fidelity run's network "
                        "(default: 400)")
    p.add_argument("--exact-steps", default="16",
                   help="--whole and --quality: comma-separated E of the hybrid shortlist "
                        "(exact scoring for the first E steps of each unit, the top-K after)")
    w = p.add_argument_group("--whole: a whole MobileNetV2 selection through the prune script")
    w.add_argument("--whole", action="store_true",
                   help="time a few steps of every unit on the prune script's own code path "
                        "and estimate a whole selection (see bench_whole.whole)")
    w.add_argument("--width", type=unit_fraction, help="default: 1.0 on GPU, 0.5 on CPU")
    w.add_argument("--keep-fraction", type=unit_fraction,
                   help=f"kept fraction of every unit (default: about {MACS_TARGET / 1e6:.0f}M "
                        "MACs at 224 px, by bisection with ptflops)")
    w.add_argument("--whole-steps", type=positive_int,
                   help="greedy steps timed per unit (default: 3)")
    w.add_argument("--eval-images", type=positive_int,
                   help="the stop rule's subset (default: 1024 GPU, 256 CPU)")
    w.add_argument("--synthetic-images", type=positive_int, help="default: 4096 GPU, 1024 CPU")
    w.add_argument("--workers", type=nonnegative_int,
                   help="loader workers (default: 8 GPU, 0 CPU)")
    w.add_argument("--unit", action="append",
                   help="time only this unit (repeatable; the total then covers these only)")
    w.add_argument("--wall-clock", action="store_true",
                   help="time by the wall clock on CPU too (the default under torchrun, where "
                        "processes work in parallel)")
    q = p.add_argument_group("--quality: shortlist and hybrid against exact greedy")
    q.add_argument("--quality", action="store_true",
                   help="held-out loss and top-1 of exact greedy, the shortlist and the hybrid "
                        "at equal kept counts, per seed (see bench_shortlist.quality)")
    q.add_argument("--seeds", type=positive_int, default=3,
                   help="networks (and batch streams) compared")
    q.add_argument("--variants", default="exact,shortlist,hybrid",
                   help="comma-separated: exact (always), shortlist, hybrid, exact-other (exact "
                        "greedy on another batch stream: the noise floor)")
    args = p.parse_args(argv)
    gpu = args.device.type == "cuda"
    try:
        args.exact_steps = [nonnegative_int(e) for e in
                            (QUALITY_QUICK["exact_steps"] if args.quick and args.exact_steps == "16"
                             else args.exact_steps).split(",") if e]
    except argparse.ArgumentTypeError as error:
        p.error(f"argument --exact-steps: {error}")
    if args.quick and args.quality:
        args.seeds = QUALITY_QUICK["seeds"]
    if args.whole:
        column = 2 if args.quick else 0 if gpu else 1
        for name, values in WHOLE_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, values[column])
    defaults = QUICK if args.quick else {
        "image_size": 224 if gpu else 64, "batch_size": 128 if gpu else 32, "shortlist": 16,
        "fidelity_fraction": 0.3, "fidelity_batch_size": 128 if gpu else 16,
        "fidelity_train_steps": 400}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.width is not None and args.width not in models.get(WHOLE).widths:
        p.error(f"argument --width: {models.get(WHOLE).title} has the widths "
                f"{models.get(WHOLE).widths}, got {args.width}")
    try:  # the networks it times, before any is built
        for arch in (WHOLE,) if args.whole or args.quality else TABLE_UNITS:
            check_image_and_batch(arch, "imagenet", args.width or 1.0, args.image_size,
                                  {"--batch-size": args.batch_size}, args.device, training=False,
                                  size_given=True)
    except UsageError as error:
        p.error(str(error))
    return args


def seconds(fn, device: torch.device) -> float:
    """Run time of ``fn``: wall clock on GPU (the evaluators return CPU tensors, so the GPU has
    finished), this process's CPU time on CPU, where other processes' load would otherwise be
    counted as ours (one thread, so CPU time is the compute time)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    fn()
    return clock() - start


class Rig:
    """One randomly initialized network (speed does not depend on the weights) and its evaluators.

    The batched rung gets its own copy for bf16 on GPU, because channels_last converts the model.
    """

    def __init__(self, arch: str, args: argparse.Namespace):
        self.arch, self.args = arch, args
        channels_last = args.device.type == "cuda" and args.precision == "bf16"
        self.model = models.build(arch, 1.0, NUM_CLASSES).to(args.device).eval()
        self.units = models.prunable_units(arch, self.model)
        self.masks = Masks(self.model, self.units)
        self.splits = splits = splitter(arch, self.model)
        fast_model = self.model
        if channels_last:
            fast_model = models.build(arch, 1.0, NUM_CLASSES).to(args.device).eval()
            fast_model.load_state_dict(self.model.state_dict())
            Masks(fast_model, self.units)  # dense, like the reference model's masks
        per_pass = default_samples_per_pass(args.device)
        self.per_pass = max(1, per_pass // args.batch_size)
        batched = FastEvaluator(fast_model, splitter(arch, fast_model), per_pass,
                                amp=CANDIDATE_PRECISIONS[args.precision],
                                channels_last=channels_last)
        self.rungs = {
            "plain": PlainEvaluator(self.model, self.masks),
            "+prefix": PrefixCachedEvaluator(self.model, self.masks, splits),
            "+additive": FastEvaluator(self.model, splits, 1),
            "+batched": batched,
            f"shortlist K={args.shortlist}": ShortlistEvaluator(batched, args.shortlist),
        }
        generator = torch.Generator().manual_seed(0)
        self.batch = (torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                                  generator=generator).to(args.device),
                      torch.randint(0, NUM_CLASSES, (args.batch_size,),
                                    generator=generator).to(args.device))

    @torch.no_grad()
    def flop_bound(self, unit) -> float:
        """FLOPs of a full forward over FLOPs of the unit's tail: the most that evaluating each
        candidate with its own tail forward can save over ``plain`` at equal FLOP rates.

        Counted by ``torch.utils.flop_counter`` (convolutions and matmuls). Batching candidates
        beats it only by running more FLOPs per second (a GPU filled by many candidates).
        """
        x = self.batch[0][:1]
        split = self.splits(unit)
        h, skip = split.hidden(split.prefix(x))
        out = h if split.consumer is None else split.consumer(h)  # only its shape matters
        with FlopCounterMode(display=False) as full:
            self.model(x)
        with FlopCounterMode(display=False) as tail:
            split.tail(skip, out)
        return full.get_total_flops() / tail.get_total_flops()

    def step_time(self, rung: str, unit, repeats: int = 1) -> float:
        """Seconds of one greedy step over all N candidates of ``unit`` (see module docstring),
        the fastest of ``repeats`` timings: other processes only ever add time."""
        evaluator = self.rungs[rung]
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[torch.randperm(unit.size, generator=torch.Generator().manual_seed(1))
               [: unit.size // 4]] = 1  # a selection in progress
        everything = torch.arange(unit.size)
        if rung.startswith("shortlist"):
            measured = everything
        elif rung == "+batched":
            measured = everything[: 2 * self.per_pass]
        else:
            measured = everything[:SLOW_CANDIDATES]
        evaluator.losses(unit, counts, measured[:2], self.batch)  # warm-up
        t = min(seconds(lambda: evaluator.losses(unit, counts, measured, self.batch),
                        self.args.device) for _ in range(repeats))
        return t * unit.size / len(measured)


def speed_rows(args: argparse.Namespace) -> tuple[list[tuple], dict[str, float]]:
    """The table's rows, and per network the plain evaluator's mean time per candidate."""
    rows, plain = [], {}
    for arch, names in TABLE_UNITS.items():
        rig = Rig(arch, args)
        by_name = {u.name: u for u in rig.units}
        plain_per_candidate = []
        for name in names:
            unit = by_name[name]
            times = {}
            for rung in rig.rungs:
                times[rung] = rig.step_time(rung, unit, repeats=2)
                log(f"{arch} {name} {rung}: {times[rung]:.3f} s/step")
            plain_per_candidate.append(times["plain"] / unit.size)
            bound = rig.flop_bound(unit)
            for rung, t in times.items():
                rows.append((arch, name, unit.size, rung, t, unit.size / t, times["plain"] / t,
                             None if rung.startswith("shortlist") else bound))
        plain[arch] = sum(plain_per_candidate) / len(plain_per_candidate)
    return rows, plain


def whole_selection(rig: Rig, plain_per_candidate: float) -> tuple[float, float]:
    """Speed-ups of exact greedy (+batched) and of the shortlist over plain, all 17 units."""
    plain = exact = short = 0.0
    shortlist_rung = next(r for r in rig.rungs if r.startswith("shortlist"))
    for unit in rig.units:
        plain += unit.size * unit.size * plain_per_candidate
        exact += unit.size * rig.step_time("+batched", unit)
        short += unit.size * rig.step_time(shortlist_rung, unit)
        log(f"whole selection: {unit.name} timed")
    return plain / exact, plain / short


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device.type == "cpu":
        missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
        if missing:
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
        torch.set_num_threads(1)
    if args.whole:
        whole(args)
        return
    if args.quality:
        quality(args)
        return
    start = time.perf_counter()
    rows, plain = speed_rows(args)
    # a new rig of the same (randomly initialized) network: speed does not depend on the weights
    exact_speedup, short_speedup = whole_selection(Rig(WHOLE, args), plain[WHOLE])
    fid = fidelity(args)
    k = args.shortlist
    print(f"Greedy step time, {args.image_size} px, batch {args.batch_size}, "
          f"device: {device_name(args)}")
    print(f"{'arch':<13}{'unit':<19}{'N':>5}  {'evaluator':<14}{'step s':>10}{'cand/s':>10}"
          f"{'speed-up':>10}{'FLOP bound':>12}")
    for arch, name, n, rung, t, rate, speedup, bound in rows:
        limit = "" if bound is None else f"{bound:>11.1f}x"
        print(f"{arch:<13}{name:<19}{n:>5}  {rung:<14}{t:>10.3f}{rate:>10.1f}{speedup:>9.1f}x"
              f"{limit}")
    (agree, steps), (late_agree, late_steps) = fid["all"], fid["late"]
    print(f"shortlist fidelity (MobileNetV2 w0.5, 32 px, trained {args.fidelity_train_steps} "
          f"steps on synthetic data; 17 hidden "
          f"units, {args.fidelity_fraction:.0%} kept, batch {args.fidelity_batch_size}): "
          f"top-{k} pick = exact argmin in {agree}/{steps} steps ({agree / steps:.1%}), in "
          f"{late_agree}/{late_steps} steps with |S| >= {LATE_STEP} "
          f"({late_agree / max(1, late_steps):.1%}); mean excess of the pick's loss "
          f"{fid['excess']:.2e} (relative); val loss dense {fid['dense'][0]:.4f}, "
          f"exact greedy {fid['exact'][0]:.4f}, shortlist {fid['short'][0]:.4f} "
          f"(top-1 {100 * fid['dense'][1]:.1f}/{100 * fid['exact'][1]:.1f}/"
          f"{100 * fid['short'][1]:.1f}%); selection {fid['exact_s']:.0f} s exact, "
          f"{fid['short_s']:.0f} s shortlist")
    print(f"whole MobileNetV2 selection (17 hidden units, steps proportional to N): exact greedy "
          f"{exact_speedup:.1f}x, shortlist K={k} {short_speedup:.1f}x faster than plain; "
          f"device {device_name(args)}; benchmark took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
