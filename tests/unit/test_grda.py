"""Tests for runner/grda.py: closed form, SGD equivalence, thresholding, groups, report, state."""

from __future__ import annotations

import copy
import io
import json
import math
import warnings

import pytest
import torch
from torch import nn

from scripts.runner.grda import (
    gRDA,
    grda_param_groups,
    grda_threshold,
    soft_threshold,
    sparsity_report,
)


def _net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).to(dtype)


def _random_grads(params: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return grads


def _closed_form(w0: torch.Tensor, acc_sum: torch.Tensor, tau: float) -> torch.Tensor:
    """Independent of the implementation: S_tau(w_0 - sum_k lr_k g_k), soft-thresholding inline."""
    a = w0 - acc_sum
    return torch.where(a.abs() > tau, a - tau * torch.sign(a), torch.zeros_like(a))


@pytest.mark.parametrize("mode", ["cumulative", "current"])
def test_closed_form_equals_iterated_constant_lr(mode: str) -> None:
    model = _net()
    params = list(model.parameters())
    lr, c, mu = 0.1, 0.3, 0.6
    opt = gRDA(params, lr=lr, c=c, mu=mu, threshold_mode=mode)
    w0 = [p.detach().clone() for p in params]
    sums = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1)
    saw_zero = saw_nonzero = False
    for step in range(1, 9):
        grads = _random_grads(params, gen)
        opt.step()
        n = step - 1  # paper's index of this update: w_{n+1} uses gradients k = 0..n
        tau = c * lr**0.5 * (n * lr) ** mu
        for p, p0, s, g in zip(params, w0, sums, grads):
            s.add_(lr * g)
            expected = _closed_form(p0, s, tau)
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
            assert opt.state[p]["step"] == step
            assert opt.state[p]["g"] == pytest.approx(tau, rel=1e-12, abs=1e-15)
            saw_zero |= bool((p == 0).any())
            saw_nonzero |= bool((p != 0).any())
        if step == 1:  # g(0, lr) = 0: the first step is a plain SGD step, no zeros yet
            assert all(bool((p != 0).all()) for p in params)
    assert saw_zero and saw_nonzero  # the test exercised both sides of the threshold


def test_lr_schedule_follows_documented_thresholds() -> None:
    lrs = [0.2, 0.2, 0.1, 0.05, 0.05, 0.01, 0.0]
    c, mu = 0.2, 0.55
    models = {m: _net() for m in ("cumulative", "current")}
    opts = {m: gRDA(models[m].parameters(), lr=lrs[0], c=c, mu=mu, threshold_mode=m)
            for m in models}
    w0 = [p.detach().clone() for p in models["current"].parameters()]
    sums = [torch.zeros_like(p) for p in w0]
    gen = torch.Generator().manual_seed(2)
    tau_cum = 0.0
    cum_history = []
    for n, lr in enumerate(lrs):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in w0]
        for s, g in zip(sums, grads):
            s.add_(lr * g)
        tau_cur = c * lr**0.5 * (n * lr) ** mu
        if n > 0:
            tau_cum += c * lr ** (0.5 + mu) * (n**mu - (n - 1) ** mu)
        cum_history.append(tau_cum)
        for mode, tau in (("cumulative", tau_cum), ("current", tau_cur)):
            opt = opts[mode]
            opt.param_groups[0]["lr"] = lr
            for p, g in zip(models[mode].parameters(), grads):
                p.grad = g.clone()
            opt.step()
            for p, p0, s in zip(models[mode].parameters(), w0, sums):
                torch.testing.assert_close(p.detach(), _closed_form(p0, s, tau), rtol=0, atol=1e-12)
    # cumulative never decreases; "current" collapses to 0 at lr = 0 and un-prunes everything
    assert all(b >= a for a, b in zip(cum_history, cum_history[1:])) and cum_history[-1] > 0
    assert all(bool((p != 0).all()) for p in models["current"].parameters())
    assert any(bool((p == 0).any()) for p in models["cumulative"].parameters())


def _train_pair(opt_factory, steps: int = 6, schedule: bool = False):
    """Train two copies of the same net on the same data; yields parameter lists after each step."""
    torch.manual_seed(3)
    x, y = torch.randn(8, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    m_ref, m_grda = _net(), _net()
    sgd = torch.optim.SGD(m_ref.parameters(), lr=0.05, momentum=0.0, weight_decay=0.0)
    grda = opt_factory(m_grda)
    scheds = []
    if schedule:
        scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.3) for o in (sgd, grda)]
    for _ in range(steps):
        for model, opt in ((m_ref, sgd), (m_grda, grda)):
            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            loss = opt.step(closure)
            assert isinstance(loss, torch.Tensor)
        for s in scheds:
            s.step()
        yield list(m_ref.parameters()), list(m_grda.parameters())


@pytest.mark.parametrize("schedule", [False, True])
@pytest.mark.parametrize("groups", [False, True])
def test_c_zero_equals_sgd_step_by_step(schedule: bool, groups: bool) -> None:
    def factory(model):
        params = model.parameters()
        if groups:
            params = grda_param_groups(model, threshold_bn_and_bias=True)
        return gRDA(params, lr=0.05, c=0.0, mu=0.7)

    for ref, got in _train_pair(factory, schedule=schedule):
        for a, b in zip(ref, got):
            assert torch.equal(a, b)


