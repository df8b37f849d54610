"""Prunable units: the channel groups that greedy selection chooses from.

A *unit* is one layer h of Algorithm 1 (Ye et al., 2020): a set of N_h channels ("neurons")
whose mixture sum_{j in S} sigma_j / |S| is what the selection builds. The engine only needs to
know two things about a unit, both given by the architecture code in ``models/``:

* where the unit's mixing weights act (``site``, and whether on its input or its output), so the
  masked network computes f_S exactly;
* which layers carry those channels (its ``ChannelSpace``), so the slim network can drop them.

Several units may share one channel space: MobileNetV2's block outputs inside a stage are added
into one residual stream, so a channel can only be removed from the stream when *every* block of
the stage dropped it. Everything here is plain data, so that ``pruning/`` stays model-agnostic.

The fast evaluators need one thing more: the network cut at each unit (``UnitSplit``). Units and
splits are the whole contract between an architecture (``models/``) and the engine.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class ChannelSpace:
    """Channels that exist in several layers at once and are removed together.

    ``producers`` are modules whose *output* channels are these channels (a conv's out dim, a
    BatchNorm, or a depthwise conv, whose input and output are the same channels);
    ``consumers`` are modules whose *input* channels are these channels (a conv's in dim, a
    Linear's in features).
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class Unit:
    """One layer of Algorithm 1: N channels, a mask site, and the space the channels live in.

    The mixing weights multiply the ``side`` ("input" or "output") of module ``site``. For a
    hidden layer that is the input of the linear layer that consumes it (projection conv,
    conv2): this is sum_{j in S} w_j sigma_j. ``block`` names the enclosing block whose input does
    not depend on this unit; faster evaluators cache everything before it.
    """

    name: str
    space: ChannelSpace
    site: str
    side: Literal["input", "output"]
    block: str

    @property
    def size(self) -> int:
        return self.space.size


def spaces_of(units: list[Unit]) -> dict[str, ChannelSpace]:
    """The distinct channel spaces of ``units``, in order of first appearance."""
    spaces: dict[str, ChannelSpace] = {}
    for unit in units:
        known = spaces.setdefault(unit.space.name, unit.space)
        if known != unit.space:
            raise ValueError(f"two different channel spaces are both named {unit.space.name!r}")
    return spaces


def check_units(model, units: list[Unit]) -> None:
    """Fail early, with the unit's name, if a unit refers to a module the model lacks."""
    names = dict(model.named_modules())
    for unit in units:
        for module in (unit.site, *unit.space.producers, *unit.space.consumers):
            if module not in names:
                raise ValueError(f"unit {unit.name!r} refers to module {module!r}, not in model")
    seen = set()
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"unit name {unit.name!r} used twice")
        seen.add(unit.name)


Tensor = torch.Tensor


@dataclass(frozen=True)
class UnitSplit:
    """The network cut at one unit, for the fast evaluators (``pruning.fast_evaluators``).

    Algorithm 1 scores every candidate k by the loss of the network with f_{S+{k}}; a split lets
    the evaluator reuse everything that does not depend on k. Every part calls modules as
    modules, so the ``Masks`` hooks of all other units apply as in the plain forward; the unit's
    own mask is the only one bypassed (the evaluator applies it itself).

    ``prefix(x) -> z``: the input of the unit's block (``Unit.block``), fixed during a step.
    ``hidden(z) -> (h, skip)``: the unit's N channels before mixing (for an input-side unit,
    the consumer's input; for a block-output unit, the output it masks, computed without its own
    hook) and what the rest of the block needs besides them (the residual input).
    ``consumer``: the conv that mixes h (called functionally), or None when the mixture is the
    block's output itself. ``tail(skip, out) -> logits`` for ``out`` holding any number of
    B-sample copies stacked along the batch (see ``plus_stacked``). ``rest(z) -> logits``: the
    plain network from z, bypassing nothing: the reference the other parts must agree with.
    """

    prefix: Callable[[Tensor], Tensor]
    hidden: Callable[[Tensor], tuple[Tensor, Tensor]]
    consumer: nn.Conv2d | None
    tail: Callable[[Tensor, Tensor], Tensor]
    rest: Callable[[Tensor], Tensor]


Splitter = Callable[[Unit], UnitSplit]


def plus_stacked(stacked: Tensor, skip: Tensor) -> Tensor:
    """``stacked`` (c*B samples: c candidates of one B-sample batch) plus ``skip`` (B samples).

    The residual input is the same for every candidate, so it is broadcast, never copied c times.
    """
    copies = stacked.shape[0] // skip.shape[0]
    return (stacked.unflatten(0, (copies, skip.shape[0])) + skip).flatten(0, 1)
