"""Conformance of every registered network family to the engine's contract.

Parametrized over ``models.names()``, each family's ``layout_names`` and, where units matter, its
``unit_kinds``: a family registered by ``models`` is tested here without a line added. The
networks are tiny (smallest width, 5 classes, batches of 4, the smallest image that keeps a 2x2
map in the last stage: ``conformance_support.image_size``) and randomised so that every channel
changes the output (``conformance_support.make_model``). Everything runs on the CPU in float32.

1. every module a unit names exists, with the channel counts its role implies;
2. ``split.rest(split.prefix(x))`` and the split's hidden/consumer/tail parts give the plain
   forward, for every unit;
3. the fast evaluator's candidate and removal losses equal the plain evaluator's;
4. a few greedy steps pick the same channels with either evaluator;
5. the slim network computes the masked network's function (and a missing gate would show);
6. the slim network's MACs/params are ptflops' on the network rebuilt from its checkpoint;
7. pruned and masked checkpoints round-trip;
8. ``Architecture.reinitialize`` draws every parameter of every layer.
"""

import copy
import math

import pytest
import torch
from ptflops import get_model_complexity_info
from torch import nn

import models
from pruning.checkpoint import Checkpoint, read, save, selection_cfg
from pruning.evaluators import PlainEvaluator, supports
from pruning.fast_evaluators import FastEvaluator
from pruning.flops import macs_and_params
from pruning.masks import Masks
from pruning.precision import exact_float32
from pruning.selection import SelectionSettings, select_unit
from pruning.verify import float64_logits, slim_verification
from pruning.stop import MatchKept
from pruning.units import check_units, spaces_of
from tests.support.conformance import (
    NUM_CLASSES, Batches, batch, gates, image_size, images, in_channels, kind_cases, layout_cases,
    logits_from_parts, make_model, max_abs, out_channels, probe_units, producer, random_counts,
    randomised_model, require_split, select_all, smallest_width, ungated,
)
from tests.support.nets import Recording

#: Fast vs plain losses, relative (the issue's requirement: equal to 1e-5 on CPU in float32).
#: The two compute the same mean cross-entropy through different float32 operation orders (a
#: rank-one update of the consumer's output vs the full masked conv); on these tiny networks the
#: losses agree to 1.5e-7..1.6e-6 (measured), so 1e-5 leaves a margin of six or more, while a
#: wrong term moves a loss by far more (the spread check below asserts that the candidates'
#: losses differ by more than 20 times this, so a swapped or missing candidate shows).
RTOL = 1e-5
#: The split's parts vs the plain forward, relative to the largest |logit|: the same modules run
#: on the same tensors (prefix/rest), or the unit's mixing moved out of a hook into a functional
#: conv (hidden/tail). Bitwise equal for the four families at the time of writing; 1e-6 (a few
#: float32 roundings per layer) allows an op order that differs without hiding a wrong term.
SPLIT_TOL = 1e-6
#: Slim vs masked logits, relative to the largest |logit|. Folding the multipliers into weights
#: is exact in real arithmetic; what remains is float32 rounding, of the order of the masked
#: network's own error against its float64 value (``slim_verification``): 2e-7 to 1.3e-6 of the
#: largest logit on these networks, so 1e-5 leaves a margin of ten. A missing gate or a fold
#: that forgets a BN bias moves the logits by 1e-2 to 1 of the largest (checked by breaking it).
SLIM_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _release_the_model_cache():
    """The randomised networks are built once per family and layout; freed after this file."""
    yield
    randomised_model.cache_clear()


def build_masked(arch: str, layout: str, kind: str, seed: int = 1):
    model = make_model(arch, layout)
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    counts = select_all(units, masks, seed)
    return model, units, masks, counts