def test_unthresholded_group_is_sgd_even_with_huge_c() -> None:
    # same injected gradients for both (a real loss would couple BN to the pruned weights)
    m_ref, m_grda = _net(), _net()
    sgd = torch.optim.SGD(m_ref.parameters(), lr=0.05)
    grda = gRDA(grda_param_groups(m_grda), lr=0.05, c=10.0, mu=0.51)
    gen = torch.Generator().manual_seed(7)
    for step in range(1, 7):
        grads = _random_grads(list(m_grda.parameters()), gen)
        for p, g in zip(m_ref.parameters(), grads):
            p.grad = g.clone()
        sgd.step()
        grda.step()
        for (name, a), b in zip(m_ref.named_parameters(), m_grda.parameters()):
            if name in ("0.weight", "4.weight"):  # conv and linear weights: thresholded
                assert bool((b == 0).all()) != (step == 1), name  # pruned from step 2 on
            else:  # conv/linear biases and BN weight/bias: never thresholded, exactly SGD
                assert torch.equal(a, b), name
                assert bool((b != 0).all()), name


def test_large_c_gives_exact_zeros_and_report() -> None:
    model = _net(torch.float32)
    opt = gRDA(grda_param_groups(model), lr=0.1, c=0.05, mu=0.51)
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        _random_grads(list(model.parameters()), gen)
        opt.step()
    rep = sparsity_report(model, opt)
    assert set(rep["layers"]) == {"0.weight", "4.weight"}
    assert 0 < rep["total"]["sparsity"] < 1
    # zeros are exact and the accumulator behind them is within the threshold
    w = model[0].weight
    acc, g = opt.state[w]["accumulator"], opt.state[w]["g"]
    assert torch.equal(w == 0, acc.abs() <= g)
    torch.testing.assert_close(w.detach(), soft_threshold(acc, g))


def test_sparsity_report_numbers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        model[0].weight[0].zero_()  # 9 of 18 conv weights
        model[0].weight[1, 0, 0, 0] = -0.0  # negative zero counts as zero: 10 of 18
        model[3].weight[:, :2] = 0.0  # 8 of 32 linear weights
        model[3].bias[0] = 0.0  # a bias zero: only in all_parameters
        model[1].weight[1] = 0.0  # a BN zero: only in all_parameters
    rep = sparsity_report(model)
    json.dumps(rep)  # serializable for summary.json
    assert rep["layers"] == {
        "0.weight": {"numel": 18, "zeros": 10, "sparsity": 10 / 18},
        "3.weight": {"numel": 32, "zeros": 8, "sparsity": 8 / 32},
    }
    assert rep["total"] == {"numel": 50, "zeros": 18, "sparsity": 18 / 50}
    n_all = 18 + 2 + 2 + 2 + 32 + 4  # conv w, conv b, bn w, bn b, linear w, linear b
    assert rep["all_parameters"] == {"numel": n_all, "zeros": 20, "sparsity": 20 / n_all}
    # with an optimizer: exactly the parameters of its thresholded groups
    opt = gRDA(grda_param_groups(model, threshold_bn_and_bias=True))
    assert len(sparsity_report(model, opt)["layers"]) == 6
    assert sparsity_report(model, gRDA(grda_param_groups(model)))["layers"] == rep["layers"]


def test_param_groups_split() -> None:
    model = _net()
    model.add_module("shared", model[4])  # shared module: parameters must appear once
    groups = grda_param_groups(model)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups[0]["params"]) == {id(model[0].weight), id(model[4].weight)}
    assert ids(groups[1]["params"]) == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[4].bias)
    }
    assert [g["threshold"] for g in groups] == [True, False]
    assert [g["threshold"] for g in grda_param_groups(model, True)] == [True, True]
    opt = gRDA(groups)  # accepted, every parameter once
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"c": -1e-3}, "c"),
        ({"c": math.inf}, "c"),
        ({"mu": -0.5}, "mu"),
        ({"threshold": 1}, "threshold"),
        ({"threshold_mode": "paper"}, "threshold_mode"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    model = _net()
    with pytest.raises(ValueError, match=rf"Invalid {name}:"):
        gRDA(model.parameters(), **kwargs)
    with pytest.raises(ValueError, match=rf"Invalid {name}:"):  # per-group overrides too
        gRDA([{"params": list(model.parameters()), **kwargs}])


def test_mu_advice_warning() -> None:
    params = list(_net().parameters())
    with pytest.warns(UserWarning, match="mu"):
        gRDA(params, c=0.001, mu=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gRDA(params)  # authors' defaults: c = 0, so no advice needed
        gRDA(params, c=0.005, mu=0.51)


def test_state_dict_resume_is_identical() -> None:
    def run(model, opt, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            _random_grads(list(model.parameters()), gen)
            opt.step()

    model = _net()
    opt = gRDA(grda_param_groups(model), lr=0.1, c=0.05, mu=0.55)
    run(model, opt, 3, seed=5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    reference = copy.deepcopy(model)
    ref_opt = gRDA(grda_param_groups(reference), lr=0.1, c=0.05, mu=0.55)
    ref_opt.load_state_dict(opt.state_dict())  # deepcopy'd model needs its own optimizer
    run(model, opt, 4, seed=6)

    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = _net()
    resumed_opt = gRDA(grda_param_groups(resumed), lr=0.1, c=0.05, mu=0.55)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["opt"])
    assert resumed_opt.state[resumed[0].weight]["step"] == 3
    run(resumed, resumed_opt, 4, seed=6)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert any(bool((p == 0).any()) for p in resumed.parameters())


def test_params_without_grad_keep_their_counter() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = gRDA([a, b], lr=0.1, c=0.1, mu=0.6)
    for _ in range(3):
        a.grad = torch.ones(3)
        opt.step()
    assert opt.state[a]["step"] == 3 and b not in opt.state
    assert torch.equal(b, torch.ones(3))
    torch.testing.assert_close(a.detach(), soft_threshold(torch.full((3,), 0.7),
                                                          grda_threshold(2, 0.1, 0.1, 0.6)))


def test_sparse_grad_rejected() -> None:
    emb = nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        gRDA(emb.parameters()).step()
