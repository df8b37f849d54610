"""The CIFAR layouts of both families (Wolfe et al., Section 6.2): their MACs, and the engine's
equality tests on them (fast = plain candidate losses, the same greedy picks, slim = masked, a
checkpoint that rebuilds them), and the layout recorded and checked by the scripts."""

import pytest
import torch

from scripts.runner import finetune_cli
import models
from scripts.runner import prune_cli
from models import splitter
from pruning.checkpoint import Checkpoint, read, save, selection_cfg
from scripts.runner.distributed import World
from pruning.evaluators import PlainEvaluator
from pruning.fast_evaluators import FastEvaluator
from pruning.flops import macs_and_params
from pruning.masks import Masks
from pruning.selection import SelectionSettings
from pruning.slim import slim_model
from tests.support.nets import (RTOL, assert_same_selection, batch, make_model, run_selection,
                                select_some, slim_checked)

CIFAR = [("mobilenet_v2", "hidden+outputs"), ("resnet34", "inner")]


def test_macs_at_32_px_are_the_usual_cifar_networks():
    """ptflops (pytorch backend) at 32 px: the CIFAR layouts keep 4x4 maps in the last stage,
    the ImageNet layouts shrink the image to 1x1 (the numbers the issue measured)."""
    assert macs_and_params(models.build("resnet34", 1.0, 10, "cifar"), 32) == (1_163_400_202,
                                                                              21_282_122)
    assert macs_and_params(models.build("mobilenet_v2", 1.0, 10, "cifar"), 32) == (92_779_018,
                                                                                  2_236_682)
    assert macs_and_params(models.build("resnet34", 1.0, 10), 32)[0] == 75_097_098
    assert macs_and_params(models.build("mobilenet_v2", 1.0, 10), 32)[0] == 6_523_402


@pytest.mark.parametrize("arch,kind", CIFAR)
def test_fast_losses_equal_the_plain_losses_on_the_cifar_layouts(arch, kind):
    model = make_model(arch, layout="cifar")
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    select_some(units, masks)
    plain, fast = PlainEvaluator(model, masks), FastEvaluator(model, splitter(arch, model), 24)
    step_batch = batch(3, size=4, pixels=16)
    generator = torch.Generator().manual_seed(2)
    for unit in (units[0], units[len(units) // 2], units[-1]):  # stem side, middle, last
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[torch.randperm(unit.size, generator=generator)[:2]] = torch.tensor([1, 2])
        masks.set_counts(unit.name, counts)
        candidates = torch.randint(0, unit.size, (6,), generator=generator)
        reference = plain.losses(unit, counts, candidates, step_batch)
        assert reference.max() - reference.min() > 20 * RTOL * reference.mean()
        torch.testing.assert_close(fast.losses(unit, counts, candidates, step_batch), reference,
                                   rtol=RTOL, atol=0)


def test_greedy_picks_are_the_plain_evaluators_on_the_cifar_layout():
    model = make_model("resnet34", layout="cifar")
    units = models.prunable_units("resnet34", model)
    splits = splitter("resnet34", model)
    settings = SelectionSettings(candidates=6, replacement=False, seed=3)

    def run(evaluator):
        return run_selection(model, units, ("layer1.0.inner",), evaluator, settings, 4, 0.1)

    reference = run(lambda m, masks: PlainEvaluator(m, masks))
    assert len(reference[1]) >= 6
    assert_same_selection(reference, run(lambda m, masks: FastEvaluator(m, splits, 16)))


@pytest.mark.parametrize("arch,kind", CIFAR)
def test_slim_equals_masked_and_the_checkpoint_rebuilds_the_cifar_layout(arch, kind, tmp_path):
    model = make_model(arch, layout="cifar")
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    select_some(units, masks)
    counts = {u.name: (masks.weights[u.name] > 0).long() for u in units}
    x = batch(5, size=2)[0]
    slim, kept, _, out = slim_checked(model, masks, x)
    width = 0.5 if models.get(arch).has_width else 1.0
    save(Checkpoint("pruned", arch, width, 10, slim.state_dict(), kind,
                    selection_cfg(units, counts, kept), layout="cifar"), tmp_path / "p.pth")
    ckpt = read(tmp_path / "p.pth", "--pruned")
    assert ckpt.layout == "cifar"
    with torch.no_grad():
        assert torch.equal(models.load_model(ckpt).eval()(x), out)


def test_the_layout_follows_the_dataset_and_a_checkpoint_of_the_other_is_refused(tmp_path):
    for dataset, layout in (("cifar10", "cifar"), ("imagenet", "imagenet")):
        args = prune_cli.build_parser("resnet34").parse_args(["--dataset", dataset])
        prune_cli.check_args(args)
        assert args.layout == layout
    explicit = prune_cli.build_parser("resnet34").parse_args(["--dataset", "cifar10", "--layout",
                                                              "imagenet"])
    prune_cli.check_args(explicit)
    assert explicit.layout == "imagenet"

    model = models.build("mobilenet_v2", 0.5, 10, "cifar")
    units = models.prunable_units("mobilenet_v2", model)
    weights = {u.name: torch.ones(u.size) for u in units}
    slim, kept = slim_model(model.eval(), units, weights)
    ones = {u.name: torch.ones(u.size, dtype=torch.long) for u in units}
    path = tmp_path / "cifar.pth"
    save(Checkpoint("pruned", "mobilenet_v2", 0.5, 10, slim.state_dict(), "hidden",
                    selection_cfg(units, ones, kept), layout="cifar"), path)

    def pruned(layout: str):
        args = finetune_cli.build_parser("mobilenet_v2").parse_args(
            ["--pruned", str(path), "--layout", layout])
        return finetune_cli.pruned_network(args)

    with pytest.raises(finetune_cli.UsageError, match="pass --layout cifar"):
        pruned("imagenet")
    rebuilt, ckpt = pruned("cifar")
    assert ckpt.layout == "cifar"
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(rebuilt.eval()(x), slim.eval()(x))
    # the same layout's dense weights as --pretrained: refused across layouts although the
    # shapes agree (only strides differ in MobileNetV2's CIFAR layout)
    dense = tmp_path / "dense.pth"
    save(Checkpoint("training", "mobilenet_v2", 0.5, 10, model.state_dict(), layout="cifar"),
         dense)
    args = finetune_cli.build_parser("mobilenet_v2").parse_args(
        ["--dataset", "synthetic", "--width", "0.5", "--pretrained", str(dense)])
    finetune_cli.check_args(args, World())
    with pytest.raises(finetune_cli.UsageError, match="cifar layout"):
        finetune_cli.build_model(args, 10, None, None)