# ----------------------------------------------------------------------------------------------
# 1. the units name modules that exist, with the right channel counts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_every_module_a_unit_names_exists_with_the_units_channel_count(arch, layout, kind):
    model = models.build(arch, smallest_width(arch), NUM_CLASSES, layout)
    units = models.prunable_units(arch, model, kind)
    assert units, f"{arch} {kind}: no units"
    modules = dict(model.named_modules())
    problems = []

    def need(unit, role, name, wanted=None):
        if name not in modules:
            problems.append(f"{unit.name}: {role} {name!r} is not a module of the model")
        elif wanted is not None:
            got = wanted(modules[name])
            if got != unit.size:
                problems.append(f"{unit.name}: {role} {name!r} has {got} channels, the unit "
                                f"{unit.size}")

    for unit in units:
        assert unit.side in ("input", "output"), unit
        need(unit, "block", unit.block)
        need(unit, "site", unit.site, in_channels if unit.side == "input" else out_channels)
        for name in unit.space.producers:
            need(unit, "producer of the space", name, out_channels)
        for name in unit.space.consumers:
            need(unit, "consumer of the space", name, in_channels)
        if producer(unit) is not None:
            need(unit, "producer", producer(unit), out_channels)
            if producer(unit) in modules and not isinstance(modules[producer(unit)], nn.Conv2d):
                problems.append(f"{unit.name}: producer {producer(unit)!r} is not a conv")
            if producer(unit) not in unit.space.producers:
                problems.append(f"{unit.name}: producer {producer(unit)!r} is not a producer "
                                f"of its space")
        for name in gates(unit):
            need(unit, "gate", name)
        if unit.side == "input" and unit.site in modules:
            site = modules[unit.site]
            dense = isinstance(site, nn.Linear) or (isinstance(site, nn.Conv2d)
                                                    and site.groups == 1)
            if not dense:
                problems.append(f"{unit.name}: input-side site {unit.site!r} is not a dense "
                                f"conv or linear layer (the multipliers cannot be folded)")
            if unit.site not in unit.space.consumers:
                problems.append(f"{unit.name}: site {unit.site!r} is not a consumer of its space")
        if unit.side == "output" and unit.site not in unit.space.producers:
            problems.append(f"{unit.name}: output-side site {unit.site!r} is not a producer of "
                            f"its space")
    assert not problems, "\n".join(problems)
    check_units(model, units)  # the engine's own check agrees
    spaces_of(units)  # units sharing a space name share the same space

    # a gate is any module whose input carries the unit's channels: seen in a forward
    seen: dict[str, int] = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape[1]  # returns None: the input is left as it is

        return hook

    handles = [modules[name].register_forward_pre_hook(record(name))
               for unit in units for name in gates(unit)]
    side = image_size(arch, layout)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for h in handles:
        h.remove()
    for unit in units:
        for name in gates(unit):
            assert seen.get(name) == unit.size, (
                f"{unit.name}: gate {name!r} reads {seen.get(name)} channels, the unit has "
                f"{unit.size}")


