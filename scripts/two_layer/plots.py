"""The figures of the two-layer experiments, drawn from the records of `experiments`.

Why: the rates that Ye et al. (2020) prove are read off a log-log plot (their Figure 2), and
Wolfe et al. (2023) state their pre-training result as a heat map over (pre-training iterations,
dataset size) (their Figure 1); these functions draw the same views of the toy's results.
Figures are built on `matplotlib.figure.Figure` directly, which needs no pyplot backend or
global state, so importing this module changes nothing for other matplotlib users.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scripts.two_layer.settings import Settings

STYLE = {
    "greedy": ("tab:red", "greedy forward selection"),
    "greedy_untrained": ("tab:purple", "greedy, untrained large net"),
    "random": ("tab:gray", "random subset"),
    "gd": ("tab:blue", "GD from scratch"),
    "gd_long": ("tab:cyan", "GD from scratch, 10x time"),
    "backward": ("tab:green", "greedy backward elimination"),
}
"""Colour and legend label of each curve of `experiments.CURVES`."""


def _mean_curve(runs: list[dict], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ns = np.array(runs[0]["curves"][name]["n"])
    values = np.array([r["curves"][name]["loss"] for r in runs])
    return ns, values.mean(0), values


def plot_rates(runs: list[dict], slopes: dict, s: Settings, path: Path) -> None:
    """Ye et al.'s Figure 2 (log-log loss against n, with slope fits) and, beside it,
    Wolfe et al.'s Lemma 1 bound against the measured greedy loss."""
    fig = Figure(figsize=(11, 6))
    ax, bx = fig.subplots(1, 2)
    horizon = {"gd": s.steps * s.lr, "gd_long": s.steps * s.lr * s.long_lr_factor}
    fit_n = np.array([s.fit_lo, s.fit_hi], dtype=float)
    floor = math.inf
    for name in ("random", "gd", "gd_long", "greedy", "greedy_untrained"):
        color, label = STYLE[name]
        ns, mean, values = _mean_curve(runs, name)
        if name in horizon:
            label += f" (T = {horizon[name]:g})"
        if name in slopes:
            label += f": slope {slopes[name]['mean']:.2f}"
            if len(runs) > 1:
                label += f" ± {slopes[name]['std']:.2f}"
            intercept = np.mean([r["intercepts"][name] for r in runs])
            ax.plot(fit_n, np.exp(intercept) * fit_n ** slopes[name]["mean"], color="k",
                    ls="--", lw=1, zorder=3)
            floor = min(floor, values.min())
        else:  # gd_long drops to rounding level; say so instead of squashing the other curves
            label += f": L <= {values[:, ns >= s.fit_lo].max():.0e} for n >= {s.fit_lo}"
        ax.plot(ns, mean, color=color, lw=1.5, label=label)
        if len(runs) > 1:
            ax.fill_between(ns, values.min(0), values.max(0), color=color, alpha=0.15, lw=0)
    ax.axvspan(s.fit_lo, s.fit_hi, color="k", alpha=0.05, lw=0)
    ax.set_ylim(bottom=floor / 5)
    ax.set(xscale="log", yscale="log", xlabel="subnetwork size n", ylabel="training loss L",
           title=f"d={s.d}, m={s.m}, N={s.N} (untrained N={s.N_untrained}), "
                 f"{len(runs)} seed(s)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.14), title_fontsize=8,
              title=f"slope fit (dashed) over n in [{s.fit_lo}, {s.fit_hi}]; "
                    f"GD time T = lr x steps")

    run = runs[0]
    ns = np.array(run["curves"]["greedy"]["n"])
    for name, color in (("trained", "tab:red"), ("untrained", "tab:purple")):
        lemma = run["lemma1"][name]
        curve = "greedy" if name == "trained" else "greedy_untrained"
        bx.plot(ns, run["curves"][curve]["loss"], color=color, label=f"greedy loss ({name})")
        bx.plot(ns, lemma["bound"], color=color, ls="--",
                label=f"Lemma 1 bound ({name}), D={lemma['diameter']:.1f}")
    bx.set(xscale="log", yscale="log", xlabel="greedy steps k",
           title=f"Wolfe et al. Lemma 1, seed {run['seed']}")
    bx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_forward_backward(runs: list[dict], s: Settings, path: Path) -> None:
    """Forward selection against backward elimination on the same trained network (Ye et al.,
    Section 3.5: backward elimination does worse)."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for name in ("greedy", "backward", "random"):
        color, label = STYLE[name]
        ns, mean, values = _mean_curve(runs, name)
        ax.plot(ns, mean, color=color, label=label)
        if len(runs) > 1:
            ax.fill_between(ns, values.min(0), values.max(0), color=color, alpha=0.15, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="subnetwork size n", ylabel="training loss L",
           title=f"forward vs backward, N={s.N}, {len(runs)} seed(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_pretraining(sweep: dict, path: Path) -> None:
    """Wolfe et al.'s Figure 1: pruned training accuracy over (pre-training steps, dataset
    size), with the first step at which each size reaches the largest size's best accuracy."""
    steps, sizes = sweep["steps"], sweep["sizes"]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    panels = (("accuracy", "pruned training accuracy", "viridis", False),
              ("loss", "pruned training loss (log10)", "magma_r", True))
    for ax, (key, title, cmap, log) in zip(axes, panels):
        values = np.array(sweep[key])
        image = ax.imshow(np.log10(values) if log else values, aspect="auto", origin="lower",
                          cmap=cmap, extent=(steps[0] - 0.5 * (steps[1] - steps[0]),
                                             steps[-1] + 0.5 * (steps[1] - steps[0]),
                                             -0.5, len(sizes) - 0.5))
        fig.colorbar(image, ax=ax)
        reached = [(t, j) for j, t in enumerate(sweep["first_step_reaching_target"])
                   if t is not None]
        if key == "accuracy" and reached:
            ax.plot(*zip(*reached), "r-o", ms=4,
                    label=f"first t reaching the best accuracy on m = {sizes[-1]} "
                          f"({sweep['target_accuracy']:.3f})")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_yticks(range(len(sizes)), [str(m) for m in sizes])
        ax.set(xlabel="pre-training steps t", ylabel="dataset size m",
               title=f"{title}, pruned to n={sweep['pruned_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
