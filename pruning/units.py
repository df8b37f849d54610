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

Some blocks read their channels twice. A squeeze-excitation block (MobileNetV3) computes a
per-channel gate from the spatial mean of *all* its channels and multiplies the channels by it, so
removing channel j changes every other channel's gate too. Masking only the mixing site would let
the gate still see the removed channels, and the slim network (where they are gone) would compute
another function. Such a unit is *gated*: it names, besides its mixing site, the modules whose
input must read its removed channels as zero (``Unit.gates``). The masks multiply those inputs by
the 0/1 indicator of the selection, and slimming removes the channels from the gate's layers too
(they are producers and consumers of the unit's channel space). The additive shortcut of the fast
evaluator (a candidate is a rank-one update of the consumer's output) holds exactly for units
without gates only; a gated unit is evaluated by re-gating every candidate
(``pruning.fast_evaluators``).

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

    ``producer``: the conv whose output filters make the unit's channels (MobileNetV2's expand
    conv, ResNet's conv1, a block's projection conv for a block-output unit); the magnitude
    baseline ranks channels by its filters' norms. None: the unit has no such conv, and the
    magnitude baseline refuses it.

    ``gates``: modules whose *input* carries the unit's channels and must see its removed
    channels as zero (a squeeze-excitation block: see the module docstring). Empty for a unit
    whose channels reach the network only through the mixing site, i.e. for which the fast
    evaluator's additive shortcut is exact (``additive``).
    """

    name: str
    space: ChannelSpace
    site: str
    side: Literal["input", "output"]
    block: str
    producer: str | None = None
    gates: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def additive(self) -> bool:
        """Whether adding a channel changes only its own term of the mixture (no gate reads the
        others), so a candidate is a rank-one update of the consumer's output."""
        return not self.gates


def spaces_of(units: list[Unit]) -> dict[str, ChannelSpace]:
    """The distinct channel spaces of ``units``, in order of first appearance."""
    spaces: dict[str, ChannelSpace] = {}
    for unit in units:
        known = spaces.setdefault(unit.space.name, unit.space)
        if known != unit.space:
            raise ValueError(f"two different channel spaces are both named {unit.space.name!r}")
    return spaces


def check_units(model, units: list[Unit]) -> None:
    """Fail early, with the unit's name, if a unit refers to a module the model lacks, names a
    producer that is not a conv, or is gated in a channel space it shares with other units (the
    slim network keeps a shared space's union, which a gate would still see)."""
    names = dict(model.named_modules())
    sharing: dict[str, int] = {}
    for unit in units:
        sharing[unit.space.name] = sharing.get(unit.space.name, 0) + 1
        extra = (unit.producer,) if unit.producer is not None else ()
        for module in (unit.site, *unit.space.producers, *unit.space.consumers, *extra,
                       *unit.gates):
            if module not in names:
                raise ValueError(f"unit {unit.name!r} refers to module {module!r}, not in model")
        if unit.producer is not None and not isinstance(names[unit.producer], nn.Conv2d):
            raise ValueError(f"unit {unit.name!r}: producer {unit.producer!r} is not a conv")
    seen = set()
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"unit name {unit.name!r} used twice")
        seen.add(unit.name)
        if unit.gates and sharing[unit.space.name] > 1:
            raise ValueError(f"unit {unit.name!r} is gated but shares its channel space "
                             f"{unit.space.name!r} with other units")


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

    ``gate(pooled) -> scale``, for a gated unit only (``Unit.gates``): the block's per-channel
    multiplier computed from ``pooled``, the spatial mean of the gated channels (any number of
    samples, shape (n, N, 1, 1)); the block then mixes ``h * scale``. For a squeeze-excitation
    block that is fc1, its activation, fc2 and the scale activation. The evaluator pools h once
    per step and zeroes the pooled entries of each candidate's removed channels itself.
    """

    prefix: Callable[[Tensor], Tensor]
    hidden: Callable[[Tensor], tuple[Tensor, Tensor]]
    consumer: nn.Conv2d | None
    tail: Callable[[Tensor, Tensor], Tensor]
    rest: Callable[[Tensor], Tensor]
    gate: Callable[[Tensor], Tensor] | None = None


Splitter = Callable[[Unit], UnitSplit]


def plus_stacked(stacked: Tensor, skip: Tensor) -> Tensor:
    """``stacked`` (c*B samples: c candidates of one B-sample batch) plus ``skip`` (B samples).

    The residual input is the same for every candidate, so it is broadcast, never copied c times.
    """
    copies = stacked.shape[0] // skip.shape[0]
    return (stacked.unflatten(0, (copies, skip.shape[0])) + skip).flatten(0, 1)
