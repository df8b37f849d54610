"""ResNet34 (torchvision's): build, prunable units and fast-evaluator splits.

Each BasicBlock computes relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). Its inner channels
(conv1's outputs, bn1, conv2's inputs) are private to the block, so they can be selected and
removed without touching the residual stream: one unit per block, 16 in all, masked at conv2's
input. The paper reports ResNet34 results (Table 1) but the authors released no ResNet code.
"""

import torch
import torchvision_compat  # noqa: F401  (must precede torchvision on the CPU-only torch)
import torchvision
from torch import nn

from models.registry import Architecture, register
from pruning.units import ChannelSpace, Unit, UnitSplit, plus_stacked

UNIT_KINDS = ("inner",)


def build(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
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
            result.append(Unit(f"{name}.inner", space, f"{name}.conv2", "input", name,
                               producer=f"{name}.conv1"))
    return result


def split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The network cut at a BasicBlock's inner channels (conv2's input): ``hidden`` is conv1,
    bn1 and ReLU; ``tail`` is bn2, the residual add (through the downsample, if any), the ReLU
    and every later block, for any number of stacked candidates."""
    names = [f"{stage}.{j}" for stage in ("layer1", "layer2", "layer3", "layer4")
             for j in range(len(getattr(model, stage)))]
    blocks = [model.get_submodule(name) for name in names]
    if unit.block not in names or unit.site != f"{unit.block}.conv2" or unit.side != "input":
        raise ValueError(f"unit {unit.name!r}: expected the input of a BasicBlock's conv2")
    index = names.index(unit.block)
    block = blocks[index]

    def stem(x: torch.Tensor) -> torch.Tensor:
        return model.maxpool(model.relu(model.bn1(model.conv1(x))))

    def run(y: torch.Tensor, first: int) -> torch.Tensor:
        for later in blocks[first:]:
            y = later(y)
        return model.fc(torch.flatten(model.avgpool(y), 1))

    def prefix(x: torch.Tensor) -> torch.Tensor:
        y = stem(x)
        for earlier in blocks[:index]:
            y = earlier(y)
        return y

    def hidden(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return block.relu(block.bn1(block.conv1(z))), z

    def tail(skip: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        identity = skip if block.downsample is None else block.downsample(skip)
        return run(block.relu(plus_stacked(block.bn2(out), identity)), index + 1)

    return UnitSplit(prefix, hidden, block.conv2, tail, lambda z: run(z, index))


def cifar_layout(model: nn.Module) -> None:
    """The CIFAR layout (He et al., 2016, Section 4.2; pytorch-cifar, which Wolfe et al. follow):
    a 3x3 stride-1 stem without max-pooling, so a 32 px image reaches the last stage at 4x4
    instead of 1x1 (1.16G MACs at 32 px instead of 75.1M). The new stem is drawn as torchvision
    draws its convolutions (Kaiming normal, fan_out)."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


ARCHITECTURE = register(Architecture(
    name="resnet34", title="ResNet34", build=build, units=units, unit_kinds=UNIT_KINDS,
    split=split, head_keys=("fc.weight", "fc.bias"),
    recipe={"lr": 2.5e-4, "lr_schedule": "constant"}, torchvision_weights="resnet34",
    script="resnet34", layouts={"cifar": cifar_layout},
))
