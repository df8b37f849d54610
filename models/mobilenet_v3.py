"""MobileNetV3-Small (torchvision's): build, prunable units with squeeze-excitation gates, splits.

torchvision's ``mobilenet_v3_small`` is ``features[0]`` (stem conv-BN-Hardswish, 16 channels),
``features[1..11]`` (inverted-residual blocks), ``features[12]`` (1x1 conv to 576), average
pooling and ``classifier`` (Linear 576->1024, Hardswish, Dropout, Linear). A block's ``block``
Sequential is [expand conv-BN-act (absent when the expansion keeps the width, block 1), depthwise
conv-BN-act, SqueezeExcitation (blocks 1 and 4-11), projection conv-BN]. The squeeze-excitation
computes ``scale = hardsigmoid(fc2(relu(fc1(avgpool(h)))))`` and passes on ``scale * h``.

One unit kind, ``hidden``: the 11 blocks' hidden channels (16, 72, 88, 96, 240, 240, 120, 144,
288, 576, 576 at width 1.0), masked at the projection conv's input as for MobileNetV2. Block 1
has no expansion, so its hidden channels are the stem's output and the stem loses them too.

The units of the blocks with squeeze-excitation are *gated* (``pruning.units``): their SE block
reads every hidden channel through its average pool, so a removed channel must read as zero at
the SE input too (``Unit.gates``), and slimming removes it from fc1's input columns and from
fc2's output rows and biases (fc1 consumes the channel space, fc2 produces it). Blocks 2 and 3
have no SE: their units are additive. BatchNorm eps 1e-3 and momentum 0.01 are torchvision's.
"""

from collections.abc import Mapping

import torch
import torchvision_compat  # noqa: F401  (must precede torchvision on the CPU-only torch)
import torchvision
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.ops.misc import SqueezeExcitation

from models.registry import Architecture, register
from pruning.units import ChannelSpace, Unit, UnitSplit, plus_stacked

WIDTHS = (1.0, 0.75)
UNIT_KINDS = ("hidden",)
NUM_BLOCKS = 11


def build(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    return torchvision.models.mobilenet_v3_small(width_mult=width, num_classes=num_classes)


def _layers(model: nn.Module, i: int) -> tuple[int, int | None]:
    """Indices in block i's Sequential of its depthwise layer and its SE (None without SE)."""
    layers = model.features[i].block
    se = next((j for j, layer in enumerate(layers) if isinstance(layer, SqueezeExcitation)),
              None)
    depthwise = 0 if layers[0][0].groups > 1 else 1
    return depthwise, se


def _hidden_unit(model: nn.Module, i: int) -> Unit:
    block = f"features.{i}"
    layers = model.features[i].block
    depthwise, se = _layers(model, i)
    producers = tuple(f"{block}.block.{depthwise}.{b}" for b in (0, 1))
    if depthwise == 0:  # no expansion: the stem makes the hidden channels
        producers = ("features.0.0", "features.0.1", *producers)
    else:
        producers = (f"{block}.block.0.0", f"{block}.block.0.1", *producers)
    projection = f"{block}.block.{len(layers) - 1}.0"
    consumers: tuple[str, ...] = (projection,)
    gates: tuple[str, ...] = ()
    if se is not None:
        producers += (f"{block}.block.{se}.fc2",)
        consumers += (f"{block}.block.{se}.fc1",)
        gates = (f"{block}.block.{se}",)
    size = layers[-1][0].in_channels
    space = ChannelSpace(f"{block}.hidden", size, producers, consumers)
    return Unit(f"{block}.hidden", space, projection, "input",
                block if depthwise > 0 else "features.0", producer=producers[0], gates=gates)


def units(model: nn.Module, kind: str = "hidden") -> list[Unit]:
    """The 11 hidden units in input-to-output order."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"--units: MobileNetV3-Small unit kind must be one of {UNIT_KINDS}, "
                         f"got {kind!r}")
    return [_hidden_unit(model, i) for i in range(1, NUM_BLOCKS + 1)]


def _block_index(text: str) -> int:
    if not text.startswith("features."):
        raise ValueError(f"expected a module under 'features.', got {text!r}")
    return int(text[len("features."):].split(".")[0])


def split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The network cut at a block's hidden channels (the projection conv's input).

    ``hidden`` runs from the block's input through the depthwise layer (h, before the SE);
    ``gate`` is the SE's fc1, ReLU, fc2 and hardsigmoid on the pooled channels; ``consumer`` is
    the projection conv; ``tail`` the projection BN, the residual add and the rest.
    """
    features = model.features
    i = _block_index(unit.site)
    start = _block_index(unit.block)
    block = features[i]
    layers = block.block
    if unit.site != f"features.{i}.block.{len(layers) - 1}.0" or unit.side != "input":
        raise ValueError(f"unit {unit.name!r}: expected the input of features.{i}'s projection")
    depthwise, se = _layers(model, i)
    after = features[i + 1:]

    def head(y: torch.Tensor) -> torch.Tensor:  # torchvision's forward after features
        return model.classifier(torch.flatten(model.avgpool(y), 1))

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return features[:start](x)

    def hidden(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = features[start:i](z)  # block 1's prefix ends before the stem
        return layers[:depthwise + 1](skip), skip

    def tail(skip: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        y = layers[-1][1](out)
        return head(after(plus_stacked(y, skip) if block.use_res_connect else y))

    def rest(z: torch.Tensor) -> torch.Tensor:
        return head(features[start:](z))

    gate = None
    if se is not None:
        excitation = layers[se]

        def gate(pooled: torch.Tensor) -> torch.Tensor:
            squeezed = excitation.activation(excitation.fc1(pooled))
            return excitation.scale_activation(excitation.fc2(squeezed))

    return UnitSplit(prefix, hidden, layers[-1][0], tail, rest, gate)


def infer_width(state: Mapping[str, torch.Tensor]) -> float | None:
    """The width multiplier whose channel counts the state_dict has (read at the last conv,
    ``_make_divisible(576 * width, 8)``, and the first classifier layer, ``1024 * width``), or
    None."""
    try:
        channels = (state["features.12.0.weight"].shape[0], state["classifier.0.weight"].shape[0])
    except KeyError:
        return None
    for width in WIDTHS:
        if channels == (_make_divisible(576 * width, 8), _make_divisible(1024 * width, 8)):
            return width
    return None


def _classifier_init(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0, 0.01)  # torchvision's mobilenet_v3 initialization
    nn.init.zeros_(linear.bias)


def cifar_layout(model: nn.Module) -> None:
    """A CIFAR layout: the stem and block 1's depthwise conv at stride 1 instead of 2, so a 32 px
    image reaches the last stage at 2x2 rather than shrinking below 1x1 (as the CIFAR layouts of
    the other families do, Wolfe et al. Section 6.2). Only strides change."""
    model.features[0][0].stride = (1, 1)
    model.features[1].block[0][0].stride = (1, 1)


ARCHITECTURE = register(Architecture(
    name="mobilenet_v3_small", title="MobileNetV3-Small", build=build, units=units,
    unit_kinds=UNIT_KINDS, split=split, widths=WIDTHS,
    head_keys=("classifier.3.weight", "classifier.3.bias"), classifier_init=_classifier_init,
    recipe={"lr": 0.01, "lr_schedule": "cosine"}, torchvision_weights="mobilenet_v3_small",
    infer_width=infer_width, script="mobile3", layouts={"cifar": cifar_layout},
))