# ----------------------------------------------------------------------------------------------
# 2. the split at every unit computes the plain forward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_the_split_at_every_unit_gives_the_plain_forward(arch, layout, kind):
    """With random selections in every unit (the hooks apply inside the parts), for every unit:
    ``rest(prefix(x))`` is ``model(x)``, and so are the logits from ``hidden``, the unit's mixing
    applied outside the network, the consumer and ``tail`` (``logits_from_parts``)."""
    require_split(arch)
    model, units, masks, _ = build_masked(arch, layout, kind)
    split = models.splitter(arch, model)
    x = images(7, arch, layout, size=2)  # two forwards per unit: a batch of two is enough
    failures = []
    with torch.no_grad():
        plain = model(x)
        scale = max_abs(plain)
        assert scale > 0
        for unit in units:
            parts = split(unit)
            z = parts.prefix(x)
            rest = max_abs(parts.rest(z) - plain) / scale
            mixed = max_abs(logits_from_parts(parts, unit, masks.weights[unit.name], z) - plain)
            if rest > SPLIT_TOL or mixed / scale > SPLIT_TOL:
                failures.append(f"{unit.name}: rest(prefix(x)) off by {rest:.2e}, "
                                f"hidden/consumer/tail off by {mixed / scale:.2e} of max|logit| "
                                f"{scale:.3g}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------------------------
# 3. fast = plain candidate losses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_fast_losses_equal_the_plain_losses(arch, layout, kind):
    """First, middle and last unit (and first/middle/last gated and non-gated unit where some are
    gated), from a random multiset selection, every other unit also holding one. Candidates:
    selected channels (one of multiplicity 2), unselected ones and a repeat (six), four per tail
    pass so that the last chunk is incomplete. Removal losses of selected channels too (one of
    multiplicity 2, one whose removal drops the channel: a gated unit's gate changes)."""
    require_split(arch)
    model, units, masks, _ = build_masked(arch, layout, kind)
    splits = models.splitter(arch, model)
    plain = PlainEvaluator(model, masks)
    generator = torch.Generator().manual_seed(2)
    step_batch = batch(3, arch, layout)
    fast = FastEvaluator(model, splits, samples_per_pass=4 * len(step_batch[1]))
    for unit in probe_units(units):
        counts = random_counts(unit.size, generator)
        masks.set_counts(unit.name, counts)
        before = masks.weights[unit.name].clone()
        selected = torch.nonzero(counts).flatten()
        unselected = torch.nonzero(counts == 0).flatten()
        twice = torch.nonzero(counts >= 2).flatten()[:1]
        candidates = torch.cat([
            twice, selected[torch.randperm(len(selected), generator=generator)[:1]],
            unselected[torch.randperm(len(unselected), generator=generator)[:3]]])
        candidates = torch.cat([candidates, candidates[-1:]])
        where = f"{arch} {layout} {kind} unit {unit.name} (gates {gates(unit)})"
        reference = plain.losses(unit, counts, candidates, step_batch)
        spread = float(reference.max() - reference.min())
        assert spread > 20 * RTOL * float(reference.mean()), (
            f"{where}: candidate losses too alike to test ({reference.tolist()})")
        got = fast.losses(unit, counts, candidates, step_batch)
        torch.testing.assert_close(got, reference, rtol=RTOL, atol=0,
                                   msg=lambda m, where=where: f"{where}: losses\n{m}")
        assert torch.equal(masks.weights[unit.name], before), f"{where}: the mask was changed"
        if supports(fast, "removal_losses") and supports(plain, "removal_losses"):
            once = torch.nonzero(counts == 1).flatten()[:1]  # removing it drops the channel
            removed = torch.cat([twice, once])
            torch.testing.assert_close(
                fast.removal_losses(unit, counts, removed, step_batch),
                plain.removal_losses(unit, counts, removed, step_batch), rtol=RTOL, atol=0,
                msg=lambda m, where=where: f"{where}: removal losses\n{m}")
            assert torch.equal(masks.weights[unit.name], before)
        masks.set_counts(unit.name, counts)


# ----------------------------------------------------------------------------------------------
# 4. greedy selection picks the same channels with either evaluator
# ----------------------------------------------------------------------------------------------


STEPS = 3


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_greedy_steps_pick_the_same_channels_with_the_fast_evaluator(arch, layout, kind):
    """``select_unit`` on the middle unit (the middle gated one where there are gated units),
    starting empty, 5 random candidates a step, the other units holding random selections."""
    require_split(arch)
    model, units, masks, _ = build_masked(arch, layout, kind)
    gated = [u for u in units if gates(u)]
    unit = (gated or units)[len(gated or units) // 2]
    index = units.index(unit)
    settings = SelectionSettings(candidates=5, replacement=False, seed=4)
    splits = models.splitter(arch, model)

    def run(evaluator):
        picks = []
        recording = Recording(evaluator)
        counts = select_unit(unit, masks, recording, Batches(5, arch, layout),
                             MatchKept({unit.name: STEPS}), settings, index,
                             log_step=lambda u, step, best, loss, e: picks.append(best))
        return counts, picks, recording.steps

    plain_counts, plain_picks, plain_steps = run(PlainEvaluator(model, masks))
    fast_counts, fast_picks, fast_steps = run(FastEvaluator(model, splits, 12))
    assert len(plain_picks) == STEPS == len(set(plain_picks))
    where = f"{arch} {layout} {kind} unit {unit.name}"
    for step, (a, b) in enumerate(zip(plain_steps, fast_steps)):
        assert a.max() - a.min() > 20 * RTOL * a.mean(), f"{where}: step {step} losses alike"
        torch.testing.assert_close(b, a, rtol=RTOL, atol=0,
                                   msg=lambda m, step=step: f"{where} step {step}:\n{m}")
    gaps = [float((s.sort().values[1] - s.min()) / s.min()) for s in plain_steps]
    assert fast_picks == plain_picks, (f"{where}: picks {fast_picks} != plain {plain_picks} "
                                       f"(plain's best-to-runner-up gaps {gaps})")
    assert torch.equal(fast_counts, plain_counts)


# ----------------------------------------------------------------------------------------------
# 5. slim = masked
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_the_slim_network_computes_the_masked_networks_logits(arch, layout, kind):
    """Random BN statistics and affines, random multiset selections with dropped channels in
    every unit: the slim network's logits are the masked network's to ``SLIM_TOL`` of the
    largest logit, and not further from the float64 masked logits than rounding allows.

    Sensitivity: the selection moves the logits by far more than the tolerance (a mask at the
    wrong site would show), and where units are gated, the same network masked without the
    gates (a family that forgot to declare them) is off from the slim one by far more too."""
    model, units, masks, counts = build_masked(arch, layout, kind)
    assert all(bool((c == 0).any()) for c in counts.values())
    x = images(8, arch, layout)
    with torch.no_grad(), exact_float32():
        masked = model(x)
        reference = float64_logits(model, x)
    slim, kept, _ = masks.slim(model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in slim.modules())
    with torch.no_grad(), exact_float32():
        dense = model(x)
        out = slim(x)
    scale = max_abs(masked)
    check = slim_verification(out, masked, reference)
    where = f"{arch} {layout} {kind}: {check}"
    assert check["max_rel_diff_slim_vs_masked"] <= SLIM_TOL, where
    # the slim network's own rounding is of the masked network's order (ten times, plus a floor
    # at float32 resolution of the logits)
    assert check["slim_error_vs_float64"] <= (10 * check["masked_error_vs_float64"]
                                              + 1e-6 * scale), where
    assert max_abs(dense - masked) > 1e3 * SLIM_TOL * scale, "the selection barely matters"

    # the physical shapes: every producer and consumer of a space has its kept channels
    modules = dict(slim.named_modules())
    for space in spaces_of(units).values():
        assert len(kept[space.name]) < space.size or all(
            bool((counts[u.name] > 0).all()) for u in units if u.space.name == space.name)
        for name in space.producers:
            assert out_channels(modules[name]) == len(kept[space.name]), (space.name, name)
        for name in space.consumers:
            assert in_channels(modules[name]) == len(kept[space.name]), (space.name, name)
    assert (sum(p.numel() for p in slim.parameters())
            < sum(p.numel() for p in model.parameters()))

    gated = [u for u in units if gates(u)]
    if gated:  # the masked network without its gates is another function than the slim one
        forgetful = Masks(model, [ungated(u) for u in units])
        for name, c in counts.items():
            forgetful.set_counts(name, c)
        with torch.no_grad(), exact_float32():
            without_gates = model(x)
        forgetful.remove()
        missed = max_abs(without_gates - out) / scale
        assert missed > 1e3 * SLIM_TOL, (
            f"{arch} {layout} {kind}: forgetting the gates of {len(gated)} units moves the "
            f"logits by only {missed:.2e} of the largest: the test could not see a missing gate")


# ----------------------------------------------------------------------------------------------
# 6. and 7. checkpoints: MACs of the rebuilt network, round trips
# ----------------------------------------------------------------------------------------------


def pruned_files(arch: str, layout: str, kind: str, folder):
    """A random selection slimmed and written as the prune CLI writes ``pruned.pth`` and
    ``masked.pth`` (``prune_cli.report``); returns what the files must reproduce."""
    model, units, masks, counts = build_masked(arch, layout, kind)
    x = images(9, arch, layout)
    with torch.no_grad():
        masked_logits = model(x)
    full_width = {k: v.detach().clone() for k, v in model.state_dict().items()}
    slim, kept, weights = masks.slim(model)
    cfg = selection_cfg(units, counts, kept)
    width, args, metrics = smallest_width(arch), {"arch": arch}, {"note": "conformance"}
    save(Checkpoint("pruned", arch, width, NUM_CLASSES, slim.state_dict(), kind, cfg, args,
                    metrics, {}, layout), folder / "pruned.pth")
    save(Checkpoint("masked", arch, width, NUM_CLASSES, full_width, kind, cfg, args, metrics,
                    {"mixing_weights": {k: v.cpu() for k, v in weights.items()}}, layout),
         folder / "masked.pth")
    return slim.eval(), x, masked_logits, weights


def assert_same_state(got: nn.Module, want: nn.Module, where: str) -> None:
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys(), f"{where}: keys differ: {set(a) ^ set(b)}"
    different = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not different, f"{where}: tensors differ: {different}"


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_the_slim_networks_macs_are_ptflops_on_the_network_rebuilt_from_its_checkpoint(
        arch, layout, kind, tmp_path):
    slim, x, _, _ = pruned_files(arch, layout, kind, tmp_path)
    rebuilt, ckpt = models.load_pruned(tmp_path / "pruned.pth")
    rebuilt.eval()
    assert (ckpt.kind, ckpt.arch, ckpt.layout, ckpt.unit_kind, ckpt.num_classes) == (
        "pruned", arch, layout, kind, NUM_CLASSES)
    where = f"{arch} {layout} {kind}"
    assert_same_state(rebuilt, slim, where)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), slim(x)), where
    side = image_size(arch, layout)
    macs, params = macs_and_params(slim, side)
    counted, counted_params = get_model_complexity_info(
        copy.deepcopy(rebuilt), (3, side, side), as_strings=False, print_per_layer_stat=False,
        verbose=False, backend="pytorch")
    assert (macs, params) == (int(counted), int(counted_params)), where
    assert params == sum(p.numel() for p in rebuilt.parameters())
    dense_macs, dense_params = macs_and_params(randomised_model(arch, layout), side)  # copies
    assert macs < dense_macs and params < dense_params, where


