"""Candidate evaluators: the inner loop of Algorithm 1, and the one contract they all follow.

At each greedy step, for every candidate channel k of the unit being selected, Algorithm 1 needs
the loss l_k of the network whose layer is f_{S + {k}} on the step's mini-batch. An evaluator
computes those losses; the selector only compares them. Any evaluator that returns the same
numbers can replace another without the selector noticing, which is how faster evaluators are
swapped in.

``CandidateEvaluator`` is the whole contract: ``losses`` is required; ``removal_losses`` and
``linear_scores`` are optional capabilities. Code that needs an optional one checks it up front
with ``require`` (or asks ``supports``), the only place capabilities are checked, so a bad
combination fails before any work. Wrappers (``CandidatePartition``, ``ShortlistEvaluator``)
have an optional method only when what they wrap has it, so ``supports`` answers truthfully for
them too.
"""

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
    "removal_losses": "PlainEvaluator and FastEvaluator have it",
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
    needs it, e.g. ``require(evaluator, "removal_losses", "--method backward")``."""
    if not supports(evaluator, capability):
        raise ValueError(f"{purpose} needs an evaluator with {capability}; "
                         f"{type(evaluator).__name__} does not have it "
                         f"({CAPABILITIES[capability]})")


class PlainEvaluator:
    """One full forward pass of the whole network per candidate, as the released code does.

    Exact and architecture-free, so it is the reference every faster evaluator is tested against:
    it runs in IEEE float32 (``pruning.precision``). The unit's mask is restored to ``counts``
    before returning.
    """

    def __init__(self, model: nn.Module, masks: Masks):
        self.model = model
        self.masks = masks

    def losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        return self._trial_losses(unit, counts, candidates, batch, +1)

    def removal_losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Loss with ``counts - e_k`` for each k: the score of greedy backward elimination."""
        return self._trial_losses(unit, counts, candidates, batch, -1)

    @torch.no_grad()
    @exact
    def _trial_losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch, delta: int
    ) -> torch.Tensor:
        x, y = batch
        self.model.eval()
        trial = counts.to(x.device, copy=True)  # edited there: no host sync per candidate
        result = []
        for k in candidates.tolist():
            trial[k] += delta
            self.masks.set_counts(unit.name, trial)
            result.append(F.cross_entropy(self.model(x).float(), y))
            trial[k] -= delta
        self.masks.set_counts(unit.name, trial)
        if not result:
            return torch.empty(0, dtype=torch.float64)
        return torch.stack(result).double().cpu()
