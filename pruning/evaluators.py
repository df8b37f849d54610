"""Candidate evaluators: the inner loop of Algorithm 1, and the contracts they follow.

At each greedy step, for every candidate channel k of the unit being selected, Algorithm 1 needs
the loss l_k of the network whose layer is f_{S + {k}} on the step's mini-batch. An evaluator
computes those losses; the selector only compares them. Any evaluator that returns the same
numbers can replace another without the selector noticing, which is how faster evaluators are
swapped in.

``CandidateEvaluator`` is the whole contract callers see: ``losses`` is required;
``removal_losses`` and ``linear_scores`` are optional capabilities. Code that needs an optional
one checks it up front with ``require`` (or asks ``supports``), the only place capabilities are
checked, so a bad combination fails before any work. Wrappers (``CandidatePartition``,
``ShortlistEvaluator``) have an optional method only when what they wrap has it, so ``supports``
answers truthfully for them too.

``TrialEvaluator`` is the contract an exact evaluator implements: it owns the loop over the
candidates (both directions, chunked, one host read per step) and asks its subclass, through the
one abstract method ``trials``, only how a chunk of candidates' losses is computed.
``PlainEvaluator`` and the evaluators of ``pruning.fast_evaluators`` are ``TrialEvaluator``s.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pruning.masks import Masks
from pruning.metrics import Batch
from pruning.precision import exact
from pruning.units import Unit


class CandidateEvaluator(Protocol):
    """Per-candidate scores of one greedy step of one unit.

    Common to every method: ``unit`` is the unit being searched; ``counts`` (long, length
    ``unit.size``, on the CPU) is its current selection, the multiplicity of each channel;
    ``candidates`` (long, 1-D, on the CPU, possibly empty) are channel indices of ``unit``;
    ``batch`` is the step's ``(x, y)`` on the model's device. The result is a float64 CPU tensor
    of shape ``candidates.shape``, entry i for channel ``candidates[i]``, read from the device
    once per call: one host sync per greedy step, never one per candidate (a wrapper adds a
    fixed number of its own: the shortlist reads its linear scores first, the partition its
    all-gather). The other units' masks are used as installed; the unit's own mask is
    ``counts`` on return whenever it was on entry (the selectors install it before each step).

    ``losses`` is required. ``removal_losses`` and ``linear_scores`` are optional: an evaluator
    has one exactly when it defines the method (``supports``). A type checker reads all three
    as members of the protocol; the optional ones are checked at run time by ``require``.
    """

    def losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Loss l_k of the network with ``counts + e_k`` for each k in ``candidates``.

        Mean cross-entropy on ``batch``, in eval mode: greedy forward selection takes the argmin.
        A wrapper may return +inf for a candidate it chose not to evaluate (the shortlist).
        """
        ...

    def removal_losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Optional. Loss with ``counts - e_k`` for each k in ``candidates`` (``counts[k] >= 1``).

        Greedy backward elimination (``pruning.baselines``) removes the argmin. With nothing
        left (``counts - e_k == 0``) the unit contributes zero. Same shapes, devices, dtype and
        single host read as ``losses``. ``PlainEvaluator`` and ``FastEvaluator`` have it.
        """
        ...

    def linear_scores(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Optional. d loss / d w_k at the current mixing weights, for each k in ``candidates``.

        The first-order (Frank-Wolfe) score that ``pruning.shortlist`` ranks candidates by: its
        argmin is the Frank-Wolfe vertex. Needs autograd (not under ``torch.no_grad``); computed
        in IEEE float32 whatever the evaluator's candidate precision. Same shapes, devices,
        dtype and single host read as ``losses``. ``FastEvaluator`` has it.
        """
        ...


# The optional capabilities: what each is for, and which evaluators have it.
CAPABILITIES = {
    "removal_losses": "PlainEvaluator, PrefixCachedEvaluator and FastEvaluator have it",
    "linear_scores": "FastEvaluator has it",
}


