"""The pruning engine on networks small enough to check by brute force."""

import copy

import pytest
import torch

from pruning.evaluators import PlainEvaluator
from pruning.masks import Masks, mixing_weights
from pruning.metrics import SubsetMeasure
from pruning.selection import SelectionSettings, greedy_forward_selection, select_unit
from pruning.stop import LossGap, MaxFraction, Top1Tolerance
from tests.support.nets import Recorder, brute_force_loss, tiny_net, tiny_units


@pytest.mark.parametrize("replacement", [True, False])
def test_each_greedy_step_picks_the_brute_force_argmin(replacement):
    net, units = tiny_net(), tiny_units()
    clean = copy.deepcopy(net)
    masks = Masks(net, units)
    batches = Recorder(seed=1)
    picks = []

    def log(unit, step, best, loss, eval_loss):
        picks.append((unit.name, best))

    settings = SelectionSettings(replacement=replacement)
    counts = greedy_forward_selection(
        units, masks, PlainEvaluator(net, masks), batches, MaxFraction(1.0), settings,
        log_step=log,
    )
    assert len(picks) == len(batches.seen) >= 8
    state = {u.name: torch.ones(u.size) for u in units}
    replay = {u.name: torch.zeros(u.size, dtype=torch.long) for u in units}
    for (name, best), batch in zip(picks, batches.seen):
        unit = next(u for u in units if u.name == name)
        pool = range(unit.size) if replacement else torch.nonzero(replay[name] == 0).flatten()
        losses = {}
        for k in [int(k) for k in pool]:
            trial = replay[name].clone()
            trial[k] += 1
            weights = {**state, name: mixing_weights(trial)}
            losses[k] = brute_force_loss(clean, units, weights, batch)
        assert best == min(losses, key=losses.get)
        replay[name][best] += 1
        state[name] = mixing_weights(replay[name])
    for name in counts:
        assert torch.equal(counts[name], replay[name])
    if not replacement:
        assert all(int(c.max()) == 1 for c in counts.values())


def test_random_candidate_subset_is_random_and_reproducible():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    pools = []

    class Spy(PlainEvaluator):
        def losses(self, unit, counts, candidates, batch):
            pools.append(sorted(candidates.tolist()))
            return super().losses(unit, counts, candidates, batch)

    def run(seed):
        pools.clear()
        settings = SelectionSettings(candidates=3, replacement=False, seed=seed)
        select_unit(units[0], masks, Spy(net, masks), Recorder(0), MaxFraction(0.5), settings, 0)
        return list(pools)

    first, again, other = run(0), run(0), run(1)
    assert first == again and first != other
    assert all(len(p) == 3 for p in first)
    # unlike the released code, the subset is not the lowest unselected indices
    assert first[0] != [0, 1, 2] or first[1] != [0, 1, 3]


def test_dense_weights_reproduce_the_network_and_empty_selection_removes_the_unit():
    net, units = tiny_net(), tiny_units()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        dense = net(x)
        masks = Masks(net, units)
        assert torch.equal(net(x), dense)
        masks.set_counts("u1", torch.ones(8, dtype=torch.long))
        assert torch.allclose(net(x), dense)
        masks.set_counts("u1", 2 * torch.ones(8, dtype=torch.long))  # S = every channel twice
        assert torch.allclose(net(x), dense, atol=1e-6)
        masks.set_counts("u1", torch.zeros(8, dtype=torch.long))
        assert not torch.allclose(net(x), dense)
    counts = torch.tensor([0, 3, 0, 1, 0, 0, 0, 0])
    assert torch.allclose(mixing_weights(counts), torch.tensor([0, 6.0, 0, 2.0, 0, 0, 0, 0]))


def test_stop_rules():
    unit = tiny_units()[0]
    losses = iter([(3.0, 0.1), (2.05, 0.5), (2.0, 0.9)])
    gap = LossGap(0.1, dense_loss=1.99, measure=lambda unit: next(losses))
    counts = torch.zeros(8, dtype=torch.long)
    assert [gap.done(unit, counts) for _ in range(3)] == [False, True, True]
    readings = iter([(1.0, 0.80), (1.5, 0.70), (1.2, 0.79)])
    tol = Top1Tolerance(0.02, measure=lambda unit: next(readings))
    tol.start(unit)
    assert [tol.done(unit, counts), tol.done(unit, counts)] == [False, True]
    frac = MaxFraction(0.25)
    assert not frac.done(unit, torch.tensor([3, 0, 0, 0, 0, 0, 0, 0]))
    assert frac.done(unit, torch.tensor([1, 1, 0, 0, 0, 0, 0, 0]))
    for bad in (lambda: LossGap(0.0, 1.0, None), lambda: MaxFraction(0),
                lambda: Top1Tolerance(1.0, None), lambda: SelectionSettings(candidates=0)):
        with pytest.raises(ValueError):
            bad()


def test_loss_gap_stops_a_unit_early_and_keeps_fewer_channels():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    fixed = [next(Recorder(5)) for _ in range(2)]

    measure = SubsetMeasure(net, fixed)  # loss on the fixed batches (no splits: full forwards)
    dense_loss, _ = measure()
    stop = LossGap(0.05, dense_loss, measure)
    gaps = []
    counts = select_unit(units[0], masks, PlainEvaluator(net, masks), Recorder(2), stop,
                         SelectionSettings(), 0,
                         log_step=lambda u, s, b, loss, e: gaps.append(e - dense_loss))
    assert len(gaps) == int(counts.sum())
    assert gaps[-1] < 0.05 and all(g >= 0.05 for g in gaps[:-1])


def test_without_replacement_the_loss_gap_rule_always_holds_by_the_end_of_a_unit():
    """After N selections S = [N] reproduces the dense layer, so even a tiny epsilon is met."""
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    fixed = [next(Recorder(5))]

    measure = SubsetMeasure(net, fixed)  # loss on the fixed batches (no splits: full forwards)
    dense_loss, _ = measure()
    stop = LossGap(1e-6, dense_loss, measure)
    counts = select_unit(units[0], masks, PlainEvaluator(net, masks), Recorder(2), stop,
                         SelectionSettings(), 0)
    assert stop.last_loss - dense_loss < 1e-6
    assert int(counts.max()) == 1
