"""Loss and top-1 of a network on a fixed set of batches.

The paper's stop rule compares "the current loss and the loss of the original pretrained model";
both must be measured on the same data, so they are measured on one fixed evaluation subset whose
batches are held (on the device) for the whole run.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pruning.precision import exact

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
