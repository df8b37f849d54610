"""The two-layer experiments: the rates of Ye et al. (2020) and the pre-training sweep of
Wolfe et al. (2023), recorded in one JSON-ready dict.

Why: Ye et al. prove that greedy forward selection from a large mean-field network reaches loss
O(1/n^2) in the subnetwork size n (Theorem 2/3, Figure 2), against O(1/n) for a random subset
and for a network of size n trained by gradient descent; the experiments here measure those
rates as fitted log-log slopes over several seeds, together with backward elimination (their
Section 3.5), the Lemma 1 bound and the distributed selection (Algorithm 3) of Wolfe et al., and
their Figure 1 in miniature. `run` ties everything together: it writes the figures and
`toy_rates.json`, whose `slopes` the tests check against the papers' rates.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from scripts.two_layer.distributed import run_distributed_greedy
from scripts.two_layer.plots import plot_forward_backward, plot_pretraining, plot_rates
from scripts.two_layer.settings import Settings
from scripts.two_layer.theory import (
    SELECT_DTYPE,
    init_neurons,
    lemma1_bound,
    loss,
    neuron_outputs,
    polytope_diameter,
    random_subset_losses,
    sphere,
    teacher_targets,
    train_mean_field,
    two_layer_backward_elimination,
    two_layer_greedy_selection,
)

CURVES = ("greedy", "greedy_untrained", "random", "gd", "gd_long", "backward")
"""The loss curves of a rate experiment, in the order of the JSON's `losses`."""

FITTED = ("greedy", "random", "backward", "gd", "greedy_untrained")
"""Methods with a slope in the JSON. Not gd_long: it interpolates to the float32 floor (~1e-14)
by n = 32, so a slope over [fit_lo, fit_hi] would measure rounding noise."""


def log_grid(lo: int, hi: int, per_octave: int) -> list[int]:
    """Integers log-spaced from lo to hi, `per_octave` per factor of 2."""
    octaves = math.log2(hi / lo)
    points = lo * 2.0 ** (np.arange(round(octaves * per_octave) + 1) / per_octave)
    return sorted({int(round(p)) for p in points})


def fit_slope(ns: list[int], losses: np.ndarray) -> tuple[float, float]:
    """Least-squares fit log L = slope * log n + intercept: slope -1 for O(1/n), -2 for
    O(1/n^2). Returns (slope, intercept)."""
    slope, intercept = np.polyfit(np.log(ns), np.log(losses), 1)
    return float(slope), float(intercept)


