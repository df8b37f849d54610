"""The fast evaluators compute exactly what PlainEvaluator computes (fp32, CPU).

PlainEvaluator (one full masked forward per candidate) is the reference: every faster evaluator
must return the same per-candidate losses for every unit kind of both architectures, with other
units carrying non-trivial selections, and a whole greedy selection must pick the same channels.
"""

import pytest
import torch
import torch.nn.functional as F

import models
from models import splitter
from pruning.evaluators import PlainEvaluator
from pruning.fast_evaluators import FastEvaluator, PrefixCachedEvaluator
from pruning.masks import Masks, mixing_weights
from pruning.metrics import SubsetMeasure, loss_and_top1
from pruning.selection import SelectionSettings, greedy_forward_selection
from pruning.shortlist import ShortlistEvaluator, shortlist
from pruning.stop import MaxFraction
from tests.support.nets import (RTOL, Batches, Recording, assert_same_selection, batch,
                                make_model, run_selection, select_some)

CASES = [("mobilenet_v2", "hidden+outputs"), ("resnet34", "inner")]


@pytest.mark.parametrize("arch,kind", CASES)
def test_every_unit_gets_the_plain_losses(arch, kind):
    model = make_model(arch)
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    select_some(units, masks)
    splits = splitter(arch, model)
    plain = PlainEvaluator(model, masks)
    prefix = PrefixCachedEvaluator(model, masks, splits)
    one_at_a_time, stacked = FastEvaluator(model, splits, 1), FastEvaluator(model, splits, 24)
    generator = torch.Generator().manual_seed(2)
    step_batch = batch(3)
    kinds_seen = set()
    if arch == "resnet34":  # the first block of each stage (three with a downsample), the last
        units = [u for u in units if u.name.endswith(".0.inner")] + units[-1:]
    for unit in units:
        others = masks.weights[unit.name].clone()  # restored below: later units see it
        counts = torch.zeros(unit.size, dtype=torch.long)  # S = {a, b, b}: a repeat
        counts[torch.randperm(unit.size, generator=generator)[:2]] = torch.tensor([1, 2])
        masks.set_counts(unit.name, counts)
        before = masks.weights[unit.name].clone()
        # selected and unselected channels, one twice, and an incomplete last chunk (24 // 8 = 3)
        candidates = torch.cat([torch.nonzero(counts).flatten(),
                                torch.randint(0, unit.size, (4,), generator=generator)])
        candidates = torch.cat([candidates, candidates[-1:]])
        reference = plain.losses(unit, counts, candidates, step_batch)
        spread = reference.max() - reference.min()
        assert spread > 20 * RTOL * reference.mean(), "losses too alike to test"
        for evaluator in (prefix, one_at_a_time, stacked):
            got = evaluator.losses(unit, counts, candidates, step_batch)
            torch.testing.assert_close(got, reference, rtol=RTOL, atol=0)
            assert torch.equal(masks.weights[unit.name], before)  # the mask is left as it was
        selected = torch.nonzero(counts).flatten()  # backward elimination: S - {k}
        torch.testing.assert_close(
            stacked.removal_losses(unit, counts, selected, step_batch),
            plain.removal_losses(unit, counts, selected, step_batch), rtol=RTOL, atol=0)
        kinds_seen.add((unit.side, splits(unit).consumer is None))
        masks.set_weights(unit.name, others)
    assert kinds_seen == ({("input", False), ("output", True)} if arch == "mobilenet_v2"
                          else {("input", False)})


def test_first_selection_and_last_removal_where_the_unit_is_empty():
    model = make_model("mobilenet_v2")
    units = models.prunable_units("mobilenet_v2", model, "hidden+outputs")
    masks = Masks(model, units)
    splits = splitter("mobilenet_v2", model)
    plain, fast = PlainEvaluator(model, masks), FastEvaluator(model, splits)
    for unit in (units[0], units[2]):  # block 1's hidden unit (prefix = input), an output unit
        empty = torch.zeros(unit.size, dtype=torch.long)
        masks.set_counts(unit.name, empty)
        candidates = torch.arange(unit.size)
        torch.testing.assert_close(fast.losses(unit, empty, candidates, batch(4)),
                                   plain.losses(unit, empty, candidates, batch(4)),
                                   rtol=RTOL, atol=0)
        one = torch.zeros(unit.size, dtype=torch.long)
        one[3] = 1
        masks.set_counts(unit.name, one)
        torch.testing.assert_close(fast.removal_losses(unit, one, torch.tensor([3]), batch(4)),
                                   plain.removal_losses(unit, one, torch.tensor([3]), batch(4)),
                                   rtol=RTOL, atol=0)


