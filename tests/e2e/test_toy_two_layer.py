"""Tests of toy_two_layer.py and scripts.two_layer: the vectorized selection against brute
force, the distributed selection (Wolfe et al., Algorithm 3) against the central one with real
gloo processes, the Lemma 1 bound, and the issue's thresholds on the rates of a `--quick` run."""

import json

import numpy as np
import pytest
import torch

import toy_two_layer as toy
from pruning.distributed_select import candidate_share
from scripts.two_layer import distributed, experiments, theory

F64 = torch.float64


def small_problem(N: int = 40, m: int = 7, d: int = 5, seed: int = 0):
    """A random two-layer network and regression data, in float64 so that the brute-force
    evaluation below and the vectorized scores agree to rounding."""
    gen = torch.Generator().manual_seed(seed)
    X = theory.sphere(m, d, gen).to(F64)
    A, b = (t.to(F64) for t in theory.init_neurons(N, d, 2.0, gen))
    teacher = tuple(t.to(F64) for t in theory.init_neurons(3, d, 2.0, gen))
    y = theory.teacher_targets(X, teacher)
    return A, b, X, y


def subnetwork_loss(A, b, X, y, multiset) -> float:
    """L[f_S] evaluated from the weights, by the definition f_S(x) = mean_{i in S} b_i
    tanh(a_i^T x) (Ye et al., Section 2): the brute force the vectorized code must match."""
    idx = torch.tensor(multiset)
    outputs = b[idx, None] * torch.tanh(A[idx] @ X.T)
    return float(0.5 * ((outputs.mean(0) - y) ** 2).mean())


def test_greedy_scores_equal_brute_force_losses():
    A, b, X, y = small_problem()
    Phi = theory.neuron_outputs(A, b, X)
    S = [3, 17, 3, 29]  # a multiset: repeated neurons are allowed
    z = Phi[S].sum(0)
    scores = theory.greedy_scores(z, len(S) + 1, Phi, y)
    brute = [subnetwork_loss(A, b, X, y, S + [i]) for i in range(A.shape[0])]
    np.testing.assert_allclose(scores.numpy(), brute, rtol=1e-11, atol=0)


def test_greedy_forward_selection_equals_brute_force():
    A, b, X, y = small_problem(seed=1)
    Phi = theory.neuron_outputs(A, b, X)
    selected, losses = theory.two_layer_greedy_selection(Phi, y, 25)
    S, brute_losses = [], []
    for _ in range(25):
        candidates = [subnetwork_loss(A, b, X, y, S + [i]) for i in range(A.shape[0])]
        S.append(int(np.argmin(candidates)))
        brute_losses.append(min(candidates))
    assert selected == S
    assert len(set(S)) < len(S), "expected greedy to pick some neuron twice (with replacement)"
    np.testing.assert_allclose(losses, brute_losses, rtol=1e-11, atol=0)


def test_backward_elimination_equals_brute_force():
    A, b, X, y = small_problem(N=14, seed=2)
    losses = theory.two_layer_backward_elimination(theory.neuron_outputs(A, b, X), y)
    alive = list(range(14))
    brute = {14: subnetwork_loss(A, b, X, y, alive)}
    while len(alive) > 1:
        candidates = [subnetwork_loss(A, b, X, y, [j for j in alive if j != i]) for i in alive]
        alive.remove(alive[int(np.argmin(candidates))])
        brute[len(alive)] = min(candidates)
    np.testing.assert_allclose(losses, [brute[n] for n in range(1, 15)], rtol=1e-11, atol=0)


def test_random_subsets_follow_the_monte_carlo_formula():
    A, b, X, y = small_problem(N=60, seed=3)
    Phi = theory.neuron_outputs(A, b, X)
    n = 5
    dense = Phi.mean(0)
    expected = float(theory.loss(dense, y)) + float(((Phi - dense) ** 2).sum(1).mean()) / (
        2 * y.numel() * n
    )
    gen = torch.Generator().manual_seed(0)
    measured = theory.random_subset_losses(Phi, y, [n], 20_000, gen)
    assert measured[0] == pytest.approx(expected, rel=0.03)


