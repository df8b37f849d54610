"""The selections greedy forward selection is compared against, on the same units and masks.

* ``backward_elimination`` -- greedy backward elimination (Ye et al., 2020, Section 3.5 and
  Appendix 11): start from all N channels and repeatedly remove the one whose removal raises the
  loss least, scored on a fresh mini-batch by the same evaluator and loss as forward selection.
* ``magnitude`` -- keep the k channels whose producing filters have the largest L1 norm, the
  classic backward-style criterion (Li et al., 2017).
* ``random`` -- k channels uniformly at random: what selection must beat to mean anything.
* ``uniform`` -- the first k channels of every unit, i.e. a uniformly thinner network (the
  paper's "Uniform" rows, which are then trained from scratch).

The last three need a per-unit size k; they use the data-free ``MaxFraction`` / ``MatchKept``
targets. All return selection counts, so the masks, physical removal, checkpoints and reports
are shared with greedy selection.
"""

import functools

import torch
from torch import nn

from pruning.selection import BACKWARD, layer_by_layer, search_unit
from pruning.units import Unit

FIXED_SIZE_METHODS = ("magnitude", "random", "uniform")


def producing_conv(model: nn.Module, unit: Unit) -> nn.Conv2d:
    """The conv whose filters make the unit's channels, as the unit declares it
    (``Unit.producer``: MobileNetV2's expand conv, ResNet's conv1, a block's projection conv)."""
    if unit.producer is None:
        raise ValueError(f"method 'magnitude': unit {unit.name} declares no producer conv")
    conv = model.get_submodule(unit.producer)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"unit {unit.name}: producer {unit.producer} is not a convolution")
    return conv


def magnitude_scores(model: nn.Module, unit: Unit) -> torch.Tensor:
    """L1 norm of each output filter of the producing conv."""
    return producing_conv(model, unit).weight.detach().abs().flatten(1).sum(1).cpu()


def fixed_size_counts(
    method: str, model: nn.Module, unit: Unit, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Counts (0 or 1) of a k-channel selection by ``method`` in FIXED_SIZE_METHODS."""
    if not 1 <= k <= unit.size:
        raise ValueError(f"unit {unit.name}: cannot keep {k} of {unit.size} channels")
    if method == "magnitude":
        keep = torch.argsort(magnitude_scores(model, unit), descending=True, stable=True)[:k]
    elif method == "random":
        keep = torch.randperm(unit.size, generator=generator)[:k]
    elif method == "uniform":
        keep = torch.arange(k)
    else:
        raise ValueError(f"method: expected one of {FIXED_SIZE_METHODS}, got {method!r}")
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[keep] = 1
    return counts


#: Greedy backward elimination for one unit: ``search_unit`` in the other direction. With a size
#: target (``stop.target``) channels are removed until only that many remain; with a quality rule
#: (loss gap, top-1 tolerance) they are removed while the rule still holds after the removal, and
#: the first removal that breaks it is undone.
eliminate_unit = functools.partial(search_unit, direction=BACKWARD)

#: Backward elimination over all units, input to output (``layer_by_layer`` backward; the
#: evaluator must have ``removal_losses``, checked before any work)
backward_elimination = functools.partial(layer_by_layer, direction=BACKWARD)
