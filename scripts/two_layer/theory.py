"""The two-layer network of Ye et al. (2020), its data, its training and its selection rules.

The network is f_S(x) = (1/|S|) sum_{i in S} b_i tanh(a_i^T x) and the loss is
L[f] = mean_j (f(x_j) - y_j)^2 / 2 (Ye et al., Section 2). S is a multiset: greedy selection
may pick a neuron again, so "size n" is the number of greedy steps and at most n neurons are
distinct (Ye et al., Remark after Proposition 1).

Why a separate implementation from the engine (`pruning.selection`): on a two-layer network a
subnetwork's output is the mean of the rows Phi_i of the neuron output matrix (the vertices of
the polytope M_N of Wolfe et al. 2023), so every selection rule here works on Phi alone and
scores all N candidates with one matrix-vector product. That keeps the rate experiments (256
greedy steps over N = 10,000 neurons, N - 1 backward steps) within seconds on a CPU, and each
function short enough to check against its equation in the papers. The engine's loss is
cross-entropy only, so it could not run this squared loss anyway; the binary cross-entropy
selection of `mnist` is checked against it (tests/families/test_two_layer_engine.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

TRAIN_DTYPE = torch.float32  # gradient descent: float32 is 2-3x faster on CPU than float64
SELECT_DTYPE = torch.float64  # selection: cheap, and exact comparisons need the precision


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


def two_layer_greedy_selection(
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


def two_layer_backward_elimination(Phi: torch.Tensor, y: torch.Tensor) -> np.ndarray:
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
    """Wolfe et al.'s Lemma 1 (eq. 12), in this module's loss L = ||u - y||^2 / (2m):

        L[f_{S_k}] <= L[f_{S_1}] / k + (1 + log k) / (2k) * D^2 / m + (k - 1)/k * L[f_[N]].

    Their proof uses ell(z) = ||z - y||^2 / 2, which is 1-smooth; L = ell / m is 1/m-smooth, so
    the diameter term carries 1/m and the other two terms keep their form."""
    k = np.asarray(k, dtype=float)
    return (
        loss_first / k
        + (1.0 + np.log(k)) / (2.0 * k) * diameter**2 / m
        + (k - 1.0) / k * dense_loss
    )