def test_batched_mean_field_training_equals_separate_runs_and_autograd():
    A, b, X, y = small_problem(N=8, seed=4)
    lr, steps = 0.3, 5
    A_both, b_both, _ = theory.train_mean_field(A, b, X, y, steps, lr, sizes=[3, 5])
    for rows in (slice(0, 3), slice(3, 8)):
        A_one, b_one, _ = theory.train_mean_field(A[rows], b[rows], X, y, steps, lr)
        torch.testing.assert_close(A_both[rows], A_one, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b_both[rows], b_one, rtol=1e-12, atol=1e-12)
    # one step is plain gradient descent with the step size scaled by the width (mean field)
    A_req, b_req = A.clone().requires_grad_(), b.clone().requires_grad_()
    out = (b_req * torch.tanh(X @ A_req.T)).mean(1)
    (0.5 * ((out - y) ** 2).mean()).backward()
    A_step, b_step, _ = theory.train_mean_field(A, b, X, y, 1, lr)
    torch.testing.assert_close(A_step, A - lr * 8 * A_req.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b_step, b - lr * 8 * b_req.grad, rtol=1e-12, atol=1e-12)


def test_distributed_selection_gives_the_central_iterates():
    A, b, X, y = small_problem(N=301, m=9, seed=5)
    Phi = theory.neuron_outputs(A, b, X)
    first = int(torch.argmin(theory.greedy_scores(torch.zeros_like(y), 1, Phi, y)))
    # an exact duplicate of the first pick in another worker's block: a tie that the central
    # argmin breaks towards the smaller index, which the distributed version must reproduce
    duplicate = 300 if first < 200 else 0
    Phi[duplicate] = Phi[first]
    central = theory.two_layer_greedy_selection(Phi, y, 60)
    for workers in (2, 3):
        selected, losses = distributed.run_distributed_greedy(Phi, y, 60, workers)
        assert selected == central[0]
        assert np.array_equal(losses, central[1])
    assert min(first, duplicate) in central[0] and max(first, duplicate) not in central[0]
    # 5 neurons on 4 workers: the engine's ceil split leaves the last worker without any
    central = theory.two_layer_greedy_selection(Phi[:5], y, 8)
    selected, losses = distributed.run_distributed_greedy(Phi[:5], y, 8, 4)
    assert selected == central[0] and np.array_equal(losses, central[1])


def test_the_neurons_are_split_as_the_engine_splits_candidates():
    """Algorithm 3's blocks are the engine's (``candidate_share``): contiguous, disjoint,
    covering [N] in rank order, empty only at the end."""
    for N, workers in ((301, 3), (5, 4), (1000, 2)):
        blocks = [candidate_share(N, workers, rank) for rank in range(workers)]
        assert blocks[0][0] == 0 and blocks[-1][1] == N
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert [candidate_share(5, 4, r) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]


def test_polytope_diameter_is_the_largest_vertex_distance():
    for seed, N in ((0, 50), (1, 3000)):
        A, b, X, y = small_problem(N=N, m=12, seed=seed)
        Phi = theory.neuron_outputs(A, b, X)
        brute = float((Phi[:, None, :] - Phi[None, :, :]).norm(dim=2).max()) if N <= 50 else (
            max(float(torch.cdist(Phi[i : i + 500], Phi,
                                  compute_mode="donot_use_mm_for_euclid_dist").max())
                for i in range(0, N, 500)))
        assert theory.polytope_diameter(Phi) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lemma1_bound_holds_at_every_step(seed):
    A, b, X, y = small_problem(N=200, m=10, seed=seed)
    A, b, _ = theory.train_mean_field(A, b, X, y, 100, 0.5)
    Phi = theory.neuron_outputs(A, b, X)
    _, losses = theory.two_layer_greedy_selection(Phi, y, 300)
    D = float(torch.cdist(Phi, Phi, compute_mode="donot_use_mm_for_euclid_dist").max())
    k = np.arange(1, 301)
    dense = float(theory.loss(Phi.mean(0), y))
    bound = theory.lemma1_bound(k, losses[0], D, dense, y.numel())
    assert np.all(losses <= bound)
    # the three terms of eq. (12): at k = 1 the bound is L[f_S1] + D^2 / (2m)
    assert bound[0] == pytest.approx(losses[0] + D**2 / (2 * y.numel()))


