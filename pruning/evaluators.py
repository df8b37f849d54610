"""Candidate evaluators: the inner loop of Algorithm 1.

At each greedy step, for every candidate channel k of the unit being selected, Algorithm 1 needs
the loss l_k of the network whose layer is f_{S + {k}} on the step's mini-batch. An evaluator
computes those losses; the selector only compares them. Any evaluator that returns the same
numbers can replace another without the selector noticing, which is how faster evaluators are
swapped in.
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
    def losses(
        self, unit: Unit, counts: torch.Tensor, candidates: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Loss l_k of the network with ``counts + e_k`` for each k in ``candidates`` (1-D).

        ``counts`` and ``candidates`` live on the CPU, ``batch`` on the model's device; the
        result is a float64 CPU tensor, read from the device once per call (one host sync per
        greedy step, not one per candidate).
        """
        ...


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
