"""Wolfe et al. (2023), Section 6.1 and Figure 1: two-layer networks on binarised MNIST, pruned
by greedy forward selection after increasing amounts of pre-training, on sub-datasets of
increasing size.

Why: their Theorem 3 says that greedy forward selection finds a good subnetwork only after a
number of gradient descent steps that grows (logarithmically) with the dataset size m; Figure 1
checks it on MNIST. This module runs that experiment and draws the figure.

The network (their eqs. 1-3 with sigma_+ = ReLU and the sigmoid output of Section 6.1): the
dense network's logit is sum_i b_i relu(a_i^T x), i.e. (1/N) sum_i phi_i(x) with the neuron
outputs phi_i(x) = N b_i relu(a_i^T x) of eq. (1); a subnetwork S (a multiset: eqs. 9-11 select
with replacement) has the logit (1/|S|) sum_{i in S} phi_i(x) = (N/|S|) sum_{i in S} b_i
relu(a_i^T x), and f_S = sigmoid(logit). Selecting every neuron once gives back the dense network
exactly; this is the repository's convention for every unit (pruning/masks.py). No biases, as in
eq. (1). Loss: binary cross-entropy, averaged over the sub-dataset.

Readings of what the paper leaves open (also written to the JSON's `readings`):

* Sizes "1K to 50K (i.e., in increments of 5K)": 1K, 5K, 10K, ..., 50K (11 sizes), so that both
  named ends are in the grid. Each is class balanced over the ten digits ("uniformly sampling
  examples from the ten original classes", `data.class_balanced_subset`), drawn anew per trial.
* "Pruned every 1K iterations": at 0, 1K, ..., 8K (9 columns); iteration 0 is the network at
  initialisation, which the Discussion's "never discovered at initialization" implies was pruned.
* Pre-training: the paper gives no optimizer for MNIST; its theory (eq. 5) is full-batch gradient
  descent, and this section is meant to validate that theory, so the default is full-batch GD
  (`batch_size = 0`; a positive batch size gives mini-batch SGD over reshuffled epochs). The
  step is lr / N: Theorem 2 takes eta = O(1/(N lambda_max^2)), so one `lr` serves every N.
* Colour: "the accuracy of the pruned model over the entire training dataset": accuracy on all
  training images the data holds (60K for MNIST), not only the sub-dataset; the accuracy on the
  sub-dataset itself is recorded too (`subset_accuracy`, with its own `subset_red_line`).
* The red line "traces the point at which the accuracy of the best-performing subnetwork for the
  entire dataset is surpassed at each sub-dataset size": the target is the best trial-mean
  accuracy over iterations on the largest sub-dataset (50K; no network is trained on all 60K);
  for each size the line is at the first iteration whose trial-mean accuracy reaches it (>=, so
  the largest size has a point, at its best iteration). A size that never reaches it has no point.
* Selection loss: each greedy step adds the neuron minimising the BCE on the sub-dataset (the
  data the network was pre-trained on), over all N candidates (eq. 9), 200 steps.
* Not drawn: the paper's dashed "theoretical" lines, whose constant C_1 the paper does not give.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tqdm import tqdm

from data import DataError, class_balanced_subset
from data.samplers import InfiniteBatchSampler
from data.seeding import mix_seed
from pruning.masks import mixing_weights


@dataclass(frozen=True)
class MnistSettings:
    """Everything the experiment depends on; written to the JSON as `settings`.

    Defaults are the paper's (Section 6.1) where it gives them. `lr` (the step is lr / N),
    `init_a` (a_i ~ N(0, init_a^2 / d I)) and `init_b` (b_i ~ N(0, init_b^2 / N)) are not given
    there; they were chosen on a stand-in (scikit-learn's digits upsampled to 28 x 28,
    binarised), not on MNIST: full-batch GD at lr 200 was stable for N = 1K and 4K, lr 400
    oscillated at N = 1K and lr 800 did not train, so the default is half the largest stable
    value seen. `batch_size` 0 is full-batch GD. `chunk` bounds the elements of any m x N
    temporary (the N x m matrix Phi itself is kept whole: 4 GB at N = 20K, m = 50K).
    """

    hidden: tuple[int, ...] = (5_000, 10_000, 20_000)
    sizes: tuple[int, ...] = (1_000, *range(5_000, 50_001, 5_000))
    iterations: int = 8_000
    prune_every: int = 1_000
    pruned_size: int = 200
    trials: int = 3
    lr: float = 100.0
    batch_size: int = 0
    init_a: float = 1.0
    init_b: float = 1.0
    chunk: int = 1 << 25
    quick: bool = False


def quick_mnist_settings() -> MnistSettings:
    """The `--quick` setting: the same pipeline in seconds (the tests run it on ~300 images)."""
    return replace(MnistSettings(), hidden=(40, 80), sizes=(100, 200, 300), iterations=60,
                   prune_every=20, pruned_size=20, trials=2, quick=True)


def prepare(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x = pixels / 255 flattened to d = 784 and labels y = 1[digit >= 5] (Section 6.1:
    "labels less than five as zero and vice versa"), as float32."""
    X = torch.from_numpy(images.reshape(len(images), -1)).float() / 255.0
    return X, torch.from_numpy(labels >= 5).float()


