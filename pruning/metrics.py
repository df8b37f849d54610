"""Loss and top-1 of a network on a fixed set of batches.

The paper's stop rule compares "the current loss and the loss of the original pretrained model";
both must be measured on the same data, so they are measured on one fixed evaluation subset whose
batches are held (on the device) for the whole run.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def mean_loss_and_top1(outputs: Iterable[Batch]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) over ``(logits, labels)`` pairs."""
    loss_sum, correct, count = 0.0, 0, 0
    for logits, y in outputs:
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    return loss_sum / count, correct / count


@torch.no_grad()
def loss_and_top1(model: nn.Module, batches: list[Batch]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (fraction) over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    result = mean_loss_and_top1((model(x), y) for x, y in batches)
    model.train(was_training)
    return result
