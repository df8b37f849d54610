"""The settings of the two-layer experiments, apart so that the experiments and the plots can
both read them (``experiments`` runs, ``plots`` draws; neither imports the other's caller)."""

from __future__ import annotations

from dataclasses import dataclass, replace


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
