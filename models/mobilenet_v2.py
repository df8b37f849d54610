"""MobileNetV2 (torchvision's): build, prunable units, fast-evaluator splits, weight layouts.

torchvision's ``mobilenet_v2`` is ``features[0]`` (stem conv-BN-ReLU6), ``features[1..17]``
(inverted-residual blocks), ``features[18]`` (1x1 conv to 1280) and ``classifier`` (dropout,
linear). Inside a block with expansion t > 1, ``conv`` is [expand conv-BN-ReLU6, depthwise
conv-BN-ReLU6, projection conv, BN]; with t = 1 (block 1) the expand layer is absent and the
depthwise conv reads the stem's output directly.

Unit kinds:

* ``hidden`` (default): the expanded hidden channels of all 17 blocks, masked at the projection
  conv's input, i.e. after depthwise conv+BN+ReLU6 -- the paper's "neurons" of each block.
  Block 1's hidden channels are produced by the stem, so the stem loses them too.
* ``hidden+outputs``: also each block's projection output (before the residual add) for blocks
  2..16, as in the released code. Blocks of one stage add into one residual stream, so their
  output units share one channel space (a channel leaves the stream only if every block drops it).
* ``released``: the released code's 31 units exactly: hidden channels of blocks 2..17 and
  outputs of blocks 2..16 (it never prunes block 1, the 320-channel output or the 1280 head).

Weights. d-li14 layout (``models/imagenet/mobilenetv2.py`` of d-li14/mobilenetv2.pytorch) versus
torchvision's ``torchvision/models/mobilenetv2.py``:

* stem ``features.0.{0,1}`` (conv, BN): same names in both.
* block ``features.i`` (i = 1..17) is a plain ``conv`` Sequential of Conv/BN/ReLU6 in d-li14;
  torchvision nests the conv+BN+ReLU6 triples in ``Conv2dNormActivation``:

  - expand ratio 1 (block 1): ``conv.{0,1,3,4}`` -> ``conv.{0.0, 0.1, 1, 2}``
  - expand ratio 6: ``conv.{0,1,3,4,6,7}`` -> ``conv.{0.0, 0.1, 1.0, 1.1, 2, 3}``

* final 1x1 conv: ``conv.{0,1}`` -> ``features.18.{0,1}``.
* classifier: ``classifier`` (a bare Linear) -> ``classifier.1`` (after torchvision's Dropout).

Channel counts agree for widths 1.0, 0.75 and 0.5: both repositories round with the same
``_make_divisible(c * width, 8)``, use ``round(inp * t)`` hidden widths and keep the last conv at
1280 channels for widths <= 1 (parameter counts 3,504,872 / 2,636,424 / 1,968,680, the numbers
d-li14's README lists). Only d-li14's width 0.1 rounds to multiples of 4 and does not fit a
torchvision model; the shape check refuses it like any other mismatch.
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchvision_compat  # noqa: F401  (must precede torchvision on the CPU-only torch)
import torchvision
from torch import nn
from torchvision.models._utils import _make_divisible

from models.registry import Architecture, register
from pruning.units import ChannelSpace, Unit, UnitSplit, plus_stacked

WIDTHS = (1.0, 0.75, 0.5)
UNIT_KINDS = ("hidden", "hidden+outputs", "released")
NUM_BLOCKS = 17


def build(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    return torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)


def _hidden_unit(model: nn.Module, i: int) -> Unit:
    block = f"features.{i}"
    layers = model.features[i].conv
    if len(layers) == 3:  # t = 1: [depthwise CNA, projection conv, BN]
        producers = ("features.0.0", "features.0.1", f"{block}.conv.0.0", f"{block}.conv.0.1")
        projection = f"{block}.conv.1"
        size = layers[1].in_channels
    else:  # [expand CNA, depthwise CNA, projection conv, BN]
        producers = tuple(f"{block}.conv.{a}.{b}" for a in (0, 1) for b in (0, 1))
        projection = f"{block}.conv.2"
        size = layers[2].in_channels
    space = ChannelSpace(f"{block}.hidden", size, producers, (projection,))
    # Block 1's depthwise layer reads the stem output, so its cached prefix starts at the input.
    return Unit(f"{block}.hidden", space, projection, "input", block if i > 1 else "features.0",
                producer=producers[0])


def _stage_streams(model: nn.Module, first: int, last: int) -> dict[int, ChannelSpace]:
    """The residual stream of each stage that has a block in [first, last], keyed by block."""
    stages: list[list[int]] = []
    for i in range(1, NUM_BLOCKS + 1):
        if model.features[i].use_res_connect:
            stages[-1].append(i)
        else:
            stages.append([i])
    streams = {}
    for blocks in stages:
        members = [i for i in blocks if first <= i <= last]
        if not members:
            continue
        if members != blocks:
            raise ValueError("block-output units must cover whole stages")
        end = blocks[-1] + 1  # the next stage's first block also reads this stream
        producers = tuple(
            f"features.{i}.conv.{j}" for i in blocks for j in (len(model.features[i].conv) - 2,
                                                                len(model.features[i].conv) - 1)
        )
        consumers = tuple(f"features.{i}.conv.0.0" for i in (*blocks[1:], end))
        size = model.features[blocks[0]].out_channels
        space = ChannelSpace(f"stream.{blocks[0]}-{blocks[-1]}", size, producers, consumers)
        streams.update({i: space for i in blocks})
    return streams


def units(model: nn.Module, kind: str = "hidden") -> list[Unit]:
    """Prunable units in input-to-output order (a block's hidden unit before its output unit)."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"--units: MobileNetV2 unit kind must be one of {UNIT_KINDS}, "
                         f"got {kind!r}")
    first_hidden = 2 if kind == "released" else 1
    streams = _stage_streams(model, 2, 16) if kind != "hidden" else {}
    result = []
    for i in range(1, NUM_BLOCKS + 1):
        if i >= first_hidden:
            result.append(_hidden_unit(model, i))
        if i in streams:
            last = len(model.features[i].conv) - 1
            result.append(Unit(f"features.{i}.output", streams[i], f"features.{i}.conv.{last}",
                               "output", f"features.{i}",
                               producer=f"features.{i}.conv.{last - 1}"))
    return result


