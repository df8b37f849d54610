"""Loss and top-1 of a network on a fixed set of batches: the stop rules' measurement.

The paper's stop rule (Ye et al., 2020, Section 4.1) compares "the current loss and the loss of
the original pretrained model"; both must be measured on the same data, so they are measured on
one fixed evaluation subset whose batches are held (on the device) for the whole run.

* ``mean_loss_and_top1`` -- mean cross-entropy and top-1 of given ``(logits, labels)`` pairs.
* ``loss_and_top1`` -- the same for a model's full forward over the batches.
* ``SubsetMeasure`` -- ``measure(unit)`` for the stop rules, reusing the unit's block inputs.

A selection measures the whole evaluation subset (1024 images by default) after every greedy
step. While unit u is being selected, everything before u's block is fixed: earlier units keep
their selection and no weight changes. So ``SubsetMeasure`` computes the block's input on the
subset once, when it first sees u, and each step runs only the network from there
(``UnitSplit.rest``, which applies every mask, u's included, through the ``Masks`` hooks). For a
late unit this is a small fraction of a full forward; the numbers are the same as
``loss_and_top1`` on the full network up to float rounding (tested). Both run in IEEE float32
(``pruning.precision``): the stop rule compares losses to the dense loss to within epsilon.

Whoever changes weights between units (the optional short fine-tune) must call
``SubsetMeasure.forget``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pruning.precision import exact
from pruning.units import Splitter, Unit

Batch = tuple[torch.Tensor, torch.Tensor]


def mean_loss_and_top1(outputs: Iterable[Batch]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) over ``(logits, labels)`` pairs.

    Summed on the logits' device and read back once, so a GPU is never made to wait per batch.
    """
    sums, count = None, 0
    for logits, y in outputs:
        batch = torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"),
                             (logits.argmax(1) == y).sum().float()]).double()
        sums = batch if sums is None else sums + batch
        count += y.numel()
    if sums is None:
        raise ValueError("no batches to measure")
    loss_sum, correct = sums.tolist()
    return loss_sum / count, correct / count


@torch.no_grad()
@exact
def loss_and_top1(model: nn.Module, batches: list[Batch]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) over ``batches``, in eval mode, in IEEE
    float32 (the stop rule and the reported losses claim exactness)."""
    was_training = model.training
    model.eval()
    result = mean_loss_and_top1((model(x), y) for x, y in batches)
    model.train(was_training)
    return result


class SubsetMeasure:
    """``measure(unit) -> (loss, top1)`` on ``batches``, reusing the unit's cached block inputs.

    ``splits`` (``models.splitter``) says where each unit's block starts; without it, or
    when the block inputs of the whole subset would take more than ``cache_bytes``, every call
    is a plain full forward. ``measure()`` with no unit is always a full forward.
    """

    def __init__(self, model: nn.Module, batches: list[Batch], splits: Splitter | None = None,
                 cache_bytes: int = 4 << 30):
        self.model, self.batches, self.splits = model, batches, splits
        self.cache_bytes = cache_bytes
        self._unit: str | None = None
        self._inputs: list[torch.Tensor] | None = None

    @property
    def cached(self) -> bool:
        """Whether the last unit's block inputs are held (False: full forwards)."""
        return self._inputs is not None

    def forget(self) -> None:
        """Drop the cached block inputs: the weights before the current unit have changed."""
        self._unit, self._inputs = None, None

    @torch.no_grad()
    @exact
    def _block_inputs(self, unit: Unit) -> list[torch.Tensor] | None:
        if self._unit != unit.name:
            self.forget()
            self._unit = unit.name
            prefix = self.splits(unit).prefix
            first = prefix(self.batches[0][0])
            if first.numel() * first.element_size() * len(self.batches) <= self.cache_bytes:
                self._inputs = [first] + [prefix(x) for x, _ in self.batches[1:]]
        return self._inputs

    @torch.no_grad()
    @exact
    def __call__(self, unit: Unit | None = None) -> tuple[float, float]:
        if unit is None or self.splits is None:
            return loss_and_top1(self.model, self.batches)
        was_training = self.model.training
        self.model.eval()
        inputs = self._block_inputs(unit)
        if inputs is None:
            result = loss_and_top1(self.model, self.batches)
        else:
            rest = self.splits(unit).rest
            result = mean_loss_and_top1(
                (rest(z), y) for z, (_, y) in zip(inputs, self.batches, strict=True))
        self.model.train(was_training)
        return result
