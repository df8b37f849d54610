"""Helpers of the conformance suite (``test_conformance.py``); not collected as tests.

Everything here is generic over the registry: a family is known only through its
``Architecture`` (``models.get``) and the engine's contract (``pruning.units``). No family name
appears, so a newly registered family is tested as soon as ``models`` imports it.
"""

import copy
import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models

NUM_CLASSES = 5
BATCH = 4
#: Image sides tried, smallest first (``image_size``).
SIDES = (16, 32, 64, 96, 128, 224)


# ----------------------------------------------------------------------------------------------
# Parametrizations: every registered family, each of its layouts, each of its unit kinds
# ----------------------------------------------------------------------------------------------


def layout_cases() -> list:
    return [pytest.param(arch, layout, id=f"{arch}-{layout}")
            for arch in models.names() for layout in models.get(arch).layout_names]


def kind_cases() -> list:
    return [pytest.param(arch, layout, kind, id=f"{arch}-{layout}-{kind}")
            for arch in models.names() for layout in models.get(arch).layout_names
            for kind in models.get(arch).unit_kinds]


def smallest_width(arch: str) -> float:
    return min(models.get(arch).widths)


def require_split(arch: str) -> None:
    if models.get(arch).split is None:
        pytest.skip(f"{arch} declares no fast-evaluator split")


# ----------------------------------------------------------------------------------------------
# The Unit fields added after the first version of the contract, read with defaults
# ----------------------------------------------------------------------------------------------


def gates(unit) -> tuple[str, ...]:
    return tuple(getattr(unit, "gates", ()) or ())


def producer(unit) -> str | None:
    return getattr(unit, "producer", None)


def ungated(unit):
    """The same unit with its gates forgotten: what a family that omits a gate declares."""
    return dataclasses.replace(unit, gates=()) if gates(unit) else unit


# ----------------------------------------------------------------------------------------------
# Tiny models whose every channel matters
# ----------------------------------------------------------------------------------------------


@functools.cache
def image_size(arch: str, layout: str) -> int:
    """The smallest side in ``SIDES`` at which the network runs and every convolution whose input
    is more than 1x1 still gives at least 2x2: the last stage keeps a border, so padding and
    spatial kernels are exercised (a squeeze-excitation conv on a pooled 1x1 input is exempt).
    ImageNet layouts (total stride 32) get 64 px, the CIFAR layouts (stride 8) 16 px."""
    model = models.build(arch, smallest_width(arch), NUM_CLASSES, layout).eval()
    shapes = []  # (input, output) spatial sizes of every conv in one forward

    def record(module, args, out):
        shapes.append((args[0].shape[-2:], out.shape[-2:]))

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    try:
        for side in SIDES:
            shapes.clear()
            try:
                with torch.no_grad():
                    out = model(torch.zeros(1, 3, side, side))
            except RuntimeError:
                continue
            if out.shape == (1, NUM_CLASSES) and all(
                    min(o) >= 2 for i, o in shapes if min(i) > 1):
                return side
    finally:
        for h in handles:
            h.remove()
    return SIDES[-1]


def make_model(arch: str, layout: str, seed: int = 0) -> nn.Module:
    """A fresh copy of ``randomised_model`` (built once per family, layout and seed)."""
    return copy.deepcopy(randomised_model(arch, layout, seed))


@functools.cache
def randomised_model(arch: str, layout: str, seed: int = 0) -> nn.Module:
    """The family's network at its smallest width and 5 classes, in eval mode, randomised so
    that folding or gating mistakes cannot hide and every unit's channels change the loss.

    Random BN affines (no BN is the identity); BN statistics calibrated on random images so that
    each layer's output is at unit scale (with plain initialization early channels' signal fades,
    candidate losses agree to 1e-6 and rounding decides), then perturbed at random (the running
    statistics are not the batch's: a fold that forgot the running mean or variance shows);
    a floor on the variances keeps near-dead channels from amplifying rounding chaotically; the
    last Linear is scaled so the logits have a spread of about 2 (no saturated softmax).
    """
    torch.manual_seed(seed)
    model = models.build(arch, smallest_width(arch), NUM_CLASSES, layout)
    generator = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    with torch.no_grad():
        for bn in bns:
            if bn.affine:
                bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.2)
            bn.momentum = None  # cumulative average: the calibration batch's statistics
        side = image_size(arch, layout)
        model.train()
        model(torch.randn(16, 3, side, side, generator=generator))
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            if bn.track_running_stats:
                std = bn.running_var.sqrt()
                bn.running_mean.add_(0.2 * std * torch.randn(bn.num_features,
                                                             generator=generator))
                bn.running_var.mul_(torch.rand(bn.num_features, generator=generator) + 0.6)
                bn.running_var.clamp_(min=0.03)
        model.eval()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            logits = model(torch.randn(16, 3, side, side, generator=generator))
            linears[-1].weight.mul_(2.0 / logits.std().clamp(min=1e-6))
    return model


