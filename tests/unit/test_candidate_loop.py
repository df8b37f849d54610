"""``TrialEvaluator`` owns the loop over a step's candidates; evaluators only score a chunk.

The loop (both directions, chunked, eval mode, one host read per call) is written once in
``pruning.evaluators``; these tests pin what it promises every subclass, and that the exact
evaluators built on it still compute what the direct per-candidate loop computes, bit for bit.
"""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import models
from models import splitter
from pruning.evaluators import PlainEvaluator, TrialEvaluator, supports
from pruning.fast_evaluators import FastEvaluator, PrefixCachedEvaluator, stacked_losses
from pruning.masks import Masks
from tests.support.nets import (RTOL, Recorder, batch, make_model, select_some, tiny_net,
                                tiny_units)


class Chunks(TrialEvaluator):
    """Loss = candidate index + sign / 10, in chunks of ``size``; records what the loop asks."""

    def __init__(self, size: int):
        self.model, self.size = tiny_net(), size
        self.entered, self.exited, self.chunks = 0, 0, []

    @contextmanager
    def trials(self, unit, counts, sign, batch):
        self.entered += 1

        def chunk_losses(ks):
            self.chunks.append(ks.tolist())
            return ks.double() + sign / 10

        yield chunk_losses, self.size
        self.exited += 1


def test_the_loop_walks_the_candidates_in_chunks_once_per_call():
    unit, counts, data = tiny_units()[0], torch.zeros(8, dtype=torch.long), batch(0, 2, 8)
    evaluator = Chunks(3)
    evaluator.model.train()
    got = evaluator.losses(unit, counts, torch.tensor([5, 0, 7, 1, 1, 2, 6]), data)
    assert evaluator.chunks == [[5, 0, 7], [1, 1, 2], [6]]
    assert torch.equal(got, torch.tensor([5, 0, 7, 1, 1, 2, 6], dtype=torch.float64) + 0.1)
    assert got.device.type == "cpu" and not evaluator.model.training  # losses in eval mode
    removal = evaluator.removal_losses(unit, counts, torch.tensor([4]), data)
    assert torch.equal(removal, torch.tensor([3.9], dtype=torch.float64))
    empty = evaluator.losses(unit, counts, torch.empty(0, dtype=torch.long), data)
    assert empty.dtype == torch.float64 and empty.shape == (0,)
    assert evaluator.chunks[-1] == [4] and (evaluator.entered, evaluator.exited) == (3, 3)


def test_an_evaluator_without_trials_cannot_be_built():
    class Incomplete(TrialEvaluator):
        pass

    with pytest.raises(TypeError, match="trials"):
        Incomplete()


def test_the_plain_losses_are_bit_for_bit_the_direct_loop():
    net, units = tiny_net(), tiny_units()
    masks = Masks(net, units)
    unit, (x, y) = units[1], next(Recorder(4))  # tiny_net has 4 classes
    counts = torch.tensor([1, 0, 2, 0, 1, 0])
    masks.set_counts(unit.name, counts)
    before = masks.weights[unit.name].clone()
    plain = PlainEvaluator(net, masks)
    for sign, method, candidates in ((+1, "losses", [0, 1, 3, 5, 5]),
                                     (-1, "removal_losses", [0, 2, 4])):
        direct = []
        with torch.no_grad():
            for k in candidates:
                trial = counts.clone()
                trial[k] += sign
                masks.set_counts(unit.name, trial)
                direct.append(F.cross_entropy(net(x).float(), y).double())
        masks.set_counts(unit.name, counts)
        got = getattr(plain, method)(unit, counts, torch.tensor(candidates), (x, y))
        assert torch.equal(got, torch.stack(direct))
        assert torch.equal(masks.weights[unit.name], before)  # the mask is counts again


def test_the_prefix_evaluator_scores_removals_through_the_same_loop():
    """A ``TrialEvaluator`` has ``removal_losses`` by construction: the prefix-cached one's are
    the plain ones, and the same as the direct loop from the cached block input."""
    arch = "mobilenet_v2"
    model = make_model(arch)
    units = models.prunable_units(arch, model)
    masks = Masks(model, units)
    select_some(units, masks)
    splits = splitter(arch, model)
    prefix, plain = PrefixCachedEvaluator(model, masks, splits), PlainEvaluator(model, masks)
    assert all(isinstance(e, TrialEvaluator) and supports(e, "removal_losses")
               for e in (prefix, plain, FastEvaluator(model, splits)))
    unit, data = units[3], batch(5)
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[[1, 4, 9]] = torch.tensor([1, 2, 1])
    masks.set_counts(unit.name, counts)
    selected = torch.tensor([1, 4, 9])
    got = prefix.removal_losses(unit, counts, selected, data)
    torch.testing.assert_close(got, plain.removal_losses(unit, counts, selected, data),
                               rtol=RTOL, atol=0)
    split, direct = splits(unit), []
    with torch.no_grad():
        z = split.prefix(data[0])
        for k in selected.tolist():
            trial = counts.clone()
            trial[k] -= 1
            masks.set_counts(unit.name, trial)
            direct.append(stacked_losses(split.rest(z), data[1]))
    assert torch.equal(got, torch.cat(direct))