def test_fit_slope_recovers_a_power_law():
    ns = experiments.log_grid(32, 256, 4)
    assert ns[0] == 32 and ns[-1] == 256 and len(ns) == 13
    slope, intercept = experiments.fit_slope(ns, 3.0 * np.asarray(ns, dtype=float) ** -2)
    assert slope == pytest.approx(-2.0) and intercept == pytest.approx(np.log(3.0))


@pytest.mark.parametrize(
    "argv, name",
    [(["--seeds", "0"], "--seeds"), (["--workers", "two"], "--workers"),
     (["--workers", "5000"], "--workers"), (["--seed", "x"], "--seed")],
)
def test_bad_command_line_input_names_the_argument(argv, name, capsys):
    with pytest.raises(SystemExit):
        toy.parse_args(argv)
    assert name in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("")
    with pytest.raises(SystemExit):
        toy.parse_args(["--out", str(not_a_folder)])
    assert "--out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig")
    result = toy.main(["--quick", "--out", str(out)])
    return out, result


def test_quick_run_writes_the_figures_and_json(quick_run):
    out, result = quick_run
    for name in ("toyrate.png", "forward_vs_backward.png", "pretraining.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "toy_rates.json").read_text())
    assert saved["slopes"] == result["slopes"]
    assert set(saved["slopes"]) == {"greedy", "random", "backward", "gd", "greedy_untrained"}
    assert saved["fit_range"] == [32, 256]
    assert {"greedy", "random", "backward", "gd", "greedy_untrained"} <= set(saved["losses"])
    assert saved["settings"]["quick"] and saved["settings"]["N"] == 1000
    assert saved["seconds"]["total"] > 0


def test_quick_run_rates_meet_the_issue_thresholds(quick_run):
    _, result = quick_run
    per_seed = result["slopes_per_seed"]
    assert len(result["seeds"]) == 2
    assert all(s <= -1.6 for s in per_seed["greedy"]), per_seed["greedy"]
    assert np.mean(per_seed["greedy"]) < -1.7
    assert all(-1.2 <= s <= -0.8 for s in per_seed["random"]), per_seed["random"]
    assert all(s <= -1.6 for s in per_seed["greedy_untrained"]), per_seed["greedy_untrained"]
    assert result["settings"]["N_untrained"] == 10_000


def test_quick_run_backward_elimination_is_worse_than_forward(quick_run):
    _, result = quick_run
    forward, backward = result["losses_per_seed"]["greedy"], result["losses_per_seed"]["backward"]
    for seed in forward:
        for n in ("4", "8", "16", "32", "64", "128"):
            assert backward[seed][n] >= forward[seed][n], (seed, n)


def test_quick_run_lemma1_and_distributed(quick_run):
    _, result = quick_run
    for seed, nets in result["lemma1"].items():
        for name, lemma in nets.items():
            assert lemma["holds_at_every_n"], (seed, name)
            assert lemma["min_bound_over_loss"] >= 1.0
    assert result["distributed"]["same_indices_as_central"]
    assert result["distributed"]["same_losses_as_central"]


def test_quick_run_pretraining_sweep_has_the_figure_1_shape(quick_run):
    _, result = quick_run
    sweep = result["pretraining"]
    accuracy = np.array(sweep["accuracy"])
    assert accuracy.shape == (len(sweep["sizes"]), len(sweep["steps"]))
    assert np.all((0 <= accuracy) & (accuracy <= 1))
    # pre-training helps: the pruned accuracy at the end beats the one at t = 0 on the largest
    # dataset, and larger datasets need at least as many steps to reach the target accuracy
    assert accuracy[-1, -1] > accuracy[-1, 0]
    first = sweep["first_step_reaching_target"]
    assert None not in first and first == sorted(first)
