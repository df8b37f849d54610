"""How to run MobileNetV2 and ResNet34 around one prunable unit (for the fast evaluators).

Algorithm 1 of Ye et al. (2020) scores every candidate channel k of a unit by the loss of the
network whose layer is f_{S+{k}}. The fast evaluators (``pruning.fast_evaluators``) split that
network at the unit and reuse everything that does not depend on k; the cut points are
architecture knowledge, so they live here and reach ``pruning/`` as a ``UnitSplit`` of callables:

* ``prefix``: the input of the unit's block (``Unit.block``): fixed during the whole step;
* ``hidden``: from there to the unit's N channels before mixing (for an input-side unit, the
  consumer's input; for a block-output unit, the projection BN's output), and the residual input
  the rest of the block needs: fixed during the step too;
* ``consumer``: the linear layer the mixture feeds (projection conv, conv2), or None when the
  mixture is itself the block's output (MobileNetV2 block outputs, masked after the BN);
* ``tail``: the rest of the block (BN, residual add, ReLU) and of the network, from the mixed
  consumer output to the logits, for any number of candidates stacked along the batch;
* ``rest``: the whole network from the block's input, as ordinary module calls.

Every module is called as a module, so the ``Masks`` hooks of all other units (earlier units'
selections, later units' current weights) apply exactly as in the plain full forward. The unit's
own mask is the only one bypassed: the evaluator applies it itself, in ``consumer`` (called
functionally) or, for a block-output unit, by ``hidden`` calling the BN's ``forward`` directly.
``rest`` bypasses nothing, so it is the reference the other four must agree with.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pruning.fast_evaluators import UnitSplit
from pruning.units import Unit


def plus_stacked(stacked: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``stacked`` (c*B samples: c candidates of one B-sample batch) plus ``skip`` (B samples).

    The residual input is the same for every candidate, so it is broadcast, never copied c times.
    """
    copies = stacked.shape[0] // skip.shape[0]
    return (stacked.unflatten(0, (copies, skip.shape[0])) + skip).flatten(0, 1)


def _block_index(text: str, prefix: str) -> int:
    if not text.startswith(prefix):
        raise ValueError(f"expected a module under {prefix!r}, got {text!r}")
    return int(text[len(prefix):].split(".")[0])


def mobilenet_v2_split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The split of a torchvision MobileNetV2 at a hidden or block-output unit (``models.
    mobilenetv2``): hidden units feed the projection conv, block outputs are the projection BN's
    output before the residual add."""
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


def resnet34_split(model: nn.Module, unit: Unit) -> UnitSplit:
    """The split of a torchvision ResNet34 at a BasicBlock's inner channels (conv2's input)."""
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


SPLITTERS = {"mobilenet_v2": mobilenet_v2_split, "resnet34": resnet34_split}


def splitter(arch: str, model: nn.Module) -> Callable[[Unit], UnitSplit]:
    """unit -> its ``UnitSplit`` for ``model``, built once per unit and kept."""
    if arch not in SPLITTERS:
        raise ValueError(f"no fast-evaluator split for architecture {arch!r}")
    build = SPLITTERS[arch]
    cache: dict[str, UnitSplit] = {}

    def split(unit: Unit) -> UnitSplit:
        if unit.name not in cache:
            cache[unit.name] = build(model, unit)
        return cache[unit.name]

    return split