def images(seed: int, arch: str, layout: str, size: int = BATCH) -> torch.Tensor:
    side = image_size(arch, layout)
    return torch.randn(size, 3, side, side, generator=torch.Generator().manual_seed(seed))


def batch(seed: int, arch: str, layout: str, size: int = BATCH):
    generator = torch.Generator().manual_seed(10_000 + seed)
    return images(seed, arch, layout, size), torch.randint(0, NUM_CLASSES, (size,),
                                                           generator=generator)


class Batches:
    """The same endless sequence of batches for every run with the same seed."""

    def __init__(self, seed: int, arch: str, layout: str):
        self.seed, self.arch, self.layout, self.drawn = seed, arch, layout, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return batch(1000 * self.seed + self.drawn, self.arch, self.layout)


# ----------------------------------------------------------------------------------------------
# Selections
# ----------------------------------------------------------------------------------------------


def random_counts(size: int, generator: torch.Generator) -> torch.Tensor:
    """A multiset selection of about half the channels: some channels twice, some dropped.

    2N/3 draws with replacement select about half the channels, some of them several times; one
    selected channel is forced to multiplicity 2 and at least one channel is left out.
    """
    counts = torch.zeros(size, dtype=torch.long)
    picks = torch.randint(0, size, (max(2, size * 2 // 3),), generator=generator)
    counts.index_add_(0, picks, torch.ones_like(picks))
    selected = torch.nonzero(counts).flatten()
    counts[selected[0]] = max(2, int(counts[selected[0]]))
    if bool((counts > 0).all()):
        counts[selected[-1]] = 0
    return counts


def select_all(units, masks, seed: int) -> dict[str, torch.Tensor]:
    """Install a random selection (``random_counts``) in every unit; returns the counts."""
    generator = torch.Generator().manual_seed(seed)
    counts = {}
    for unit in units:
        counts[unit.name] = random_counts(unit.size, generator)
        masks.set_counts(unit.name, counts[unit.name])
    return counts


def first_middle_last(units: list) -> list:
    if not units:
        return []
    picked = [units[0], units[len(units) // 2], units[-1]]
    return list({u.name: u for u in picked}.values())


def probe_units(units: list) -> list:
    """The first, middle and last unit, and where some units are gated, the first, middle and
    last gated and non-gated unit separately (in the units' order, without repeats)."""
    chosen = first_middle_last(units)
    if any(gates(u) for u in units):
        chosen += first_middle_last([u for u in units if gates(u)])
        chosen += first_middle_last([u for u in units if not gates(u)])
    names = {u.name for u in chosen}
    return [u for u in units if u.name in names]


# ----------------------------------------------------------------------------------------------
# The split's contract, computed from its parts as the fast evaluator uses them
# ----------------------------------------------------------------------------------------------


def logits_from_parts(split, unit, weights: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The network's logits from a unit's block input ``z`` through ``hidden`` and ``tail``, the
    unit's channels mixed with ``weights`` (its mask) outside the network: what
    ``FastEvaluator`` relies on. A gated unit's channels are first scaled by ``split.gate`` of
    their spatial mean with the removed channels zeroed (``pruning.units.UnitSplit``)."""
    h, skip = split.hidden(z)
    w = weights.to(h.dtype).view(1, -1, 1, 1)
    gate = getattr(split, "gate", None)
    if gate is not None:
        kept = (weights > 0).to(h.dtype).view(1, -1, 1, 1)
        h = h * gate(h.mean((2, 3), keepdim=True) * kept)
    mixed = h * w
    conv = split.consumer
    if conv is not None:
        mixed = F.conv2d(mixed, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                         conv.groups)
    return split.tail(skip, mixed)


# ----------------------------------------------------------------------------------------------
# Module shapes
# ----------------------------------------------------------------------------------------------


def out_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return None


def in_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return None


def max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max())
