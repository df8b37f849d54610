"""ResNet34 (torchvision's) and its prunable units.

Each BasicBlock computes relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). Its inner channels
(conv1's outputs, bn1, conv2's inputs) are private to the block, so they can be selected and
removed without touching the residual stream: one unit per block, 16 in all, masked at conv2's
input. The paper reports ResNet34 results (Table 1) but the authors released no ResNet code.
"""

import torchvision_compat  # noqa: F401
import torchvision
from torch import nn

from pruning.units import ChannelSpace, Unit

UNIT_KINDS = ("inner",)


def build(num_classes: int = 1000) -> nn.Module:
    return torchvision.models.resnet34(num_classes=num_classes)


def units(model: nn.Module, kind: str = "inner") -> list[Unit]:
    """One unit per BasicBlock, in input-to-output order."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"--units: ResNet34 unit kind must be one of {UNIT_KINDS}, got {kind!r}")
    result = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for j, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{j}"
            space = ChannelSpace(
                f"{name}.inner", block.conv1.out_channels,
                (f"{name}.conv1", f"{name}.bn1"), (f"{name}.conv2",),
            )
            result.append(Unit(f"{name}.inner", space, f"{name}.conv2", "input", name))
    return result