def _block_index(text: str, prefix: str) -> int:
    if not text.startswith(prefix):
        raise ValueError(f"expected a module under {prefix!r}, got {text!r}")
    return int(text[len(prefix):].split(".")[0])


def split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The network cut at a hidden or block-output unit (``pruning.units.UnitSplit``).

    ``hidden`` runs from the block's input to the unit's N channels: for a hidden unit, the
    projection conv's input; for a block-output unit, the projection BN's output before the
    residual add, for which ``consumer`` is None. ``tail`` runs the rest of the block (the
    projection BN, the residual add) and of the network for any number of stacked candidates.
    """
    features = model.features
    i = _block_index(unit.site, "features.")
    start = _block_index(unit.block, "features.")
    block = features[i]
    layers = block.conv
    site = f"features.{i}.conv.{len(layers) - 2 if unit.side == 'input' else len(layers) - 1}"
    if unit.site != site:
        raise ValueError(f"unit {unit.name!r}: expected its mask at {site}, got {unit.site}")
    after = features[i + 1:]

    def head(y: torch.Tensor) -> torch.Tensor:  # torchvision's _forward_impl after features
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(y, (1, 1)), 1))

    def finish(skip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return head(after(plus_stacked(y, skip) if block.use_res_connect else y))

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return features[:start](x)

    def rest(z: torch.Tensor) -> torch.Tensor:
        return head(features[start:](z))

    if unit.side == "input":
        def hidden(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            skip = features[start:i](z)  # block 1's prefix ends before the stem
            return layers[:-2](skip), skip

        def tail(skip: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return finish(skip, layers[-1](out))

        return UnitSplit(prefix, hidden, layers[-2], tail, rest)

    if start != i:
        raise ValueError(f"unit {unit.name!r}: a block-output unit's block must be features.{i}")

    def output_hidden(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return layers[-1].forward(layers[:-1](z)), z  # forward: without this unit's own mask

    return UnitSplit(prefix, output_hidden, None, finish, rest)


# d-li14/mobilenetv2.pytorch's key layout (see models.weights for why it matters)

_DLI14_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
# d-li14 Sequential index -> torchvision path inside InvertedResidual.conv
_DLI14_EXPAND1 = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
_DLI14_EXPAND = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}


def is_dli14(state: Mapping[str, Any]) -> bool:
    """Recognise d-li14's layout: a top-level ``conv`` (final 1x1 conv) and a bare Linear
    ``classifier``; torchvision has neither (its last conv is ``features.18``)."""
    return "conv.0.weight" in state and not any(k.startswith("features.18.") for k in state)


def map_dli14(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a d-li14/mobilenetv2.pytorch state_dict to torchvision ``mobilenet_v2`` keys.

    A block's expand ratio is read from the file itself (a block whose Sequential ends at index
    4 has no expansion conv), so the map needs no width or configuration. Keys that fit no rule
    keep their name and are then reported as unexpected by the shape check.
    """
    block_len: dict[int, int] = {}
    for key in state:
        match = _DLI14_BLOCK.match(key)
        if match:
            block, index = int(match[1]), int(match[2])
            block_len[block] = max(block_len.get(block, 0), index)
    last_feature = max([0, *block_len]) + 1  # torchvision's index of the final 1x1 conv
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = key
        match = _DLI14_BLOCK.match(key)
        if match:
            block, index, rest = int(match[1]), int(match[2]), match[3]
            table = _DLI14_EXPAND1 if block_len[block] <= 4 else _DLI14_EXPAND
            if index in table:
                new_key = f"features.{block}.conv.{table[index]}.{rest}"
        elif key.startswith("conv."):
            new_key = f"features.{last_feature}." + key[len("conv.") :]
        elif key in ("classifier.weight", "classifier.bias"):
            new_key = "classifier.1." + key.split(".")[-1]
        mapped[new_key] = value
    return mapped