def rate_experiment(s: Settings, seed: int) -> dict:
    """Ye et al.'s Figure 2 comparisons, backward elimination (their Section 3.5) and the
    Lemma 1 bound of Wolfe et al., for one seed (new data, teacher and networks)."""
    gen = torch.Generator().manual_seed(seed)
    X = sphere(s.m, s.d, gen)
    y = teacher_targets(X, init_neurons(s.teacher_width, s.d, s.sigma_a, gen))
    A0, b0 = init_neurons(s.N, s.d, s.sigma_a, gen)
    A, b, _ = train_mean_field(A0, b0, X, y, s.steps, s.lr)
    Phi = neuron_outputs(A, b, X)
    y64 = y.to(SELECT_DTYPE)
    dense_loss = float(loss(Phi.mean(0), y64))

    grid = log_grid(1, s.n_max, 4)
    fit_ns = log_grid(s.fit_lo, s.fit_hi, 4)
    every_n = np.arange(1, s.n_max + 1)

    selected, greedy = two_layer_greedy_selection(Phi, y, s.n_max)
    backward = two_layer_backward_elimination(Phi, y)[: s.n_max]
    random = random_subset_losses(Phi, y, grid, s.random_draws, gen)

    gd = {}
    for name, lr in (("gd", s.lr), ("gd_long", s.lr * s.long_lr_factor)):
        An, bn = init_neurons(sum(grid), s.d, s.sigma_a, gen)
        An, bn, _ = train_mean_field(An, bn, X, y, s.steps, lr, sizes=grid)
        outputs = neuron_outputs(An, bn, X)
        ends = np.cumsum(grid)
        gd[name] = np.array(
            [float(loss(outputs[e - n : e].mean(0), y64)) for n, e in zip(grid, ends)]
        )

    Au, bu = init_neurons(s.N_untrained, s.d, s.sigma_a, gen)
    Phi_u = neuron_outputs(Au, bu, X)
    _, greedy_u = two_layer_greedy_selection(Phi_u, y, s.n_max)

    bounds = {}
    for name, P, curve in (("trained", Phi, greedy), ("untrained", Phi_u, greedy_u)):
        D = polytope_diameter(P)
        dense = float(loss(P.mean(0), y64))
        bound = lemma1_bound(every_n, curve[0], D, dense, s.m)
        bounds[name] = {
            "diameter": D,
            "loss_first": float(curve[0]),
            "dense_loss": dense,
            "bound": bound.tolist(),
            "holds_at_every_n": bool(np.all(curve <= bound)),
            "min_bound_over_loss": float(np.min(bound / curve)),
        }

    curves = {
        "greedy": (every_n.tolist(), greedy),
        "backward": (every_n.tolist(), backward),
        "greedy_untrained": (every_n.tolist(), greedy_u),
        "random": (grid, random),
        "gd": (grid, gd["gd"]),
        "gd_long": (grid, gd["gd_long"]),
    }
    fits = {}
    for name in FITTED:
        lookup = dict(zip(*curves[name]))
        fits[name] = fit_slope(fit_ns, np.array([lookup[n] for n in fit_ns]))
    return {
        "seed": seed,
        "dense_loss": dense_loss,
        "distinct_neurons_at_n_max": len(set(selected)),
        "curves": {k: {"n": ns, "loss": v.tolist()} for k, (ns, v) in curves.items()},
        "slopes": {name: slope for name, (slope, _) in fits.items()},
        "intercepts": {name: intercept for name, (_, intercept) in fits.items()},
        "lemma1": bounds,
        "Phi": Phi,
        "y": y,
        "selected": selected,
        "greedy": greedy,
    }


def pretraining_sweep(s: Settings, seed: int) -> dict:
    """Wolfe et al.'s Figure 1 in miniature: prune the large network to `sweep_n` neurons by
    greedy selection after t = 0, every, 2*every, ..., sweep_steps pre-training steps, for
    several dataset sizes, and record the pruned network's training accuracy and loss.

    Labels are binarized, y = sign(teacher(x)) in {-1, +1} (their MNIST labels < 5 vs >= 5),
    accuracy is sign agreement; the loss stays the squared loss of the theory. The smaller
    datasets are prefixes of the largest, and every size starts from the same initial network.
    The "red line" of their Figure 1 is the first t at which the pruned accuracy on a dataset
    reaches the best pruned accuracy found on the largest dataset.
    """
    gen = torch.Generator().manual_seed(seed)
    X_all = sphere(max(s.sweep_sizes), s.d, gen)
    y_all = torch.sign(teacher_targets(X_all, init_neurons(s.teacher_width, s.d, s.sigma_a, gen)))
    A0, b0 = init_neurons(s.sweep_N, s.d, s.sigma_a, gen)
    steps = list(range(0, s.sweep_steps + 1, s.sweep_every))
    acc, lss, dense_acc = [], [], []
    for m in s.sweep_sizes:
        X, y = X_all[:m], y_all[:m]
        _, _, snaps = train_mean_field(A0, b0, X, y, s.sweep_steps, s.sweep_lr, every=s.sweep_every)
        row_acc, row_loss, row_dense = [], [], []
        for A, b in snaps:
            Phi = neuron_outputs(A, b, X)
            selected, losses = two_layer_greedy_selection(Phi, y, s.sweep_n)
            u = Phi[selected].mean(0)
            row_acc.append(float((torch.sign(u) == y.to(SELECT_DTYPE)).double().mean()))
            row_loss.append(float(losses[-1]))
            row_dense.append(float((torch.sign(Phi.mean(0)) == y.to(SELECT_DTYPE)).double().mean()))
        acc.append(row_acc)
        lss.append(row_loss)
        dense_acc.append(row_dense)
    target = max(acc[-1])
    first = [next((t for t, a in zip(steps, row) if a >= target), None) for row in acc]
    return {
        "sizes": list(s.sweep_sizes),
        "steps": steps,
        "pruned_size": s.sweep_n,
        "accuracy": acc,
        "loss": lss,
        "dense_accuracy": dense_acc,
        "target_accuracy": target,
        "first_step_reaching_target": first,
    }


