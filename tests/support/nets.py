"""Tiny networks, their batches, and the comparison of two greedy selections.

Three kinds of network:

* ``tiny_net`` / ``tiny_units``: two convolutions (8 and 6 channels) small enough to check the
  engine by brute force (``brute_force_loss`` builds each subnetwork physically), fed by
  ``Recorder``'s random 8 x 8 batches;
* ``randomize_bn`` / ``random_selection``: non-trivial BatchNorms and a multiset selection on
  any of the real architectures, for the checks of slimming and checkpoints;
* ``make_model``: a randomized MobileNetV2 x0.5 or ResNet34 in which every unit's channels
  clearly change the loss, fed by ``batch`` / ``Batches``, with ``select_some`` giving every
  unit a partial selection; ``run_selection`` runs a greedy selection on it and
  ``assert_same_selection`` compares two of them (picks, counts, losses within ``RTOL``).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from pruning.masks import Masks
from pruning.selection import greedy_forward_selection
from pruning.slim import slim_model
from pruning.stop import MaxFraction
from pruning.units import ChannelSpace, Unit

#: Fast vs plain candidate losses (fp32, CPU): the same function in another order of summation.
RTOL = 1e-5


# -- the brute-force network ---------------------------------------------------------------------


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.3)
    return net.eval()


def tiny_units() -> list[Unit]:
    first = ChannelSpace("c1", 8, ("0", "1"), ("3",))
    second = ChannelSpace("c2", 6, ("3", "4"), ("8",))
    return [Unit("u1", first, "3", "input", "0", producer="0"),
            Unit("u2", second, "8", "input", "3", producer="3")]


class Recorder:
    """Endless random batches that remember what they handed out."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = []

    def __iter__(self):
        return self

    def __next__(self):
        batch = (torch.randn(16, 3, 8, 8, generator=self.generator),
                 torch.randint(0, 4, (16,), generator=self.generator))
        self.seen.append(batch)
        return batch


def brute_force_loss(net, units, weights, batch) -> float:
    """Loss of the subnetwork built physically (no hooks) from the given mixing weights."""
    slim, _ = slim_model(net, units, weights)
    return F.cross_entropy(slim(batch[0]), batch[1]).item()


# -- the real architectures, randomized ---------------------------------------------------------


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so that folding mistakes cannot hide behind identity BNs."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


def randomize_state(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters *and* BN statistics, so that eval outputs depend on every tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model.eval()


def slim_checked(model: nn.Module, masks: Masks, x: torch.Tensor):
    """``masks.slim(model)`` after asserting that the slim network computes the masked one on
    ``x`` to float32 rounding: the slim network, its kept channels, the mixing weights and its
    output on ``x`` (for the checks of a rebuilt copy)."""
    with torch.no_grad():
        masked = model(x)
    slim, kept, weights = masks.slim(model)
    with torch.no_grad():
        out = slim(x)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()
    return slim, kept, weights, out


def random_selection(units, masks, seed=1) -> dict[str, torch.Tensor]:
    """A multiset selection of about a third of each unit, with repeats."""
    generator = torch.Generator().manual_seed(seed)
    counts = {}
    for unit in units:
        c = torch.zeros(unit.size, dtype=torch.long)
        picks = torch.randint(0, unit.size, (max(1, unit.size // 3),), generator=generator)
        c.index_add_(0, picks, torch.ones_like(picks))
        masks.set_counts(unit.name, c)
        counts[unit.name] = c
    return counts



# -- MobileNetV2 and ResNet34 whose every channel matters ----------------------------------------


def make_model(arch: str, seed: int = 0, layout: str = "imagenet") -> nn.Module:
    """A randomized network in which every unit's channels clearly change the loss.

    With plain random initialization the signal of early channels fades (candidate losses alike
    to 1e-5, so rounding would decide). Calibrating every BN's statistics on random inputs keeps
    each layer's output at unit scale; a floor on the variances keeps near-dead channels from
    amplifying rounding errors chaotically; random BN affines make no BN the identity; ResNet's
    residual branches are damped so that the stream does not explode.
    """
    torch.manual_seed(seed)
    model = models.build(arch, 0.5 if arch == "mobilenet_v2" else 1.0, 10, layout)
    generator = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
            m.weight.data.mul_(0.2 if name.endswith("bn2") else 1.0)
            m.momentum = None  # cumulative average: the statistics of the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32, generator=generator))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # no near-dead channel amplifying rounding errors
            m.running_var.clamp_(min=0.03)
    head = model.classifier[1] if arch == "mobilenet_v2" else model.fc
    head.weight.data.mul_(2.0 if arch == "mobilenet_v2" else 0.3)
    return model.eval()


def batch(seed: int, size: int = 8, pixels: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 3, pixels, pixels, generator=generator),
            torch.randint(0, 10, (size,), generator=generator))


def select_some(units, masks, seed: int = 1) -> None:
    """About half of every unit selected, with repeats: no unit is dense or empty."""
    generator = torch.Generator().manual_seed(seed)
    for unit in units:
        counts = torch.zeros(unit.size, dtype=torch.long)
        picks = torch.randint(0, unit.size, (max(1, unit.size * 2 // 3),), generator=generator)
        counts.index_add_(0, picks, torch.ones_like(picks))
        masks.set_counts(unit.name, counts)


class Batches:
    """The same endless sequence of batches for every run that uses the same seed."""

    def __init__(self, seed: int, size: int = 8):
        self.seed, self.size, self.drawn = seed, size, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return batch(1000 * self.seed + self.drawn, self.size)


class Recording:
    """Passes losses through and keeps every step's vector."""

    def __init__(self, inner):
        self.inner, self.steps = inner, []

    def losses(self, unit, counts, candidates, batch):
        self.steps.append(self.inner.losses(unit, counts, candidates, batch))
        return self.steps[-1]


def run_selection(model, units, selected, evaluator, settings, batch_size, fraction):
    """Greedy selection of the units named in ``selected``; the counts and the picks.

    The other units carry a partial selection (``select_some``): behind dense later units a
    random network's loss hardly depends on an early channel (candidates alike to 1e-6), and
    float rounding, not the evaluator, would decide between near-equal candidates.
    """
    masks = Masks(model, units)
    select_some(units, masks)
    picks = []
    counts = greedy_forward_selection(
        [u for u in units if u.name in selected], masks, evaluator(model, masks),
        Batches(5, batch_size), MaxFraction(fraction), settings,
        log_step=lambda unit, step, best, loss, e: picks.append((unit.name, best, loss)),
    )
    masks.remove()
    return counts, picks


def assert_same_selection(first, second):
    (counts_a, picks_a), (counts_b, picks_b) = first, second
    assert [p[:2] for p in picks_a] == [p[:2] for p in picks_b]
    assert all(torch.equal(counts_a[name], counts_b[name]) for name in counts_a)
    for a, b in zip(picks_a, picks_b):
        assert a[2] == pytest.approx(b[2], rel=RTOL)