def supports(evaluator: object, capability: str) -> bool:
    """Whether ``evaluator`` has the optional ``capability`` (a key of ``CAPABILITIES``).

    True exactly when it has the method; the protocol's own stubs (inherited by a class that
    subclasses ``CandidateEvaluator`` explicitly) do not count.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown evaluator capability {capability!r}: "
                         f"expected one of {sorted(CAPABILITIES)}")
    method = getattr(evaluator, capability, None)
    stub = getattr(CandidateEvaluator, capability)
    return callable(method) and getattr(method, "__func__", method) is not stub


def require(evaluator: object, capability: str, purpose: str) -> None:
    """``ValueError`` unless ``evaluator`` ``supports`` ``capability``; ``purpose`` names what
    needs it, e.g. ``require(evaluator, "removal_losses", "backward elimination")``."""
    if not supports(evaluator, capability):
        raise ValueError(f"{purpose} needs an evaluator with {capability}; "
                         f"{type(evaluator).__name__} does not have it "
                         f"({CAPABILITIES[capability]})")


#: What ``TrialEvaluator.trials`` yields: the losses of one chunk of candidates, and the most
#: candidates a chunk may hold
Trials = tuple[Callable[[torch.Tensor], torch.Tensor], int]


class TrialEvaluator(ABC):
    """The candidate loop of Algorithm 1's step, written once for every exact evaluator.

    An exact evaluator's ``losses`` tries each candidate k: the network with the unit's counts
    moved by one, ``counts + e_k`` (forward selection) or ``counts - e_k`` (``removal_losses``,
    backward elimination), on the step's batch. This class walks the candidates chunk by chunk,
    in eval mode, without autograd, in IEEE float32 (``pruning.precision``), and reads all the
    step's losses back from the device at once, as ``CandidateEvaluator`` requires. A subclass
    says only how one chunk's losses are computed, in ``trials``, and has ``self.model``.
    """

    model: nn.Module

    def losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Loss with ``counts + e_k`` for each k in ``candidates`` (greedy forward selection)."""
        return self._scan(unit, counts, candidates, batch, +1)

    def removal_losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Loss with ``counts - e_k`` for each k: the score of greedy backward elimination."""
        return self._scan(unit, counts, candidates, batch, -1)

    @torch.no_grad()
    @exact
    def _scan(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch, sign: int
    ) -> torch.Tensor:
        self.model.eval()
        on_device = candidates.to(batch[0].device)  # one copy, not one per chunk
        with self.trials(unit, counts, sign, batch) as (chunk_losses, size):
            parts = [chunk_losses(on_device[start:start + size])
                     for start in range(0, len(on_device), size)]
        return torch.cat(parts).cpu() if parts else torch.empty(0, dtype=torch.float64)

    @abstractmethod
    def trials(
        self, unit: Unit, counts: torch.Tensor, sign: int, batch: Batch
    ) -> AbstractContextManager[Trials]:
        """Set up one step's trials of ``counts + sign * e_k`` and yield ``(chunk_losses, size)``.

        ``unit``, ``counts`` (long, CPU) and ``batch`` (``(x, y)`` on the model's device) are
        those of the ``CandidateEvaluator`` call; ``sign`` is +1 (``losses``) or -1
        (``removal_losses``). Work shared by all candidates (a cached prefix, the step's hidden
        channels) is done on entry. ``chunk_losses(ks)``, for ``ks`` a non-empty chunk of at most
        ``size`` candidate indices (long, on the batch's device), returns their mean
        cross-entropies on ``batch`` as float64 of shape ``ks.shape`` on that device, without
        reading the device. The unit's mask is ``counts`` on exit whenever it was on entry.
        """


@contextmanager
def masked_trials(
    masks: Masks, unit: Unit, trial: torch.Tensor, sign: int, loss: Callable[[], torch.Tensor]
) -> Iterator[Trials]:
    """``TrialEvaluator.trials`` through the masks' hooks: each candidate's counts are installed
    in turn, one per chunk (the masks hold one selection at a time), and ``loss()`` (a float64
    tensor of shape (1,)) is the network's loss as installed. ``trial`` is the caller's copy of
    the counts on the batch's device, edited in place there: no host sync per candidate.
    """

    def chunk_losses(ks: torch.Tensor) -> torch.Tensor:
        trial[ks] += sign
        masks.set_counts(unit.name, trial)
        result = loss()
        trial[ks] -= sign
        return result

    yield chunk_losses, 1
    masks.set_counts(unit.name, trial)


class PlainEvaluator(TrialEvaluator):
    """One full forward pass of the whole network per candidate, as the released code does.

    Exact and architecture-free, so it is the reference every faster evaluator is tested against:
    it runs in IEEE float32 (``pruning.precision``). The unit's mask is restored to ``counts``
    before returning.
    """

    def __init__(self, model: nn.Module, masks: Masks):
        self.model = model
        self.masks = masks

    def trials(
        self, unit: Unit, counts: torch.Tensor, sign: int, batch: Batch
    ) -> AbstractContextManager[Trials]:
        x, y = batch
        return masked_trials(self.masks, unit, counts.to(x.device, copy=True), sign,
                             lambda: F.cross_entropy(self.model(x).float(), y).double().view(1))