@pytest.mark.parametrize("arch,layout,kind", kind_cases())
def test_pruned_and_masked_checkpoints_round_trip(arch, layout, kind, tmp_path):
    slim, x, masked_logits, weights = pruned_files(arch, layout, kind, tmp_path)
    where = f"{arch} {layout} {kind}"
    with torch.no_grad():
        want = slim(x)
        # both files reload as the slim network (pruned.pth through load_pruned: test 6)
        ckpt = read(tmp_path / "pruned.pth", "--pruned", ("pruned",))
        again = models.load_model(ckpt).eval()
        assert_same_state(again, slim, f"{where} pruned.pth")
        assert torch.equal(again(x), want), f"{where} pruned.pth"
        folded, ckpt = models.load_pruned(tmp_path / "masked.pth")
        assert (ckpt.kind, ckpt.arch, ckpt.layout, ckpt.unit_kind) == ("masked", arch, layout,
                                                                         kind)
        assert_same_state(folded, slim, f"{where} masked.pth")
        assert torch.equal(folded.eval()(x), want), f"{where} masked.pth"
        # the masked checkpoint at full width, its masks installed again: the masked network
        ckpt = read(tmp_path / "masked.pth", "--pruned", ("masked",))
        full = models.load_model(ckpt, slim=False).eval()
        assert set(full.masks.weights) == set(weights)
        for name, w in weights.items():
            assert torch.equal(full.masks.weights[name], w), name
        full_logits = full(x)
        assert torch.equal(full_logits, masked_logits), where
        assert max_abs(full_logits - want) <= SLIM_TOL * max_abs(want), where


