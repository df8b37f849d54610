"""Baselines: backward elimination is exact greedy in reverse; greedy forward selection beats
random and magnitude selection at equal size on a trained network."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
from pruning.baselines import backward_elimination, fixed_size_counts, magnitude_scores
from pruning.distributed_select import CandidatePartition, RankZeroStop
from pruning.evaluators import CAPABILITIES, CandidateEvaluator, PlainEvaluator, require, supports
from pruning.fast_evaluators import FastEvaluator
from pruning.masks import Masks, mixing_weights
from pruning.metrics import SubsetMeasure, loss_and_top1
from pruning.selection import SelectionSettings, greedy_forward_selection, unit_seed
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import LossGap, MatchKept, MaxFraction, StopRule
from pruning.units import ChannelSpace, Unit
from tests.support.nets import Recorder, brute_force_loss, tiny_net, tiny_units


def test_backward_elimination_removes_the_brute_force_argmin_each_step():
    net, units = tiny_net(), tiny_units()
    clean = copy.deepcopy(net)
    masks = Masks(net, units)
    batches = Recorder(seed=3)
    removed = []
    counts = backward_elimination(
        units, masks, PlainEvaluator(net, masks), batches, MaxFraction(0.5), SelectionSettings(),
        log_step=lambda unit, step, k, loss, e: removed.append((unit.name, k)),
    )
    assert [int((c > 0).sum()) for c in counts.values()] == [4, 3]
    assert len(removed) == len(batches.seen) == 4 + 3
    state = {u.name: torch.ones(u.size) for u in units}
    replay = {u.name: torch.ones(u.size, dtype=torch.long) for u in units}
    for (name, k), batch in zip(removed, batches.seen):
        losses = {}
        for j in torch.nonzero(replay[name]).flatten().tolist():
            trial = replay[name].clone()
            trial[j] -= 1
            weights = {**state, name: mixing_weights(trial)}
            losses[j] = brute_force_loss(clean, units, weights, batch)
        assert k == min(losses, key=losses.get)
        replay[name][k] = 0
        state[name] = mixing_weights(replay[name])


def test_backward_elimination_with_a_loss_gap_stops_before_the_gap_is_exceeded():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    fixed = [next(Recorder(9)) for _ in range(2)]

    measure = SubsetMeasure(net, fixed)  # loss on the fixed batches (no splits: full forwards)
    dense, _ = measure()
    stop = LossGap(0.02, dense, measure)
    backward_elimination(units, masks, PlainEvaluator(net, masks), Recorder(4), stop,
                         SelectionSettings())
    assert measure()[0] - dense < 0.02  # the removal that broke the rule was undone
    assert any(int((w == 0).sum()) > 0 for w in masks.weights.values())


class LossesOnly:
    """An evaluator with only the required ``losses`` (a user's own, say)."""

    def __init__(self, inner):
        self.inner = inner

    def losses(self, unit, counts, candidates, batch):
        return self.inner.losses(unit, counts, candidates, batch)


class Declared(CandidateEvaluator):
    """Subclasses the protocol explicitly: its optional stubs are not capabilities."""

    def losses(self, unit, counts, candidates, batch):
        return torch.zeros(len(candidates), dtype=torch.float64)


def test_wrappers_claim_exactly_the_capabilities_of_what_they_wrap():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    plain, bare = PlainEvaluator(net, masks), LossesOnly(PlainEvaluator(net, masks))
    fast = FastEvaluator(net, splits=None)  # never called here: no split needed
    have = {name: {c for c in CAPABILITIES if supports(e, c)}
            for name, e in (("plain", plain), ("bare", bare), ("fast", fast),
                            ("declared", Declared()))}
    assert have == {"plain": {"removal_losses"}, "bare": set(),
                    "fast": {"removal_losses", "linear_scores"}, "declared": set()}
    for inner in (plain, bare, fast):  # building a partition needs no process group
        wrapper = CandidatePartition(inner)
        for capability in CAPABILITIES:
            assert supports(wrapper, capability) == supports(inner, capability)
            assert hasattr(wrapper, capability) == supports(inner, capability)
    # the shortlist ranks forward steps only: never removal_losses, whatever it wraps
    short = ShortlistEvaluator(CandidatePartition(fast), 2)
    assert supports(short, "linear_scores") and not supports(short, "removal_losses")
    with pytest.raises(ValueError, match="unknown evaluator capability 'gradient'"):
        supports(plain, "gradient")


def test_a_missing_capability_fails_up_front_naming_what_needs_it():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    plain = PlainEvaluator(net, masks)
    batches = Recorder(seed=3)
    message = ("method='backward'.* needs an evaluator with removal_losses; LossesOnly does "
               "not have it \\(PlainEvaluator, PrefixCachedEvaluator and FastEvaluator have it\\)")
    for evaluator in (LossesOnly(plain), CandidatePartition(LossesOnly(plain))):
        with pytest.raises(ValueError, match=message.replace("LossesOnly", ".*")):
            backward_elimination(units, masks, evaluator, batches, MaxFraction(0.5),
                                 SelectionSettings())
    assert batches.seen == []  # not one batch drawn, no mask touched
    assert all(bool((w == 1).all()) for w in masks.weights.values())
    with pytest.raises(ValueError, match=message):
        require(LossesOnly(plain), "removal_losses", "greedy backward elimination "
                "(method='backward')")
    with pytest.raises(ValueError, match="shortlist.*linear_scores; PlainEvaluator .*"
                                         "FastEvaluator has it"):
        ShortlistEvaluator(plain, 4)
    with pytest.raises(ValueError, match="shortlist.*linear_scores; CandidatePartition"):
        ShortlistEvaluator(CandidatePartition(plain), 4)
    short = ShortlistEvaluator(FastEvaluator(net, splits=None), 2)
    with pytest.raises(ValueError, match="removal_losses; ShortlistEvaluator"):
        backward_elimination(units, masks, short, batches, MaxFraction(0.5), SelectionSettings())


def test_stop_rule_targets_and_the_unit_seed():
    unit = tiny_units()[0]  # 8 channels
    assert StopRule().target(unit) is None
    assert LossGap(0.1, 1.0, measure=None).target(unit) is None  # decided by the measurement
    assert MaxFraction(0.3).target(unit) == 3
    assert MatchKept({"u1": 5}).target(unit) == 5
    assert RankZeroStop(MaxFraction(0.3)).target(unit) == 3  # no process group needed
    assert RankZeroStop(LossGap(0.1, 1.0, measure=None)).target(unit) is None
    assert [unit_seed(seed, i) for seed, i in ((0, 0), (0, 3), (2, 1))] == [0, 3, 2_000_007]


def test_fixed_size_selections():
    net, units = tiny_net(), tiny_units()
    unit = units[0]
    scores = magnitude_scores(net, unit)
    assert torch.allclose(scores, net[0].weight.abs().sum((1, 2, 3)))
    top3 = fixed_size_counts("magnitude", net, unit, 3, torch.Generator())
    assert set(torch.nonzero(top3).flatten().tolist()) == set(scores.topk(3).indices.tolist())
    assert fixed_size_counts("uniform", net, unit, 3, torch.Generator()).tolist() == \
        [1, 1, 1, 0, 0, 0, 0, 0]
    a = fixed_size_counts("random", net, unit, 3, torch.Generator().manual_seed(0))
    b = fixed_size_counts("random", net, unit, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and int(a.sum()) == 3


def trained_net() -> tuple[nn.Module, list[Unit], list, list]:
    """A small conv net trained briefly on the learnable synthetic dataset."""
    torch.manual_seed(0)
    train, _ = data.build_dataset("synthetic", None, "train", image_size=16, augment=False,
                                  num_images=1200)
    val, _ = data.build_dataset("synthetic", None, "val", image_size=16, num_images=400)
    net = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    for _ in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    net.eval()
    units = [
        Unit("u1", ChannelSpace("c1", 24, ("0", "1"), ("3",)), "3", "input", "0", producer="0"),
        Unit("u2", ChannelSpace("c2", 32, ("3", "4"), ("8",)), "8", "input", "3", producer="3"),
    ]
    selection = list(torch.utils.data.DataLoader(train, batch_size=100))
    held_out = list(torch.utils.data.DataLoader(val, batch_size=200))
    return net, units, selection, held_out


def test_greedy_beats_random_and_magnitude_at_equal_kept_channels():
    net, units, selection, held_out = trained_net()
    dense_loss, dense_top1 = loss_and_top1(net, held_out)
    assert dense_top1 > 0.5  # a trained model, as the comparison requires

    masks = Masks(net, units)
    batches = iter(selection * 100)
    counts = greedy_forward_selection(units, masks, PlainEvaluator(net, masks), batches,
                                      MaxFraction(0.25), SelectionSettings())
    greedy_loss, _ = loss_and_top1(net, held_out)
    kept = {name: int((c > 0).sum()) for name, c in counts.items()}
    assert kept == {"u1": 6, "u2": 8}

    def loss_of(method: str, seed: int = 0) -> float:
        generator = torch.Generator().manual_seed(seed)
        for unit in units:
            c = fixed_size_counts(method, net, unit, MatchKept(kept).target(unit), generator)
            masks.set_counts(unit.name, c)
        return loss_and_top1(net, held_out)[0]

    magnitude = loss_of("magnitude")
    randoms = [loss_of("random", seed) for seed in range(5)]
    print(f"dense {dense_loss:.3f}  greedy {greedy_loss:.3f}  magnitude {magnitude:.3f}  "
          f"random {sum(randoms) / 5:.3f} (min {min(randoms):.3f})")
    assert greedy_loss < magnitude
    assert greedy_loss < min(randoms)
