"""MobileNetV2 (torchvision's) and its prunable units.

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
"""

import torchvision_compat  # noqa: F401
import torchvision
from torch import nn

from pruning.units import ChannelSpace, Unit

WIDTHS = (1.0, 0.75, 0.5)
UNIT_KINDS = ("hidden", "hidden+outputs", "released")
NUM_BLOCKS = 17


def build(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    if width not in WIDTHS:
        raise ValueError(f"--width: MobileNetV2 width must be one of {WIDTHS}, got {width}")
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
    return Unit(f"{block}.hidden", space, projection, "input", block if i > 1 else "features.0")


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
            bn = f"features.{i}.conv.{len(model.features[i].conv) - 1}"
            result.append(Unit(f"features.{i}.output", streams[i], bn, "output", f"features.{i}"))
    return result
