"""Two-layer experiments of greedy forward selection, on a CPU in about a minute.

This is the quick start of the project. It reproduces, on synthetic data, the two-layer theory of

* Ye et al. (2020), "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection":
  greedy forward selection (their eq. 2) from a large mean-field network reaches loss O(1/n^2)
  in the subnetwork size n (Theorem 2/3, Figure 2), against O(1/n) for a random subset and for a
  network of size n trained by gradient descent (the mean-field rate of Section 3.3); the fast
  rate also holds for a large network with random weights (Section 3.4); greedy backward
  elimination (Section 3.5, Appendix 11) does worse than forward selection.
* Wolfe et al. (2023), "How Much Pre-training Is Enough to Discover a Good Subnetwork?":
  the bound of their Lemma 1 on the greedy loss, the pre-training sweep of their Figure 1
  (pruned accuracy against pre-training iterations and dataset size, binarized labels), and the
  distributed greedy selection of their Algorithm 3, which yields the central iterates.

The network is f_S(x) = (1/|S|) sum_{i in S} b_i tanh(a_i^T x) and the loss is
L[f] = mean_j (f(x_j) - y_j)^2 / 2 (Ye et al., Section 2). S is a multiset: greedy selection
may pick a neuron again, so "size n" is the number of greedy steps and at most n neurons are
distinct (Ye et al., Remark after Proposition 1).

Run `python toy_two_layer.py --out fig` (what `make demo` does); `--quick` is for the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

matplotlib.use("Agg")  # files only; no figure exists yet, so switching backends is allowed

TRAIN_DTYPE = torch.float32  # gradient descent: float32 is 2-3x faster on CPU than float64
SELECT_DTYPE = torch.float64  # selection: cheap, and exact comparisons need the precision


@dataclass(frozen=True)
class Settings:
    """Everything an experiment depends on; written to the JSON as `settings`.

    The rate experiment: d = 20 inputs, m = 25 points, tanh, N = 1000 neurons trained for 2000
    full-batch steps at lr 0.1 (mean-field time T = 200; the dense loss is then ~1e-5), and the
    same budget for the networks of size n trained from scratch ("gd"); "gd_long" gives them
    `long_lr_factor` times the time, in which they interpolate the 25 points. `sigma_a` scales
    the first-layer weights, a_i^T x ~ N(0, sigma_a^2) on the unit sphere: with sigma_a = 1
    tanh is nearly linear there, the neuron outputs Phi_i in R^m concentrate near a
    d-dimensional subspace, y lies close to the boundary of their convex hull (a small gamma in
    Ye et al.'s Assumption 2) and the O(1/n^2) regime starts only at larger n (greedy slopes
    over n in [32, 256]: -1.3 to -1.9 for seeds 0-7 with sigma_a = 1; -1.8 to -2.2 for seeds
    0-24 with sigma_a = 2).
    The sweep_* fields set the pre-training sweep (Wolfe et al., Figure 1).
    """

    d: int = 20
    m: int = 25
    teacher_width: int = 10
    sigma_a: float = 2.0
    N: int = 1000
    N_untrained: int = 10_000
    steps: int = 2000
    lr: float = 0.1
    long_lr_factor: float = 10.0
    n_max: int = 256
    fit_lo: int = 32
    fit_hi: int = 256
    random_draws: int = 200
    workers: int = 2
    sweep_sizes: tuple[int, ...] = (25, 50, 100, 200, 400)
    sweep_N: int = 500
    sweep_steps: int = 500
    sweep_every: int = 25
    sweep_lr: float = 1.0
    sweep_n: int = 32
    quick: bool = False


def quick_settings() -> Settings:
    """The `--quick` setting: the rate experiment unchanged (the tests check its slopes), a
    smaller pre-training sweep."""
    return replace(Settings(), sweep_sizes=(25, 50, 100), sweep_steps=200, quick=True)


# ---------------------------------------------------------------------------------------------
# Data and networks


def sphere(m: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """m inputs uniform on the unit sphere of R^d (Ye et al.'s Assumption 1: ||x|| <= c_1)."""
    X = torch.randn(m, d, generator=gen, dtype=TRAIN_DTYPE)
    return X / X.norm(dim=1, keepdim=True)


def init_neurons(
    N: int, d: int, sigma_a: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """N neurons theta_i = [a_i, b_i] drawn i.i.d. from rho_0: a_i ~ N(0, sigma_a^2 I_d),
    b_i ~ N(0, 1) (Ye et al.'s eq. 5; Wolfe et al.'s Assumption 1)."""
    A = sigma_a * torch.randn(N, d, generator=gen, dtype=TRAIN_DTYPE)
    b = torch.randn(N, generator=gen, dtype=TRAIN_DTYPE)
    return A, b


def teacher_targets(X: torch.Tensor, teacher: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """y = mean-field teacher network output, (1/K) sum_k c_k tanh(w_k^T x)."""
    W, c = teacher
    return torch.tanh(X @ W.T) @ c / W.shape[0]


def neuron_outputs(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Phi[i, j] = sigma(x_j; theta_i) = b_i tanh(a_i^T x_j): row i is the vertex Phi_i of the
    polytope M_N (Wolfe et al., eq. 7). Returned in float64 for selection."""
    return (b[:, None] * torch.tanh(A @ X.T)).to(SELECT_DTYPE)


def loss(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L[f] = E_j (u_j - y_j)^2 / 2 for outputs u (Ye et al., Section 2); batched over leading
    dimensions of u."""
    return 0.5 * ((u - y) ** 2).mean(dim=-1)


def train_mean_field(
    A: torch.Tensor,
    b: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    sizes: list[int] | None = None,
    every: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Full-batch gradient descent on L in the mean-field scaling (Ye et al., eq. 5).

    Each network's output is the mean of its neurons, and neuron i moves along
    g_i = -E_j[(f(x_j) - y_j) grad_theta_i sigma(x_j; theta_i)], i.e. the gradient times the
    network's width, so that the dynamics do not depend on the width: a network of any size n
    follows the same discretized mean-field flow for time T = lr * steps. `sizes` splits the rows
    of (A, b) into consecutive independent networks trained side by side (they share no
    parameters, so this equals training them one at a time, only faster). With `every` > 0 the
    parameters after 0, every, 2*every, ... steps are returned as snapshots.
    """
    A, b = A.clone(), b.clone()
    sizes = [A.shape[0]] if sizes is None else sizes
    if sum(sizes) != A.shape[0]:
        raise ValueError(f"sizes sum to {sum(sizes)}, but there are {A.shape[0]} neurons")
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    average = torch.zeros(len(sizes), A.shape[0], dtype=A.dtype)
    average[owner, torch.arange(A.shape[0])] = 1.0 / torch.tensor(sizes, dtype=A.dtype)[owner]
    m = X.shape[0]
    snapshots = []
    for step in range(steps + 1):
        if every and step % every == 0:
            snapshots.append((A.clone(), b.clone()))
        if step == steps:
            break
        H = torch.tanh(X @ A.T)  # m x N
        residual = (H * b) @ average.T - y[:, None]  # m x networks
        r = residual[:, owner]  # each neuron sees its own network's residual
        grad_b = (H * r).sum(0) / m
        grad_A = ((r * (1 - H * H)) * b).T @ X / m
        b -= lr * grad_b
        A -= lr * grad_A
    return A, b, snapshots


# ---------------------------------------------------------------------------------------------
# Selection


def greedy_scores(z: torch.Tensor, k: int, Phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L[f_{S_{k-1} + i}] for every candidate i at once, given z = sum of the k-1 selected rows.

    With r = z - k y, ||(z + Phi_i)/k - y||^2 = (||r||^2 + 2 Phi_i.r + ||Phi_i||^2) / k^2, so all
    N candidates of Ye et al.'s eq. (2) (Wolfe et al., eq. 9) cost one matrix-vector product,
    O(N m), instead of N network evaluations, O(N k m).
    """
    r = z - k * y
    return ((r @ r) + 2.0 * (Phi @ r) + (Phi * Phi).sum(1)) / (2.0 * y.numel() * k * k)


def greedy_forward_selection(
    Phi: torch.Tensor, y: torch.Tensor, n: int
) -> tuple[list[int], np.ndarray]:
    """Greedy forward selection with replacement (Ye et al., eq. 2; Wolfe et al., eqs. 9-11).

    Start from S_0 = {} and add the neuron whose inclusion gives the smallest loss, n times.
    Returns the selected indices in order and losses[k-1] = L[f_{S_k}] for k = 1..n.
    Ties go to the smallest index (torch.argmin), which the distributed variant reproduces.
    """
    y = y.to(SELECT_DTYPE)
    z = torch.zeros_like(y)
    selected, losses = [], np.empty(n)
    for k in range(1, n + 1):
        i = int(torch.argmin(greedy_scores(z, k, Phi, y)))
        z = z + Phi[i]
        selected.append(i)
        losses[k - 1] = float(loss(z / k, y))
    return selected, losses


def backward_elimination(Phi: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Greedy backward elimination (Ye et al., Section 3.5): start from S = [N] and repeatedly
    delete the neuron whose removal gives the smallest loss. Returns losses[n-1] = L[f_{S^B}]
    at |S^B| = n for n = 1..N. Scored like `greedy_scores`: with z the sum over S and s = |S|,
    deleting i gives outputs (z - Phi_i)/(s - 1), all candidates in one O(N m) product."""
    y = y.to(SELECT_DTYPE)
    N = Phi.shape[0]
    alive = torch.ones(N, dtype=torch.bool)
    z = Phi.sum(0)
    sq = (Phi * Phi).sum(1)
    losses = np.empty(N)
    losses[N - 1] = float(loss(z / N, y))
    for s in range(N, 1, -1):
        r = z - (s - 1) * y
        scores = (r @ r) - 2.0 * (Phi @ r) + sq
        i = int(torch.argmin(scores.masked_fill(~alive, math.inf)))
        alive[i] = False
        z = z - Phi[i]
        losses[s - 2] = float(loss(z / (s - 1), y))
    return losses


def random_subset_losses(
    Phi: torch.Tensor, y: torch.Tensor, sizes: list[int], draws: int, gen: torch.Generator
) -> np.ndarray:
    """Mean loss of `draws` subsets of n neurons drawn uniformly with replacement: the
    Monte-Carlo reference, E L = L[f_[N]] + tr Cov(Phi_i) / (2 m n), i.e. O(1/n)."""
    y = y.to(SELECT_DTYPE)
    out = np.empty(len(sizes))
    for j, n in enumerate(sizes):
        idx = torch.randint(0, Phi.shape[0], (draws, n), generator=gen)
        out[j] = float(loss(Phi[idx].mean(1), y).mean())
    return out


# ---------------------------------------------------------------------------------------------
# Lemma 1 of Wolfe et al. (2023)


def polytope_diameter(Phi: torch.Tensor) -> float:
    """D_{M_N} = max_{u, v in M_N} ||u - v||_2 (Wolfe et al., Section 4).

    A convex function on a polytope peaks at its vertices, so D is the largest distance between
    two neuron output vectors Phi_i, Phi_j. Exact without an N x N matrix: with r_i the distance
    of Phi_i from the centroid, ||Phi_i - Phi_j|| <= r_i + r_j, so a pair can beat a known
    distance `best` only if both of its rows have r >= best - max r; only those rows are compared.
    """
    r = (Phi - Phi.mean(0)).norm(dim=1)
    far = Phi[int(torch.argmax(r))]
    best = float((Phi - far).norm(dim=1).max())
    rows = Phi[r >= best - float(r.max())]
    distances = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
    return max(best, float(distances.max()))


def lemma1_bound(
    k: np.ndarray, loss_first: float, diameter: float, dense_loss: float, m: int
) -> np.ndarray:
    """Wolfe et al.'s Lemma 1 (eq. 12), in this file's loss L = ||u - y||^2 / (2m):

        L[f_{S_k}] <= L[f_{S_1}] / k + (1 + log k) / (2k) * D^2 / m + (k - 1)/k * L[f_[N]].

    Their proof uses ell(z) = ||z - y||^2 / 2, which is 1-smooth; L = ell / m is 1/m-smooth, so
    the diameter term carries 1/m and the other two terms keep their form."""
    k = np.asarray(k, dtype=float)
    return (
        loss_first / k
        + (1.0 + np.log(k)) / (2.0 * k) * diameter**2 / m
        + (k - 1.0) / k * dense_loss
    )


# ---------------------------------------------------------------------------------------------
# Algorithm 3 of Wolfe et al. (2023): distributed greedy forward selection


def partition(N: int, workers: int) -> list[tuple[int, int]]:
    """Disjoint contiguous blocks [start, stop) covering [N], one per worker, in rank order
    (the A^(j) of Algorithm 3). Contiguity in rank order lets a first-minimum over ranks break
    ties towards the smallest global index, as the central argmin does."""
    bounds = np.linspace(0, N, workers + 1).round().astype(int)
    return [(int(bounds[j]), int(bounds[j + 1])) for j in range(workers)]


def distributed_greedy_forward_selection(
    Phi_local: torch.Tensor, start: int, y: torch.Tensor, n: int
) -> tuple[list[int], np.ndarray]:
    """Algorithm 3 on an initialized torch.distributed process group; Phi_local holds this
    worker's neurons, global indices start, start+1, ...

    Step I: each worker finds its local best candidate and broadcasts its loss L^(i).
    Step II: the worker with the smallest loss broadcasts its iterate z_k. Step III: everyone
    sets u_k = z_k / k. Only O(V + m) numbers move per step, and z_k is bitwise the central z_k.
    """
    y = y.to(SELECT_DTYPE)
    V = dist.get_world_size()
    z = torch.zeros_like(y)
    selected, losses = [], np.empty(n)
    for k in range(1, n + 1):
        scores = greedy_scores(z, k, Phi_local, y)
        i = int(torch.argmin(scores))
        local = torch.tensor([float(scores[i]), float(start + i)], dtype=SELECT_DTYPE)
        gathered = [torch.empty(2, dtype=SELECT_DTYPE) for _ in range(V)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered)
        winner = int(torch.argmin(table[:, 0]))
        z_k = z + Phi_local[i] if dist.get_rank() == winner else torch.empty_like(z)
        dist.broadcast(z_k, src=winner)
        z = z_k
        selected.append(int(table[winner, 1]))
        losses[k - 1] = float(loss(z / k, y))
    return selected, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _distributed_worker(
    rank: int, V: int, port: int, Phi: torch.Tensor, y: torch.Tensor, n: int, results
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=V
    )
    try:
        start, stop = partition(Phi.shape[0], V)[rank]
        selected, losses = distributed_greedy_forward_selection(Phi[start:stop], start, y, n)
        if rank == 0:
            results.put((selected, losses.tolist()))
    finally:
        dist.destroy_process_group()


def run_distributed_greedy(
    Phi: torch.Tensor, y: torch.Tensor, n: int, workers: int
) -> tuple[list[int], np.ndarray]:
    """Run Algorithm 3 with `workers` real processes (gloo over TCP on 127.0.0.1).

    The processes are forked: they inherit the imported torch and Phi, so a run takes about a
    second, where spawning fresh interpreters costs ~10 s of imports on a loaded 2-core machine.
    """
    if workers > Phi.shape[0]:
        raise ValueError(f"workers={workers} exceeds the number of neurons {Phi.shape[0]}")
    results = mp.get_context("fork").SimpleQueue()
    mp.start_processes(
        _distributed_worker,
        args=(workers, _free_port(), Phi, y.to(SELECT_DTYPE), n, results),
        nprocs=workers,
        join=True,
        start_method="fork",
    )
    selected, losses = results.get()
    return selected, np.asarray(losses)


# ---------------------------------------------------------------------------------------------
# Experiments


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

    selected, greedy = greedy_forward_selection(Phi, y, s.n_max)
    backward = backward_elimination(Phi, y)[: s.n_max]
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
    _, greedy_u = greedy_forward_selection(Phi_u, y, s.n_max)

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
            selected, losses = greedy_forward_selection(Phi, y, s.sweep_n)
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


# ---------------------------------------------------------------------------------------------
# Figures

FITTED = ("greedy", "random", "backward", "gd", "greedy_untrained")
"""Methods with a slope in the JSON. Not gd_long: it interpolates to the float32 floor (~1e-14)
by n = 32, so a slope over [fit_lo, fit_hi] would measure rounding noise."""

STYLE = {
    "greedy": ("tab:red", "greedy forward selection"),
    "greedy_untrained": ("tab:purple", "greedy, untrained large net"),
    "random": ("tab:gray", "random subset"),
    "gd": ("tab:blue", "GD from scratch"),
    "gd_long": ("tab:cyan", "GD from scratch, 10x time"),
    "backward": ("tab:green", "greedy backward elimination"),
}


def _mean_curve(runs: list[dict], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ns = np.array(runs[0]["curves"][name]["n"])
    values = np.array([r["curves"][name]["loss"] for r in runs])
    return ns, values.mean(0), values


def plot_rates(runs: list[dict], slopes: dict, s: Settings, path: Path) -> None:
    """Ye et al.'s Figure 2 (log-log loss against n, with slope fits) and, beside it,
    Wolfe et al.'s Lemma 1 bound against the measured greedy loss."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 6))
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
    plt.close(fig)


def plot_forward_backward(runs: list[dict], s: Settings, path: Path) -> None:
    """Forward selection against backward elimination on the same trained network."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
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
    plt.close(fig)


def plot_pretraining(sweep: dict, path: Path) -> None:
    """Wolfe et al.'s Figure 1: pruned training accuracy over (pre-training steps, dataset
    size), with the first step at which each size reaches the largest size's best accuracy."""
    steps, sizes = sweep["steps"], sweep["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("fig"), help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="small pre-training sweep and 2 seeds by default (for the tests)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=_positive_int("--seeds"), default=None,
                   help="number of seeds seed, seed+1, ... (default 5, or 2 with --quick)")
    p.add_argument("--workers", type=_positive_int("--workers"), default=Settings.workers,
                   help="processes V for the distributed selection (Algorithm 3) check")
    args = p.parse_args(argv)
    if args.workers > Settings.N:
        p.error(f"--workers must be at most N = {Settings.N}, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    return args


def run(s: Settings, seeds: list[int], out: Path) -> dict:
    """Every experiment, the three figures and `toy_rates.json` in `out`; returns the JSON."""
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
    for name in STYLE:
        ns, mean, _ = _mean_curve(runs, name)
        losses[name] = {str(k): float(v) for k, v in zip(ns, mean)}
    grid = set(log_grid(1, s.n_max, 4))
    losses_per_seed = {
        name: {str(r["seed"]): {str(n): v for n, v in zip(r["curves"][name]["n"],
                                                          r["curves"][name]["loss"]) if n in grid}
               for r in runs}
        for name in STYLE
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = replace(quick_settings() if args.quick else Settings(), workers=args.workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give on a shared CPU
    try:
        result = run(s, list(range(args.seed, args.seed + args.seeds)), args.out)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps({k: result[k] for k in ("slopes", "slopes_std", "distributed")}, indent=1))
    print(f"wrote {args.out}/toyrate.png, forward_vs_backward.png, pretraining.png, "
          f"toy_rates.json in {result['seconds']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