@pytest.mark.parametrize("arch,kind,selected,settings,batch_size,fraction", [
    ("mobilenet_v2", "hidden+outputs",
     ("features.1.hidden", "features.2.output", "features.3.hidden"),
     SelectionSettings(candidates=8, replacement=True), 8, 0.25),
    ("resnet34", "inner", ("layer1.1.inner", "layer2.0.inner"),
     SelectionSettings(candidates=6, replacement=False, seed=3), 4, 0.05),
])
def test_greedy_selection_is_the_same_as_with_the_plain_evaluator(arch, kind, selected, settings,
                                                                   batch_size, fraction):
    model = make_model(arch)
    units = models.prunable_units(arch, model, kind)
    splits = splitter(arch, model)
    recorded = []

    def plain(m, masks):
        recorded.append(Recording(PlainEvaluator(m, masks)))
        return recorded[-1]

    def run(evaluator):
        return run_selection(model, units, selected, evaluator, settings, batch_size, fraction)

    reference = run(plain)
    assert len(reference[1]) >= 10
    assert len({best for _, best, _ in reference[1]}) > 3  # not one channel over and over
    # every step's best beats the runner-up by far more than float32 rounding: no tie decides
    gaps = [(s.sort().values[1] - s.min()) / s.min() for s in recorded[0].steps]
    assert min(gaps) > 1e-5
    assert_same_selection(reference, run(lambda m, masks: FastEvaluator(m, splits, 16)))
    everything = run(  # K = all candidates: no scores, plain exact greedy
        lambda m, masks: ShortlistEvaluator(FastEvaluator(m, splits, 16), 10_000))
    assert_same_selection(reference, everything)


@pytest.mark.parametrize("arch,name", [
    ("mobilenet_v2", "features.1.hidden"), ("mobilenet_v2", "features.4.output"),
    ("mobilenet_v2", "features.17.hidden"), ("resnet34", "layer2.0.inner"),
])
def test_linear_scores_are_the_gradient_of_the_loss_in_the_mixing_weights(arch, name):
    """The Frank-Wolfe score of channel k is d loss / d w_k of the plain masked network."""
    model = make_model(arch)
    units = models.prunable_units(arch, model, "hidden+outputs" if arch != "resnet34" else None)
    masks = Masks(model, units)
    select_some(units, masks)
    unit = next(u for u in units if u.name == name)
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[1], counts[3] = 1, 2  # S = {1, 3, 3}
    x, y = batch(6)
    weights = mixing_weights(counts).requires_grad_(True)
    masks.weights[unit.name] = weights  # the hooks read this entry at call time
    (expected,) = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    masks.weights[unit.name] = mixing_weights(counts)
    candidates = torch.randperm(unit.size, generator=torch.Generator().manual_seed(0))[:20]
    scores = FastEvaluator(model, splitter(arch, model)).linear_scores(unit, counts, candidates,
                                                                       (x, y))
    torch.testing.assert_close(scores, expected[candidates].double(), rtol=1e-4, atol=1e-7)
    assert scores.abs().max() > 1e-3


def test_shortlist_order_puts_the_frank_wolfe_vertex_first_even_among_ties():
    scores = torch.tensor([0.5, -1.0, 2.0, -1.0, -3.0, -3.0, 0.0])
    positions = shortlist(scores, 3)
    assert positions.tolist() == [4, 5, 1]
    assert int(positions[0]) == int(torch.argmin(scores))
    assert shortlist(scores, 100).tolist() == [4, 5, 1, 3, 6, 0, 2]


class Spy:
    """Records, for every step, the exact losses of all candidates and the linear scores."""

    def __init__(self, fast: FastEvaluator):
        self.fast, self.exact, self.scores = fast, [], []

    def losses(self, unit, counts, candidates, batch):
        return self.fast.losses(unit, counts, candidates, batch)

    def linear_scores(self, unit, counts, candidates, batch):
        self.scores.append(self.fast.linear_scores(unit, counts, candidates, batch))
        self.exact.append(self.fast.losses(unit, counts, candidates, batch))
        return self.scores[-1]


