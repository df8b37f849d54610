"""ProxylessNAS-Mobile (Cai et al., ICLR 2019): build, prunable units, fast-evaluator splits.

The network is written from its published configuration, ``proxyless_mobile.config`` (the
``net.config`` JSON that mit-han-lab/proxylessnas's ``proxyless_mobile`` builds from; file
``proxylessnas/proxyless_mobile.config`` of han-cai/files), and its module names are the ones of
the authors' ``ProxylessNASNets``, so the state_dict of their checkpoint
(``proxyless_mobile.pth``, ``{'state_dict': ...}``) loads key for key through ``models.weights``
(which unwraps ``state_dict`` and strips ``module.`` itself; no ``map_state`` is needed):

* ``first_conv.{conv,bn}``: 3 -> 32, 3x3, stride 2, BN, ReLU6;
* ``blocks.0`` .. ``blocks.21``: mobile inverted bottlenecks,
  ``blocks.i.mobile_inverted_conv.{inverted_bottleneck,depth_conv,point_linear}.{conv,bn}``
  (``inverted_bottleneck``, the 1x1 expansion, is absent where the expand ratio is 1: block 0,
  whose depthwise conv reads the stem's 32 channels directly). Hidden width
  ``round(in * expand)``, "same" padding ``k // 2``, ReLU6 after the expansion and the depthwise
  conv, none after ``point_linear``. A block has an identity ``shortcut`` where in == out and
  stride 1. Blocks 3 and 4 are *zero layers*: their ``mobile_inverted_conv`` is the zero
  operation, so the block's output is just its identity shortcut (no parameters);
* ``feature_mix_layer.{conv,bn}``: 320 -> 1280, 1x1, BN, ReLU6; global average pooling;
* ``classifier.linear``: 1280 -> num_classes (the config's ``dropout_rate`` is 0: no dropout).

All BatchNorms have eps 1e-3 and momentum 0.1 (the config's ``bn``), no squeeze-excitation.
ptflops (pytorch backend) counts 336,045,864 MACs and 4,080,512 parameters at 224 px (aten
backend 320,428,584 MACs, the 320.4M the authors report).

Unit kind ``hidden`` (the only one): the hidden channels of each of the 20 non-zero blocks, masked
at ``point_linear.conv``'s input, i.e. after depthwise conv + BN + ReLU6, as MobileNetV2's
``hidden`` units. Block 0's hidden channels are the stem's output (expand ratio 1), so the stem
loses them too. No SE gate reads them, so the fast evaluator's additive shortcut is exact.
"""

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from models.registry import Architecture, register
from pruning.units import ChannelSpace, Unit, UnitSplit, plus_stacked

UNIT_KINDS = ("hidden",)
BN_EPS = 1e-3
BN_MOMENTUM = 0.1
STEM = 32
FEATURE_MIX = 1280


class BlockConfig(NamedTuple):
    """One entry of the config's ``blocks``: a mobile inverted conv, or a zero layer
    (``kernel`` 0) whose output is its identity shortcut."""

    out: int
    kernel: int
    stride: int
    expand: int

    @property
    def zero(self) -> bool:
        return self.kernel == 0