# ----------------------------------------------------------------------------------------------
# 8. reinitialize draws every layer
# ----------------------------------------------------------------------------------------------


def kaiming_fan_out_std(weight: torch.Tensor) -> float:
    fan_out = weight.shape[0] * weight[0][0].numel()
    return math.sqrt(2.0 / fan_out)


@pytest.mark.parametrize("arch,layout", layout_cases())
def test_reinitialize_draws_every_parameter_of_every_layer(arch, layout):
    """Every parameter and BN buffer of the dense and a slim network is first overwritten with a
    sentinel; after ``reinitialize`` none may be left, and the documented inits hold: BN at
    identity with fresh statistics, conv biases zero, conv weights Kaiming-normal (fan_out)."""
    family = models.get(arch)
    model = make_model(arch, layout)
    units = models.prunable_units(arch, model)
    masks = Masks(model, units)
    select_all(units, masks, seed=3)
    slim, _, _ = masks.slim(model)
    for network, what in ((model, "dense"), (slim, "slim")):
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for tensor in [*network.parameters(), *network.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 3.0)
                else:
                    tensor.fill_(7)
        before = {k: v.clone() for k, v in network.state_dict().items()}
        assert family.reinitialize(network) is network
        missed, wrong = [], []
        for name, module in network.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                key = f"{name}.{pname}" if name else pname
                if torch.equal(param, before[key]) or (param >= 3).all():
                    missed.append(f"{key} ({type(module).__name__})")
                elif not torch.isfinite(param).all():
                    wrong.append(f"{key}: not finite")
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                identity = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0,
                            "num_batches_tracked": 0}
                for field, value in identity.items():
                    tensor = getattr(module, field, None)
                    if tensor is not None and not bool((tensor == value).all()):
                        wrong.append(f"{name}.{field}: not reset to {value}")
            elif isinstance(module, nn.Conv2d):
                if module.bias is not None and bool(module.bias.any()):
                    wrong.append(f"{name}.bias: not zero")
                w = module.weight
                if w.numel() >= 1000:  # the sample std within 20% (its error is ~1/sqrt(2n))
                    expected = kaiming_fan_out_std(w)
                    std = float(w.detach().std())
                    if not 0.8 * expected < std < 1.2 * expected:
                        wrong.append(f"{name}.weight: std {std:.4g}, Kaiming "
                                     f"fan_out {expected:.4g}")
        assert not missed, f"{arch} {layout} {what}: reinitialize left {missed}"
        assert not wrong, f"{arch} {layout} {what}: {wrong}"
        with torch.no_grad():
            logits = network(images(12, arch, layout))
        assert torch.isfinite(logits).all() and logits.shape[1] == NUM_CLASSES

