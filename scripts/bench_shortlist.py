"""The shortlist against exact greedy, judged by what it selects (``bench_select.py``'s
fidelity line and its ``--quality`` mode; tracker issues 6 and 16).

Both prune a briefly trained MobileNetV2 (width 0.5, 32 px, synthetic data; ``trained_network``)
to a fixed kept fraction of every hidden unit through the prune scripts' call,
``pruning.prune.prune`` (``Selector``). The fidelity line runs exact greedy
while recording at every step whether the top-K of the first-order ranking held the exact argmin
(``Fidelity``); ``--quality`` compares the held-out loss and top-1 of exact greedy, the shortlist
and the hybrid (``ShortlistEvaluator(exact_steps=E)``) over seeds (``quality``).
"""

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import data
import models
from bench_common import WHOLE, device_name, log
from models import splitter
from pruning.evaluators import CandidateEvaluator
from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass
from pruning.metrics import loss_and_top1
from pruning.prune import PruneConfig, prune
from pruning.shortlist import shortlist

LATE_STEP = 16  # fidelity is also reported for steps that start with at least this many picks


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


def trained_network(args: argparse.Namespace, seed: int = 0) -> tuple:
    """A MobileNetV2 (width 0.5, 32 px) trained ``--fidelity-train-steps`` AdamW steps on the
    synthetic dataset (fixed: synthetic seed 0), initialized and batched from ``seed``; returns
    the model (eval mode), the training images and labels and the held-out (val) batch."""
    device, size = args.device, 32
    torch.manual_seed(seed)
    train = data.SyntheticPatterns(4096, 10, size, "train", seed=0, augment=False, noise=0.5)
    val = data.SyntheticPatterns(512, 10, size, "val", seed=0, noise=0.5)
    x = torch.stack([train[i][0] for i in range(len(train))]).to(device)
    y = torch.tensor(train.targets, device=device)
    held_out = (torch.stack([val[i][0] for i in range(len(val))]).to(device),
                torch.tensor(val.targets, device=device))
    model = models.build(WHOLE, 0.5, 10).to(device)
    steps, generator = args.fidelity_train_steps, torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
        schedule.step()
    return model.eval(), x, y, held_out


class Selector:
    """Greedy selections of the trained network's 17 hidden units at a fixed kept fraction
    (``prune`` with ``stop="fraction"``, ``evaluator="fast"``), each from the dense network and
    the same batch stream (seeded by ``seed``); ``dense``: the held-out loss and top-1 before.
    """

    def __init__(self, args: argparse.Namespace, model, x, y, held_out, seed: int = 0):
        self.args, self.model, self.x, self.y = args, model, x, y
        self.held_out, self.seed = held_out, seed
        self.units = models.prunable_units(WHOLE, model)
        self.splits = splitter(WHOLE, model)
        self.fast = FastEvaluator(model, self.splits, default_samples_per_pass(args.device))
        self.dense = loss_and_top1(model, [held_out])

    def config(self, shortlist: int | None = None, exact_steps: int = 0) -> PruneConfig:
        """Exact greedy, or the shortlist (top-``shortlist``) after ``exact_steps`` exact steps
        per unit, at the fixed kept fraction."""
        return PruneConfig(stop="fraction", keep_fraction=self.args.fidelity_fraction,
                           evaluator="fast", shortlist=shortlist, exact_steps=exact_steps)

    def batches(self, other: int = 0):
        """The selection's mini-batches; ``other`` > 0: another stream of the same data."""
        stream = torch.Generator().manual_seed(1 + self.seed + 1000 * other)
        device = self.args.device
        while True:
            idx = torch.randint(0, len(self.x), (self.args.fidelity_batch_size,),
                                generator=stream)
            yield self.x[idx.to(device)], self.y[idx.to(device)]

    def __call__(self, config: PruneConfig, evaluator: CandidateEvaluator | None = None,
                 clock=time.perf_counter, other: int = 0) -> tuple[tuple[float, float], float]:
        """(held-out loss, top-1) of the masked network ``prune`` selects under ``config`` from
        batch stream ``other`` (``evaluator``: one that records, in place of the config's), and
        the selection's duration by ``clock``: until ``on_selected``, so not the slimming and
        its check that follow."""
        selected = []
        start = clock()
        result = prune(self.model, self.units, config, self.batches(other), [self.held_out],
                       self.splits, dense=self.dense, evaluator=evaluator,
                       on_selected=lambda counts: selected.append(clock()))
        return result.masked, selected[0] - start