def test_shortlist_picks_the_exact_best_of_the_top_k_and_always_scores_the_vertex():
    model = make_model("mobilenet_v2")
    units = models.prunable_units("mobilenet_v2", model, "hidden")
    masks = Masks(model, units)
    spy = Spy(FastEvaluator(model, splitter("mobilenet_v2", model)))
    evaluator = ShortlistEvaluator(spy, 4)
    picks, returned = [], []

    class Returned:
        def losses(self, unit, counts, candidates, batch):
            returned.append((candidates, evaluator.losses(unit, counts, candidates, batch)))
            return returned[-1][1]

    selected = {"features.3.hidden", "features.6.hidden"}
    greedy_forward_selection(  # without replacement: the pool shrinks, positions != channels
        [u for u in units if u.name in selected], masks, Returned(), Batches(7),
        MaxFraction(0.1), SelectionSettings(replacement=False),
        log_step=lambda unit, step, best, loss, e: picks.append(best))
    assert len(picks) == len(spy.scores) >= 10
    vertex_was_not_best = 0
    for pick, (pool, got), scores, exact in zip(picks, returned, spy.scores, spy.exact):
        listed = torch.isfinite(got)
        assert int(listed.sum()) == 4
        vertex = int(torch.argmin(scores))
        assert listed[vertex]  # the Frank-Wolfe vertex is always evaluated exactly
        torch.testing.assert_close(got[listed], exact[listed], rtol=RTOL, atol=0)
        best = int(torch.nonzero(listed)[torch.argmin(exact[listed])])  # a position in pool
        assert pick == int(pool[best])
        assert exact[best] <= exact[vertex]  # the inequality the proof of Lemma 1 needs
        vertex_was_not_best += best != vertex
    assert vertex_was_not_best > 0  # the exact evaluation of the shortlist does matter


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet34"])
def test_gpu_settings_channels_last_and_bf16_autocast(arch):
    """The GPU defaults, run on CPU: channels_last alone changes nothing beyond rounding;
    bf16 autocast moves the losses by well under a percent; the linear scores stay float32."""
    model = make_model(arch)
    units = models.prunable_units(arch, model)
    masks = Masks(model, units)
    select_some(units, masks)
    unit, candidates = units[5], torch.arange(12)
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[:4] = 1
    masks.set_counts(unit.name, counts)
    reference = PlainEvaluator(model, masks).losses(unit, counts, candidates, batch(8))
    scores = FastEvaluator(model, splitter(arch, model)).linear_scores(unit, counts, candidates,
                                                                       batch(8))
    twin = make_model(arch)  # not a deepcopy: that would copy the hooks too
    twin_masks = Masks(twin, units)
    for name, w in masks.weights.items():
        twin_masks.set_weights(name, w)
    splits = splitter(arch, twin)
    layout = FastEvaluator(twin, splits, 32, channels_last=True)
    torch.testing.assert_close(layout.losses(unit, counts, candidates, batch(8)), reference,
                               rtol=RTOL, atol=0)
    bf16 = FastEvaluator(twin, splits, 32, amp=torch.bfloat16, channels_last=True)
    torch.testing.assert_close(bf16.losses(unit, counts, candidates, batch(8)), reference,
                               rtol=1e-2, atol=0)
    torch.testing.assert_close(bf16.linear_scores(unit, counts, candidates, batch(8)), scores,
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch,kind", CASES)
def test_subset_measure_with_cached_block_inputs_equals_the_full_forward(arch, kind):
    """The stop rule's measurement from a unit's cached block inputs is the full network's, while
    the unit's own mask changes step by step, and is recomputed after ``forget``."""
    model = make_model(arch)
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    select_some(units, masks)
    batches = [batch(30), batch(31, size=5)]
    measure = SubsetMeasure(model, batches, splitter(arch, model))
    for unit in (units[0], units[len(units) // 2], units[-1]):
        for step in range(3):
            counts = torch.zeros(unit.size, dtype=torch.long)
            counts[: 1 + step * unit.size // 3] = 1
            masks.set_counts(unit.name, counts)
            loss, top1 = measure(unit)
            assert measure.cached
            want_loss, want_top1 = loss_and_top1(model, batches)
            assert loss == pytest.approx(want_loss, rel=RTOL)
            assert top1 == want_top1
    unit = units[len(units) // 2]
    measure(unit)
    earlier = units[0]
    masks.set_counts(earlier.name, torch.ones(earlier.size, dtype=torch.long))  # a changed prefix
    measure.forget()
    assert measure(unit)[0] == pytest.approx(loss_and_top1(model, batches)[0], rel=RTOL)
    too_small = SubsetMeasure(model, batches, splitter(arch, model), cache_bytes=0)
    assert too_small(unit)[0] == pytest.approx(loss_and_top1(model, batches)[0], rel=RTOL)
    assert not too_small.cached
