"""Benchmark of the candidate evaluators of greedy forward selection (tracker issue 6).

    python scripts/bench_select.py                 # GPU at 224 px if CUDA is available
    python scripts/bench_select.py --device cpu    # CPU, one thread, 64 px (about 7 minutes)
    python scripts/bench_select.py --quick         # tiny sizes: checks that it runs, times nothing

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchvision_compat  # noqa: E402, F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
from models import splitter  # noqa: E402
from pruning.evaluators import CandidateEvaluator, PlainEvaluator  # noqa: E402
from pruning.fast_evaluators import (  # noqa: E402
    FastEvaluator,
    PrefixCachedEvaluator,
    default_samples_per_pass,
)
from pruning.masks import Masks  # noqa: E402
from pruning.precision import CANDIDATE_PRECISIONS  # noqa: E402
from pruning.selection import SelectionSettings, greedy_forward_selection  # noqa: E402
from pruning.shortlist import ShortlistEvaluator, shortlist  # noqa: E402
from pruning.stop import MaxFraction  # noqa: E402

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
#: The networks of the table, and their early, middle and late units.
TABLE_UNITS = {"mobilenet_v2": ("features.2.hidden", "features.9.hidden", "features.17.hidden"),
               "resnet34": ("layer1.0.inner", "layer3.0.inner", "layer4.2.inner")}
#: The network of the whole-selection estimate and the shortlist fidelity run.
WHOLE = "mobilenet_v2"
SLOW_CANDIDATES = 4  # candidates timed for the one-forward-per-candidate rungs
NUM_CLASSES = 1000
LATE_STEP = 16  # fidelity is also reported for steps that start with at least this many picks
QUICK = {"image_size": 16, "batch_size": 2, "shortlist": 4, "fidelity_fraction": 0.02,
         "fidelity_batch_size": 4, "fidelity_train_steps": 2}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny defaults (16 px, batch 2, K=4, a 2-step-trained fidelity network) "
                        "for checking that the benchmark runs (scripts/gpu_check.py)")
    p.add_argument("--image-size", type=int, help="default: 224 on GPU, 64 on CPU")
    p.add_argument("--batch-size", type=int, help="mini-batch per step (default: 128 GPU, 32 CPU)")
    p.add_argument("--shortlist", type=int, help="K of the shortlist rung (default: 16)")
    p.add_argument("--precision", choices=tuple(CANDIDATE_PRECISIONS), default="fp32",
                   help="candidate losses of the +batched and shortlist rungs, as the prune "
                        "scripts' --precision (bf16 adds channels_last on GPU)")
    p.add_argument("--fidelity-fraction", type=float,
                   help="kept fraction of each unit in the fidelity run (default: 0.3)")
    p.add_argument("--fidelity-batch-size", type=int,
                   help="mini-batch of the fidelity run (default: 128 GPU, 16 CPU)")
    p.add_argument("--fidelity-train-steps", type=int,
                   help="AdamW steps (batch 64) that train the fidelity run's network "
                        "(default: 400)")
    args = p.parse_args()
    args.device = torch.device(args.device)
    gpu = args.device.type == "cuda"
    defaults = QUICK if args.quick else {
        "image_size": 224 if gpu else 64, "batch_size": 128 if gpu else 32, "shortlist": 16,
        "fidelity_fraction": 0.3, "fidelity_batch_size": 128 if gpu else 16,
        "fidelity_train_steps": 400}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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


class Fidelity:
    """Exact greedy that records, at each step, what the shortlist would have picked.

    Per step: |S| before the step, whether the shortlist's pick is the exact argmin, and the
    relative excess of its exact loss over the exact minimum.
    """

    def __init__(self, fast: FastEvaluator, k: int):
        self.fast, self.k = fast, k
        self.steps: list[tuple[int, bool, float]] = []

    def losses(self, unit, counts, candidates, batch):
        exact = self.fast.losses(unit, counts, candidates, batch)
        scores = self.fast.linear_scores(unit, counts, candidates, batch)
        listed = shortlist(scores, self.k)
        pick = int(listed[torch.argmin(exact[listed])])
        best = int(torch.argmin(exact))
        excess = float((exact[pick] - exact[best]) / exact[best])
        self.steps.append((int(counts.sum()), pick == best, excess))
        return exact

    def agreement(self, min_selected: int = 0) -> tuple[int, int]:
        chosen = [same for selected, same, _ in self.steps if selected >= min_selected]
        return sum(chosen), len(chosen)


def fidelity(args: argparse.Namespace) -> dict:
    """Shortlist vs exact greedy on a trained MobileNetV2 (width 0.5, 32 px, synthetic data)."""
    device, size = args.device, 32
    torch.manual_seed(0)
    train = data.SyntheticPatterns(4096, 10, size, "train", seed=0, augment=False, noise=0.5)
    val = data.SyntheticPatterns(512, 10, size, "val", seed=0, noise=0.5)
    x = torch.stack([train[i][0] for i in range(len(train))]).to(device)
    y = torch.tensor(train.targets, device=device)
    held_out = (torch.stack([val[i][0] for i in range(len(val))]).to(device),
                torch.tensor(val.targets, device=device))
    model = models.build(WHOLE, 0.5, 10).to(device)
    steps, generator = args.fidelity_train_steps, torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
        schedule.step()
    model.eval()

    def val_loss() -> tuple[float, float]:
        with torch.no_grad():
            logits = model(held_out[0])
        return (F.cross_entropy(logits, held_out[1]).item(),
                (logits.argmax(1) == held_out[1]).float().mean().item())

    dense = val_loss()
    log(f"fidelity: trained network, val loss {dense[0]:.3f}, top-1 {100 * dense[1]:.1f}%")
    units = models.prunable_units(WHOLE, model)
    masks = Masks(model, units)
    fast = FastEvaluator(model, splitter(WHOLE, model),
                         default_samples_per_pass(device))

    def batches():
        stream = torch.Generator().manual_seed(1)
        while True:
            idx = torch.randint(0, len(x), (args.fidelity_batch_size,), generator=stream)
            yield x[idx.to(device)], y[idx.to(device)]

    def select(evaluator: CandidateEvaluator) -> tuple[tuple[float, float], float]:
        for unit in units:
            masks.set_counts(unit.name, torch.ones(unit.size, dtype=torch.long))
        start = time.perf_counter()
        greedy_forward_selection(units, masks, evaluator, batches(),
                                 MaxFraction(args.fidelity_fraction), SelectionSettings())
        return val_loss(), time.perf_counter() - start

    recorder = Fidelity(fast, args.shortlist)
    exact, exact_s = select(recorder)
    log(f"fidelity: exact selection done in {exact_s:.0f} s")
    short, short_s = select(ShortlistEvaluator(fast, args.shortlist))
    return {"all": recorder.agreement(), "late": recorder.agreement(LATE_STEP),
            "excess": sum(e for *_, e in recorder.steps) / len(recorder.steps),
            "dense": dense, "exact": exact, "short": short, "exact_s": exact_s,
            "short_s": short_s}


def device_name(args: argparse.Namespace) -> str:
    if args.device.type == "cuda":
        batched = "bf16 autocast, channels_last" if args.precision == "bf16" else "IEEE float32"
        return (f"{torch.cuda.get_device_name(args.device)} (+batched and shortlist: {batched}; "
                "plain, +prefix, +additive: IEEE float32)")
    batched = "" if args.precision == "fp32" else " (+batched and shortlist: bf16 autocast)"
    return f"cpu, {torch.get_num_threads()} thread, fp32{batched}"


def main() -> None:
    args = parse_args()
    if args.device.type == "cpu":
        missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
        if missing:
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
        torch.set_num_threads(1)
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