def fidelity(args: argparse.Namespace) -> dict:
    """Shortlist vs exact greedy on a trained MobileNetV2 (width 0.5, 32 px, synthetic data)."""
    select = Selector(args, *trained_network(args))
    dense = select.dense
    log(f"fidelity: trained network, val loss {dense[0]:.3f}, top-1 {100 * dense[1]:.1f}%")
    recorder = Fidelity(select.fast, args.shortlist)
    exact, exact_s = select(select.config(), recorder)
    log(f"fidelity: exact selection done in {exact_s:.0f} s")
    short, short_s = select(select.config(args.shortlist))
    return {"all": recorder.agreement(), "late": recorder.agreement(LATE_STEP),
            "excess": sum(e for *_, e in recorder.steps) / len(recorder.steps),
            "dense": dense, "exact": exact, "short": short, "exact_s": exact_s,
            "short_s": short_s}


# ----------------------------------------------------------------------------------------------


def quality(args: argparse.Namespace) -> None:
    """Exact greedy, the shortlist (top-K) and the hybrid (exact for the first E steps of each
    unit, top-K after) on the same trained network and batch stream, per seed.

    Each seed trains its own MobileNetV2 (width 0.5, 32 px, synthetic data; ``trained_network``)
    and draws its own mini-batches; all variants prune every hidden unit to the same kept count
    (``--fidelity-fraction``), so the held-out losses compare what each selects. Selection time
    is the process's CPU time on CPU (one thread), wall clock on GPU.

    ``--variants`` picks what runs besides exact greedy (always run: the reference):
    ``shortlist``, ``hybrid`` (one per ``--exact-steps`` E) and ``exact-other``, exact greedy
    again from another batch stream of the same data: how far exact greedy's own held-out loss
    moves when only the mini-batches change, the yardstick for the others' differences.
    """
    chosen = set(args.variants.split(","))
    unknown = chosen - {"exact", "exact-other", "shortlist", "hybrid"}
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}")
    variants = [("exact", None, 0)]
    if "exact-other" in chosen:
        variants.append(("exact, other batches", None, 1))
    if "shortlist" in chosen:
        variants.append((f"shortlist K={args.shortlist}", 0, 0))
    if "hybrid" in chosen:
        variants += [(f"hybrid K={args.shortlist} E={e}", e, 0) for e in args.exact_steps]
    clock = time.perf_counter if args.device.type == "cuda" else time.process_time
    results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    dense = []
    for seed in range(args.seeds):
        select = Selector(args, *trained_network(args, seed), seed=seed)
        dense.append(select.dense)
        log(f"quality: seed {seed}: dense val loss {dense[-1][0]:.4f}, "
            f"top-1 {100 * dense[-1][1]:.1f}%")
        for name, exact_steps, other in variants:
            config = (select.config() if exact_steps is None else
                      select.config(args.shortlist, exact_steps))
            (loss, top1), seconds = select(config, clock=clock, other=other)
            results[name].append((loss, top1, seconds))
            log(f"quality: seed {seed}: {name}: val loss {loss:.4f}, top-1 {100 * top1:.1f}%, "
                f"{seconds:.1f} s")
    print(f"Shortlist quality: MobileNetV2 w0.5, 32 px, trained {args.fidelity_train_steps} "
          f"AdamW steps on synthetic data (per seed), 17 hidden units each kept "
          f"{args.fidelity_fraction:.2%} (ceil), batch {args.fidelity_batch_size}, held-out "
          f"512 val images; device: {device_name(args)}; time: "
          f"{'wall clock' if args.device.type == 'cuda' else 'process CPU time'}")
    print(f"{'variant':<24}{'seed':>5}{'val loss':>10}{'top-1 %':>9}{'loss/exact':>12}"
          f"{'seconds':>10}{'time/exact':>12}")
    for seed in range(args.seeds):
        print(f"{'dense':<24}{seed:>5}{dense[seed][0]:>10.4f}{100 * dense[seed][1]:>9.1f}")
        exact_loss, _, exact_s = results["exact"][seed]
        for name, *_ in variants:
            loss, top1, seconds = results[name][seed]
            print(f"{name:<24}{seed:>5}{loss:>10.4f}{100 * top1:>9.1f}"
                  f"{loss / exact_loss:>12.4f}{seconds:>10.1f}{seconds / exact_s:>12.4f}")
    for name, *_ in variants[1:]:
        ratios = [r[0] / e[0] for r, e in zip(results[name], results["exact"], strict=True)]
        times = [r[2] / e[2] for r, e in zip(results[name], results["exact"], strict=True)]
        top1 = [100 * (r[1] - e[1]) for r, e in zip(results[name], results["exact"],
                                                    strict=True)]
        print(f"summary {name}: held-out loss / exact greedy's: mean "
              f"{sum(ratios) / len(ratios):.4f} (min {min(ratios):.4f}, max {max(ratios):.4f}); "
              f"top-1 minus exact greedy's: "
              f"mean {sum(top1) / len(top1):+.1f} points; selection time / exact greedy's: "
              f"mean {sum(times) / len(times):.4f} ({len(times) / sum(times):.1f}x less)")


# ----------------------------------------------------------------------------------------------