def map_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str] | None:
    """d-li14's checkpoint renamed to torchvision keys, or None for any other layout."""
    if not is_dli14(state):
        return None
    return map_dli14(state), "d-li14/mobilenetv2.pytorch checkpoint (keys mapped to torchvision)"


_STAGES = (16, 24, 32, 64, 96, 160, 320)
_STAGE_LAST_BLOCK = (1, 3, 6, 10, 13, 16, 17)
_WIDTHS = (1.4, 1.3, 1.0, 0.75, 0.5, 0.35, 0.25, 0.1)


def infer_width(state: Mapping[str, torch.Tensor]) -> float | None:
    """The torchvision width multiplier whose channel counts the model has, or None.

    Compares the stem, the output of each stage and the final conv with what torchvision's
    ``mobilenet_v2(width_mult=w)`` builds (``_make_divisible(c * w, 8)``).
    """
    try:
        channels = [state["features.0.0.weight"].shape[0]]
        for block in _STAGE_LAST_BLOCK:
            convs = [k for k in state if re.fullmatch(rf"features\.{block}\.conv\.\d+\.weight", k)]
            channels.append(state[max(convs, key=lambda k: int(k.split(".")[3]))].shape[0])
        channels.append(state["features.18.0.weight"].shape[0])
    except (KeyError, ValueError):
        return None
    for width in _WIDTHS:
        expect = [_make_divisible(32 * width, 8)]
        expect += [_make_divisible(c * width, 8) for c in _STAGES]
        expect.append(_make_divisible(1280 * max(1.0, width), 8))
        if channels == expect:
            return width
    return None


def _classifier_init(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0, 0.01)  # torchvision's mobilenet_v2 initialization
    nn.init.zeros_(linear.bias)


def cifar_layout(model: nn.Module) -> None:
    """The CIFAR layout (pytorch-cifar's MobileNetV2, which Wolfe et al. follow): the stem and the
    first block of the second stage (features.2's depthwise conv) at stride 1 instead of 2, so a
    32 px image reaches the last stage at 4x4 (92.8M MACs at 32 px instead of 6.5M). Only strides
    change: the weights have the ImageNet layout's shapes."""
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)


ARCHITECTURE = register(Architecture(
    name="mobilenet_v2", title="MobileNetV2", build=build, units=units, unit_kinds=UNIT_KINDS,
    split=split, widths=WIDTHS, head_keys=("classifier.1.weight", "classifier.1.bias"),
    classifier_init=_classifier_init, recipe={"lr": 0.01, "lr_schedule": "cosine"},
    torchvision_weights="mobilenet_v2", map_state=map_state, infer_width=infer_width,
    script="mobile2", layouts={"cifar": cifar_layout},
))