def init_network(N: int, d: int, s: MnistSettings, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """a_i ~ N(0, init_a^2/d I_d), b_i ~ N(0, init_b^2/N) (the Gaussians of Assumption 1), drawn
    on the CPU so that a seed gives the same network on every device."""
    A = torch.randn(N, d, generator=gen) * (s.init_a / d**0.5)
    return A, torch.randn(N, generator=gen) * (s.init_b / N**0.5)


def _rows(chunk: int, width: int) -> int:
    return max(1, chunk // max(1, width))


def dense_logits(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor, chunk: int) -> torch.Tensor:
    """sum_i b_i relu(a_i^T x) for every row x of X, in row chunks of `chunk` elements."""
    step = _rows(chunk, A.shape[0])
    return torch.cat([torch.relu(X[r:r + step] @ A.T) @ b for r in range(0, len(X), step)])


def bce_gradients(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gradients of the mean BCE of the dense network on (X, y) with respect to A and b, and the
    loss, accumulated over row chunks so that no m x N temporary exceeds `chunk` elements. By
    hand: d loss / d logit = (sigmoid(logit) - y) / m."""
    gA, gb, total = torch.zeros_like(A), torch.zeros_like(b), 0.0
    step = _rows(chunk, A.shape[0])
    for r in range(0, len(X), step):
        Xc, yc = X[r:r + step], y[r:r + step]
        U = Xc @ A.T
        H = torch.relu(U)
        logit = H @ b
        total += float(F.binary_cross_entropy_with_logits(logit, yc, reduction="sum"))
        g = (torch.sigmoid(logit) - yc) / len(X)
        gb += H.T @ g
        gA += ((U > 0) * (g[:, None] * b)).T @ Xc
    return gA, gb, total / len(X)


def pretrain(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
             s: MnistSettings, seed: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Gradient descent on the BCE for `s.iterations` steps of size lr / N; yields (t, A, b) at
    t = 0, prune_every, 2 prune_every, ... Full batch when `s.batch_size` is 0 (or covers X),
    else mini-batches of reshuffled epochs, the engine's stream (`data.InfiniteBatchSampler`
    with `seed`: each pass a new permutation, its incomplete tail dropped)."""
    A, b = A.clone(), b.clone()
    eta = s.lr / A.shape[0]
    stream = (iter(InfiniteBatchSampler(len(X), s.batch_size, seed))
              if s.batch_size and s.batch_size < len(X) else None)
    for t in range(s.iterations + 1):
        if t % s.prune_every == 0:
            yield t, A, b
        if t == s.iterations:
            return
        if stream is not None:
            batch = torch.tensor(next(stream), device=X.device)
            gA, gb, _ = bce_gradients(A, b, X[batch], y[batch], s.chunk)
        else:
            gA, gb, _ = bce_gradients(A, b, X, y, s.chunk)
        A -= eta * gA
        b -= eta * gb


def neuron_outputs(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor, chunk: int) -> torch.Tensor:
    """Phi[i, j] = phi_i(x_j) = N b_i relu(a_i^T x_j), the N x m matrix of eq. (7) (its rows are
    the vertices of M_N); a subnetwork's logits are the mean of its rows."""
    N, step = A.shape[0], _rows(chunk, len(X))
    return torch.cat([(N * b[i:i + step, None]) * torch.relu(A[i:i + step] @ X.T)
                      for i in range(0, N, step)])


def greedy_bce_scores(z: torch.Tensor, k: int, Phi: torch.Tensor, y: torch.Tensor,
                      chunk: int) -> torch.Tensor:
    """BCE of S_{k-1} + {i} for every candidate i, given z = sum of the k-1 selected rows of Phi.

    The logits are additive, so candidate i's logits are (z + Phi_i) / k and every candidate's
    loss (eq. 9, with the BCE for ell) is one matrix computation over Phi, done in chunks of
    candidates of `chunk` elements: O(N m) per step instead of N network evaluations.
    """
    scores = torch.empty(Phi.shape[0], dtype=Phi.dtype, device=Phi.device)
    step = _rows(chunk, Phi.shape[1])
    for i in range(0, Phi.shape[0], step):
        U = (Phi[i:i + step] + z) / k
        scores[i:i + step] = F.binary_cross_entropy_with_logits(
            U, y.expand_as(U), reduction="none").mean(1)
    return scores


def greedy_bce_selection(Phi: torch.Tensor, y: torch.Tensor, n: int, chunk: int
                         ) -> tuple[torch.Tensor, list[float]]:
    """Greedy forward selection with replacement (Wolfe et al., eqs. 9-11; Ye et al., eq. 2):
    from S_0 = {}, n times add the neuron whose inclusion gives the smallest BCE. Returns the
    selection counts (N,) and losses[k-1] = BCE of S_k. Ties go to the smallest index.
    Not `pruning.prune`, which picks the same neurons (tests/families/test_two_layer_engine.py)
    but reruns the network every step (the plain evaluator once per candidate); here a step is
    one pass over the fixed Phi, which 200 steps over N = 20K neurons need."""
    y = y.to(Phi.dtype)
    z = torch.zeros_like(y)
    counts = torch.zeros(Phi.shape[0], dtype=torch.long, device=Phi.device)
    losses = []
    for k in range(1, n + 1):
        scores = greedy_bce_scores(z, k, Phi, y, chunk)
        i = int(torch.argmin(scores))
        z = z + Phi[i]
        counts[i] += 1
        losses.append(float(scores[i]))
    return counts, losses


def pruned_logits(A: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, X: torch.Tensor
                  ) -> torch.Tensor:
    """The subnetwork's logits (N/|S|) sum_{i in S} b_i relu(a_i^T x) for the multiset given by
    `counts`, computed from its distinct neurons only, with the engine's mixing weights
    N c_i / |S| (`pruning.masks.mixing_weights`, float32). counts = 1 everywhere gives the dense
    network's logits."""
    keep = torch.nonzero(counts).flatten()
    weight = b[keep] * mixing_weights(counts)[keep].to(b.dtype)
    return torch.relu(X @ A[keep].T) @ weight


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of points where sigmoid(logit) > 1/2, i.e. logit > 0, matches the 0/1 label."""
    return float(((logits > 0).to(y.dtype) == y).double().mean())


def red_line(mean_accuracy: np.ndarray, iterations: list[int]
             ) -> tuple[float, list[int | None]]:
    """The red line of Figure 1 from a (sizes x iterations) grid of trial-mean accuracies, the
    largest size last: the target is that size's best accuracy, and for each size the line is at
    the first iteration reaching it (None if none does). See the module docstring."""
    target = float(mean_accuracy[-1].max())
    first = [next((t for t, a in zip(iterations, row) if a >= target), None)
             for row in mean_accuracy]
    return target, first


def _subsets(digits: np.ndarray, s: MnistSettings, seed: int) -> dict[tuple[int, int], list[int]]:
    if max(s.sizes) > len(digits):
        raise DataError(f"--data-path: {len(digits)} training images, but the setting needs "
                        f"sub-datasets of up to {max(s.sizes)}")
    targets = digits.tolist()
    return {(trial, m): class_balanced_subset(targets, m, seed * 1000 + trial)
            for trial in range(s.trials) for m in s.sizes}


def run_grid(s: MnistSettings, images: np.ndarray, labels: np.ndarray, device: str | torch.device,
             seed: int, progress: bool = True) -> dict:
    """Every cell of Figure 1: for each N, trial and sub-dataset size, pre-train from the same
    initial network (one per N and trial, so that the sizes differ only in their data), prune
    at every checkpoint and record the accuracies. Returns the JSON-ready result."""
    X_all, y_all = prepare(images, labels)
    X_all, y_all = X_all.to(device), y_all.to(device)
    subsets = _subsets(labels, s, seed)
    iterations = list(range(0, s.iterations + 1, s.prune_every))
    cells, summary = [], {}
    bar = tqdm(total=len(s.hidden) * s.trials * len(s.sizes) * len(iterations),
               desc="prune", disable=not progress, dynamic_ncols=True)
    for N in s.hidden:
        acc = np.zeros((2, s.trials, len(s.sizes), len(iterations)))  # whole set, sub-dataset
        for trial in range(s.trials):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + N * 101 + trial)
            A0, b0 = init_network(N, X_all.shape[1], s, gen)
            A0, b0 = A0.to(device), b0.to(device)
            for row, m in enumerate(s.sizes):
                index = torch.tensor(subsets[trial, m], device=device)
                X, y = X_all[index], y_all[index]
                batches = mix_seed(seed, N, trial, m)  # seeds the mini-batch order, if any
                for col, (t, A, b) in enumerate(pretrain(A0, b0, X, y, s, batches)):
                    bar.set_postfix_str(f"N={N} trial={trial} m={m} t={t}")
                    Phi = neuron_outputs(A, b, X, s.chunk)
                    counts, losses = greedy_bce_selection(Phi, y, s.pruned_size, s.chunk)
                    del Phi
                    a = accuracy(pruned_logits(A, b, counts, X_all), y_all)
                    a_subset = accuracy(pruned_logits(A, b, counts, X), y)
                    acc[:, trial, row, col] = a, a_subset
                    cells.append({
                        "N": N, "size": m, "iteration": t, "trial": trial, "accuracy": a,
                        "dense_accuracy": accuracy(dense_logits(A, b, X_all, s.chunk), y_all),
                        "subset_accuracy": a_subset,
                        "dense_subset_accuracy": accuracy(dense_logits(A, b, X, s.chunk), y),
                        "pruned_loss": losses[-1],
                        "distinct_neurons": int((counts > 0).sum()),
                    })
                    bar.update()
        mean, mean_subset = acc.mean(1)
        target, first = red_line(mean, iterations)
        subset_target, subset_first = red_line(mean_subset, iterations)
        summary[str(N)] = {"mean_accuracy": mean.tolist(), "target_accuracy": target,
                           "red_line": first, "mean_subset_accuracy": mean_subset.tolist(),
                           "subset_target_accuracy": subset_target,
                           "subset_red_line": subset_first}
    bar.close()
    return {"sizes": list(s.sizes), "iterations": iterations, "hidden": list(s.hidden),
            "training_images": len(labels), "summary": summary, "cells": cells}


def plot_heatmaps(result: dict, path: Path) -> None:
    """Figure 1: one heat map per N, pre-training iterations (x) against sub-dataset size (y),
    colour = trial-mean training accuracy of the pruned network on one shared scale, with the red
    line. Drawn on `matplotlib.figure.Figure`, without pyplot (as plots.py)."""
    sizes, iterations, hidden = result["sizes"], result["iterations"], result["hidden"]
    grids = [np.array(result["summary"][str(N)]["mean_accuracy"]) for N in hidden]
    low, high = min(g.min() for g in grids), max(g.max() for g in grids)
    fig = Figure(figsize=(4.2 * len(hidden) + 1.2, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(hidden), sharey=True))
    for ax, N, grid in zip(axes, hidden, grids):
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=low,
                          vmax=high)
        info = result["summary"][str(N)]
        line = [(iterations.index(t), j) for j, t in enumerate(info["red_line"]) if t is not None]
        ax.plot(*zip(*line), "r-o", ms=3, lw=2)  # never empty: the largest size has a point
        ax.set_xticks(range(len(iterations)), [f"{t / 1000:g}K" if t >= 1000 else str(t)
                                               for t in iterations], fontsize=7)
        ax.set_yticks(range(len(sizes)), [f"{m / 1000:g}K" if m >= 1000 else str(m)
                                          for m in sizes], fontsize=7)
        ax.set(xlabel="pre-training iterations")
        ax.set_title(f"N = {N:,}\nred: first iteration reaching {info['target_accuracy']:.3f}, "
                     f"the best on {sizes[-1]:,}", fontsize=9)
    axes[0].set_ylabel("sub-dataset size")
    fig.colorbar(image, ax=list(axes), label="pruned training accuracy")
    fig.savefig(path, dpi=120)


def run(s: MnistSettings, images: np.ndarray, labels: np.ndarray, out: Path,
        device: str | torch.device = "cpu", seed: int = 0, progress: bool = True) -> dict:
    """The whole experiment: writes `mnist_two_layer.json` (settings, readings, every cell, the
    per-N grids and red lines, seconds) and `mnist_two_layer.png` to `out`; returns the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = run_grid(s, images, labels, device, seed, progress)
    result = {"settings": asdict(s), "seed": seed, "device": str(device),
              "readings": READINGS, **result, "seconds": time.perf_counter() - start}
    (out / "mnist_two_layer.json").write_text(json.dumps(result, indent=1))
    plot_heatmaps(result, out / "mnist_two_layer.png")
    return result


READINGS = {
    "sizes": "1K to 50K in steps of 5K read as 1K, 5K, 10K, ..., 50K; class balanced over digits",
    "iterations": "pruned at 0, prune_every, ..., iterations (0 = at initialisation)",
    "pretraining": "full-batch gradient descent (eq. 5) when batch_size = 0; step lr / N",
    "accuracy": "pruned network on every training image, no fine-tuning; subset_accuracy: on "
                "the sub-dataset",
    "red_line": "first iteration whose trial-mean accuracy >= the best trial-mean accuracy over "
                "iterations on the largest sub-dataset; null where never reached; "
                "subset_red_line: the same from subset_accuracy",
    "output": "logit of S = (N/|S|) sum_{i in S} b_i relu(a_i^T x); S = [N] is the dense network",
}
"""The readings of the paper's open points (module docstring), recorded with every result."""