def run(s: Settings, seeds: list[int], out: Path) -> dict:
    """Every experiment, the three figures and `toy_rates.json` in `out`; returns the JSON.

    The rate experiment runs once per seed; the distributed selection is checked against the
    central one and the pre-training sweep runs on the first seed only. The JSON's `seconds`
    are wall-clock timings, so two runs never write the same file (see toy_two_layer.py on
    where the committed copy comes from)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds = {}

    runs = []
    for seed in seeds:
        t = time.perf_counter()
        runs.append(rate_experiment(s, seed))
        seconds[f"rates_seed_{seed}"] = time.perf_counter() - t
        print(f"seed {seed}: slopes " +
              ", ".join(f"{k} {v:.2f}" for k, v in runs[-1]["slopes"].items()), flush=True)

    t = time.perf_counter()
    first = runs[0]
    dist_selected, dist_losses = run_distributed_greedy(first["Phi"], first["y"], s.n_max,
                                                        s.workers)
    distributed = {
        "seed": first["seed"],
        "workers": s.workers,
        "steps": s.n_max,
        "same_indices_as_central": dist_selected == first["selected"],
        "same_losses_as_central": bool(np.array_equal(dist_losses, first["greedy"])),
    }
    seconds["distributed"] = time.perf_counter() - t

    t = time.perf_counter()
    sweep = pretraining_sweep(s, seeds[0])
    seconds["pretraining_sweep"] = time.perf_counter() - t

    slopes = {n: {"mean": float(np.mean([r["slopes"][n] for r in runs])),
                  "std": float(np.std([r["slopes"][n] for r in runs]))} for n in FITTED}
    losses = {}
    for name in CURVES:
        mean = np.array([r["curves"][name]["loss"] for r in runs]).mean(0)
        losses[name] = {str(k): float(v) for k, v in zip(runs[0]["curves"][name]["n"], mean)}
    grid = set(log_grid(1, s.n_max, 4))
    losses_per_seed = {
        name: {str(r["seed"]): {str(n): v for n, v in zip(r["curves"][name]["n"],
                                                          r["curves"][name]["loss"]) if n in grid}
               for r in runs}
        for name in CURVES
    }

    t = time.perf_counter()
    plot_rates(runs, slopes, s, out / "toyrate.png")
    plot_forward_backward(runs, s, out / "forward_vs_backward.png")
    plot_pretraining(sweep, out / "pretraining.png")
    seconds["figures"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    result = {
        "slopes": {n: slopes[n]["mean"] for n in FITTED},
        "slopes_std": {n: slopes[n]["std"] for n in FITTED},
        "slopes_per_seed": {n: [r["slopes"][n] for r in runs] for n in FITTED},
        "seeds": seeds,
        "fit_range": [s.fit_lo, s.fit_hi],
        "fit_ns": log_grid(s.fit_lo, s.fit_hi, 4),
        "losses": losses,
        "losses_per_seed": losses_per_seed,
        "losses_note": "losses: mean over seeds; losses_per_seed: on a grid of 4 sizes per "
                       "octave; n = greedy steps, the size of the multiset S_n",
        "dense_loss": [r["dense_loss"] for r in runs],
        "distinct_neurons_at_n_max": [r["distinct_neurons_at_n_max"] for r in runs],
        "lemma1": {str(r["seed"]): r["lemma1"] for r in runs},
        "distributed": distributed,
        "pretraining": sweep,
        "settings": {**asdict(s),
                     "gd_budget": f"{s.steps} full-batch steps at lr {s.lr} (mean-field time "
                                  f"T = {s.steps * s.lr:g}), the large network's budget; "
                                  f"gd_long: lr {s.lr * s.long_lr_factor:g} "
                                  f"(T = {s.steps * s.lr * s.long_lr_factor:g})"},
        "seconds": seconds,
    }
    (out / "toy_rates.json").write_text(json.dumps(result, indent=1))
    return result