#: ``proxyless_mobile.config``'s 22 blocks (out channels, kernel, stride, expand ratio); a block's
#: input is the previous block's output (the stem's 32 channels for block 0).
BLOCKS = (
    BlockConfig(16, 3, 1, 1),
    BlockConfig(32, 5, 2, 3),
    BlockConfig(32, 3, 1, 3),
    BlockConfig(32, 0, 1, 0),  # zero layer
    BlockConfig(32, 0, 1, 0),  # zero layer
    BlockConfig(40, 7, 2, 3),
    BlockConfig(40, 3, 1, 3),
    BlockConfig(40, 5, 1, 3),
    BlockConfig(40, 5, 1, 3),
    BlockConfig(80, 7, 2, 6),
    BlockConfig(80, 5, 1, 3),
    BlockConfig(80, 5, 1, 3),
    BlockConfig(80, 5, 1, 3),
    BlockConfig(96, 5, 1, 6),
    BlockConfig(96, 5, 1, 3),
    BlockConfig(96, 5, 1, 3),
    BlockConfig(96, 5, 1, 3),
    BlockConfig(192, 7, 2, 6),
    BlockConfig(192, 7, 1, 6),
    BlockConfig(192, 7, 1, 3),
    BlockConfig(192, 7, 1, 3),
    BlockConfig(320, 7, 1, 6),
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                 bias=False)),
              ("bn", _bn(cout))]
    if act:
        layers.append(("act", nn.ReLU6(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class MBInvertedConv(nn.Module):
    """1x1 expansion (absent for expand ratio 1), k x k depthwise conv, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = round(cin * expand)
        self.inverted_bottleneck = _conv_bn(cin, hidden, 1) if expand != 1 else None
        self.depth_conv = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.point_linear = _conv_bn(hidden, cout, 1, act=False)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden channels: expansion (if any) and depthwise conv, each with BN and ReLU6."""
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.depth_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_linear(self.expand(x))


class ZeroLayer(nn.Module):
    """The zero operation of the search space (stride 1 here): its block is its shortcut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class MobileInvertedResidualBlock(nn.Module):
    def __init__(self, mobile_inverted_conv: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.mobile_inverted_conv = mobile_inverted_conv
        self.shortcut = shortcut

    @property
    def is_zero(self) -> bool:
        return isinstance(self.mobile_inverted_conv, ZeroLayer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_zero:
            return self.shortcut(x)
        y = self.mobile_inverted_conv(x)
        return y if self.shortcut is None else y + self.shortcut(x)


class Classifier(nn.Module):
    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ProxylessNASNets(nn.Module):
    def __init__(self, blocks: tuple[BlockConfig, ...] = BLOCKS, num_classes: int = 1000):
        super().__init__()
        self.first_conv = _conv_bn(3, STEM, 3, 2)
        layers, cin = [], STEM
        for b in blocks:
            identity = cin == b.out and b.stride == 1
            if b.zero:
                if not identity:
                    raise ValueError("a zero layer needs an identity shortcut")
                conv: nn.Module = ZeroLayer()
            else:
                conv = MBInvertedConv(cin, b.out, b.kernel, b.stride, b.expand)
            layers.append(MobileInvertedResidualBlock(conv, nn.Identity() if identity else None))
            cin = b.out
        self.blocks = nn.ModuleList(layers)
        self.feature_mix_layer = _conv_bn(cin, FEATURE_MIX, 1)
        self.global_avg_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = Classifier(FEATURE_MIX, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the last block: feature mix, pooling, classifier."""
        return self.classifier(torch.flatten(self.global_avg_pooling(self.feature_mix_layer(x)),
                                             1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _classifier_init(linear: nn.Linear) -> None:
    linear.reset_parameters()  # the authors' init_model keeps PyTorch's weights, zeroes the bias
    nn.init.zeros_(linear.bias)


def build(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """ProxylessNAS-Mobile, randomly initialized: Kaiming-normal (fan_out) convs as the registry's
    ``reinitialize`` draws them, BatchNorm at identity, the authors' classifier init."""
    model = ProxylessNASNets(BLOCKS, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            _classifier_init(module)
    return model


def _hidden_unit(model: nn.Module, i: int) -> Unit:
    block = f"blocks.{i}"
    conv = f"{block}.mobile_inverted_conv"
    mb = model.blocks[i].mobile_inverted_conv
    depthwise = (f"{conv}.depth_conv.conv", f"{conv}.depth_conv.bn")
    if mb.inverted_bottleneck is None:  # expand ratio 1: the stem makes the hidden channels
        producers = ("first_conv.conv", "first_conv.bn", *depthwise)
        if i != 0:
            raise ValueError(f"{block}: expand ratio 1 is supported only in the first block")
    else:
        producers = (f"{conv}.inverted_bottleneck.conv", f"{conv}.inverted_bottleneck.bn",
                     *depthwise)
    site = f"{conv}.point_linear.conv"
    space = ChannelSpace(f"{block}.hidden", mb.point_linear.conv.in_channels, producers, (site,))
    # Block 0's depthwise conv reads the stem's output, so its cached prefix starts at the input.
    return Unit(f"{block}.hidden", space, site, "input", block if i > 0 else "first_conv",
                producer=producers[0])


def units(model: nn.Module, kind: str = "hidden") -> list[Unit]:
    """One hidden unit per non-zero block (20), in input-to-output order."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"--units: ProxylessNAS-Mobile unit kind must be one of {UNIT_KINDS}, "
                         f"got {kind!r}")
    return [_hidden_unit(model, i) for i, block in enumerate(model.blocks) if not block.is_zero]


def split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The network cut at a block's hidden channels (``point_linear.conv``'s input): ``hidden``
    runs from the block's input (the image, for block 0, whose hidden channels the stem makes)
    through the expansion and the depthwise conv; ``tail`` is ``point_linear.bn``, the residual
    add (where the block has a shortcut), the later blocks and the head, for any number of
    stacked candidates."""
    name = unit.name.removesuffix(".hidden")
    if not name.startswith("blocks."):
        raise ValueError(f"unit {unit.name!r}: expected a block's hidden unit")
    i = int(name[len("blocks."):])
    block = model.blocks[i]
    if block.is_zero or unit.site != f"{name}.mobile_inverted_conv.point_linear.conv" \
            or unit.side != "input":
        raise ValueError(f"unit {unit.name!r}: expected the input of {name}'s point_linear conv")
    mb = block.mobile_inverted_conv
    stem = i == 0  # the unit's block starts at the image: the stem is part of it

    def run(y: torch.Tensor, first: int) -> torch.Tensor:
        for later in model.blocks[first:]:
            y = later(y)
        return model.head(y)

    def prefix(x: torch.Tensor) -> torch.Tensor:
        if stem:
            return x
        y = model.first_conv(x)
        for earlier in model.blocks[:i]:
            y = earlier(y)
        return y

    def hidden(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = model.first_conv(z) if stem else z
        return mb.expand(skip), skip

    def tail(skip: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        y = mb.point_linear.bn(out)
        if block.shortcut is not None:
            y = plus_stacked(y, block.shortcut(skip))
        return run(y, i + 1)

    def rest(z: torch.Tensor) -> torch.Tensor:
        return run(model.first_conv(z) if stem else z, i)

    return UnitSplit(prefix, hidden, mb.point_linear.conv, tail, rest)


def cifar_layout(model: nn.Module) -> None:
    """The CIFAR layout, as MobileNetV2's (pytorch-cifar, Wolfe et al. Section 6.2): the stem and
    the first block of the second stage (``blocks.1``'s depthwise conv) at stride 1 instead of 2,
    so a 32 px image reaches the last stage at 4x4 instead of 1x1 (total stride 8, not 32;
    100.7M MACs at 32 px with 10 classes instead of 6.8M). Only strides change: the weights
    have the ImageNet layout's shapes."""
    model.first_conv.conv.stride = (1, 1)
    model.blocks[1].mobile_inverted_conv.depth_conv.conv.stride = (1, 1)


ARCHITECTURE = register(Architecture(
    name="proxylessnas_mobile", title="ProxylessNAS-Mobile", build=build, units=units,
    unit_kinds=UNIT_KINDS, split=split,
    head_keys=("classifier.linear.weight", "classifier.linear.bias"),
    classifier_init=_classifier_init, recipe={"lr": 0.01, "lr_schedule": "cosine"},
    script="proxyless", layouts={"cifar": cifar_layout},
))
