"""ProxylessNAS-Mobile (models/proxylessnas.py): the published architecture, its MACs, the
authors' checkpoint keys through the repository's weight loading, its units, and the engine's
equalities on it (fast = plain candidate losses, slim = masked, checkpoints rebuild it)."""

import pytest
import torch
from torch import nn

import models
from scripts.runner import prune_cli
from models import proxylessnas, splitter
from models import weights as W
from pruning.checkpoint import Checkpoint, read, save, selection_cfg
from pruning.evaluators import PlainEvaluator
from pruning.fast_evaluators import FastEvaluator, PrefixCachedEvaluator
from pruning.flops import macs_and_params
from pruning.masks import Masks
from tests.support.nets import RTOL, batch, randomize_state, select_some, slim_checked

ARCH = "proxylessnas_mobile"

#: proxyless_mobile.config (han-cai/files, proxylessnas/proxyless_mobile.config), block by block:
#: (in, out, kernel, stride, expand ratio); None: a ZeroLayer with an identity shortcut.
PUBLISHED = [
    (32, 16, 3, 1, 1), (16, 32, 5, 2, 3), (32, 32, 3, 1, 3), None, None,
    (32, 40, 7, 2, 3), (40, 40, 3, 1, 3), (40, 40, 5, 1, 3), (40, 40, 5, 1, 3),
    (40, 80, 7, 2, 6), (80, 80, 5, 1, 3), (80, 80, 5, 1, 3), (80, 80, 5, 1, 3),
    (80, 96, 5, 1, 6), (96, 96, 5, 1, 3), (96, 96, 5, 1, 3), (96, 96, 5, 1, 3),
    (96, 192, 7, 2, 6), (192, 192, 7, 1, 6), (192, 192, 7, 1, 3), (192, 192, 7, 1, 3),
    (192, 320, 7, 1, 6),
]
#: Which blocks the config gives an IdentityLayer shortcut (every in == out, stride-1 block).
SHORTCUTS = {2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18, 19, 20}


def authors_keys() -> list[str]:
    """The state_dict keys of the authors' ProxylessNASNets built from the config, written out
    from the config (not from our model): ConvLayer = conv + bn, MBInvertedConvLayer =
    inverted_bottleneck (expand != 1) / depth_conv / point_linear, each conv + bn; LinearLayer's
    linear."""
    def conv_bn(prefix: str) -> list[str]:
        return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{k}" for k in (
            "weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = conv_bn("first_conv")
    for i, block in enumerate(PUBLISHED):
        if block is None:
            continue
        prefix = f"blocks.{i}.mobile_inverted_conv"
        if block[4] != 1:
            keys += conv_bn(f"{prefix}.inverted_bottleneck")
        keys += conv_bn(f"{prefix}.depth_conv") + conv_bn(f"{prefix}.point_linear")
    return keys + conv_bn("feature_mix_layer") + ["classifier.linear.weight",
                                                  "classifier.linear.bias"]


def test_the_network_is_the_published_config():
    model = models.build(ARCH)
    assert len(model.blocks) == 22
    assert model.first_conv.conv.in_channels == 3 and model.first_conv.conv.out_channels == 32
    assert model.first_conv.conv.stride == (2, 2) and model.first_conv.conv.kernel_size == (3, 3)
    for i, (block, published) in enumerate(zip(model.blocks, PUBLISHED)):
        assert (block.shortcut is not None) == (i in SHORTCUTS), i
        if published is None:
            assert isinstance(block.mobile_inverted_conv, proxylessnas.ZeroLayer), i
            assert not list(block.parameters())
            x = torch.randn(1, 32, 5, 5)
            assert torch.equal(block(x), x)  # the output is the identity shortcut
            continue
        cin, cout, kernel, stride, expand = published
        mb = block.mobile_inverted_conv
        hidden = round(cin * expand)
        assert (mb.inverted_bottleneck is None) == (expand == 1), i
        if mb.inverted_bottleneck is not None:
            conv = mb.inverted_bottleneck.conv
            assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (cin, hidden, (1, 1))
        depth = mb.depth_conv.conv
        assert (depth.in_channels, depth.out_channels, depth.groups) == (hidden, hidden, hidden)
        assert depth.kernel_size == (kernel, kernel) and depth.stride == (stride, stride)
        assert depth.padding == (kernel // 2, kernel // 2)
        point = mb.point_linear.conv
        assert (point.in_channels, point.out_channels, point.kernel_size) == (hidden, cout, (1, 1))
        assert not hasattr(mb.point_linear, "act")  # linear bottleneck
    mix = model.feature_mix_layer.conv
    assert (mix.in_channels, mix.out_channels, mix.kernel_size) == (320, 1280, (1, 1))
    assert (model.classifier.linear.in_features, model.classifier.linear.out_features) == (1280,
                                                                                           1000)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())  # dropout_rate 0
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.1 for bn in bns)
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 2 + 2 * 20 - 1  # block 0: 1
    assert not any(isinstance(m, nn.ReLU | nn.Hardswish | nn.Sigmoid) for m in model.modules())
    assert list(model.state_dict()) == authors_keys()
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_macs_and_params_at_224_are_the_published_networks():
    """ptflops 0.7.5, pytorch backend (the repository's count) and aten backend (320.4M: the
    authors' own count)."""
    from ptflops import get_model_complexity_info

    model = models.build(ARCH).eval()
    assert macs_and_params(model, 224) == (336_045_864, 4_080_512)
    macs, params = get_model_complexity_info(model, (3, 224, 224), as_strings=False,
                                             print_per_layer_stat=False, verbose=False,
                                             backend="aten")
    assert (macs, params) == (320_428_584, 4_080_512)


def test_the_cifar_layout_keeps_4x4_maps_in_the_last_stage():
    model = models.build(ARCH, 1.0, 10, "cifar").eval()
    sizes = []
    model.feature_mix_layer.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert sizes == [4]
    assert macs_and_params(model, 32) == (100_722_186, 2_812_322)  # 6,844,746 MACs at stride 32
    assert macs_and_params(models.build(ARCH, 1.0, 10), 32) == (6_844_746, 2_812_322)
    assert models.default_layout(ARCH, "cifar10") == "cifar"
    imagenet = models.build(ARCH, 1.0, 10)
    assert [k for k in imagenet.state_dict()] == [k for k in model.state_dict()]
    assert all(a.shape == b.shape for a, b in zip(imagenet.state_dict().values(),
                                                  model.state_dict().values()))


def test_the_authors_checkpoint_loads_key_for_key(tmp_path):
    """A ``{'state_dict': ...}`` file with the authors' key names (random weights; an old
    file without num_batches_tracked) loads through --pretrained's path, exactly."""
    source = randomize_state(models.build(ARCH), 0)
    state = {k: v.clone() for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert set(state) == {k for k in authors_keys() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "proxyless_mobile.pth"
    torch.save({"state_dict": state, "epoch": 300, "best_acc": 74.6}, path)
    target = models.build(ARCH)
    description = W.load_pretrained(target, ARCH, path)
    assert "'state_dict' entry" in description
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source(x))
    # a 10-class fine-tune of the 1000-class weights keeps only the classifier at its init
    small = models.build(ARCH, 1.0, 10)
    head = small.classifier.linear.weight.clone()
    text = W.load_pretrained(small, ARCH, path, allow_head_mismatch=True)
    assert "classifier not loaded" in text and torch.equal(small.classifier.linear.weight, head)
    assert torch.equal(small.feature_mix_layer.conv.weight, source.feature_mix_layer.conv.weight)
    # a file of another network is refused by name
    del state["blocks.21.mobile_inverted_conv.point_linear.bn.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="1 missing"):
        W.load_pretrained(models.build(ARCH), ARCH, path)


def test_units_are_the_hidden_channels_of_the_20_non_zero_blocks():
    model = models.build(ARCH, 1.0, 10)
    units = models.prunable_units(ARCH, model)
    blocks = [i for i, b in enumerate(PUBLISHED) if b is not None]
    assert [u.name for u in units] == [f"blocks.{i}.hidden" for i in blocks]
    assert len(units) == 20
    assert [u.size for u in units] == [round(PUBLISHED[i][0] * PUBLISHED[i][4]) for i in blocks]
    assert [u.size for u in units][:3] == [32, 48, 96] and units[-1].size == 1152
    first, second = units[0], units[1]
    assert first.space.producers == ("first_conv.conv", "first_conv.bn",
                                     "blocks.0.mobile_inverted_conv.depth_conv.conv",
                                     "blocks.0.mobile_inverted_conv.depth_conv.bn")
    assert first.producer == "first_conv.conv" and first.block == "first_conv"
    assert second.producer == "blocks.1.mobile_inverted_conv.inverted_bottleneck.conv"
    for unit in units:
        assert unit.side == "input" and unit.additive
        assert unit.site == unit.name.replace(".hidden", ".mobile_inverted_conv.point_linear.conv")
        assert unit.space.consumers == (unit.site,)
        assert model.get_submodule(unit.producer).out_channels == unit.size
    with pytest.raises(ValueError, match="unit kind"):
        models.prunable_units(ARCH, model, "hidden+outputs")


def make_model(seed: int = 0, layout: str = "imagenet") -> nn.Module:
    """A randomized 10-class network whose every unit changes the loss clearly (as
    tests.support.nets.make_model: BN statistics calibrated on random inputs, random BN
    affines, a variance floor; no damping needed: every block ends in a BN)."""
    torch.manual_seed(seed)
    model = models.build(ARCH, 1.0, 10, layout)
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32, generator=generator))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.clamp_(min=0.03)
    model.classifier.linear.weight.data.mul_(2.0)
    return model.eval()


@pytest.mark.parametrize("layout", ["imagenet", "cifar"])
def test_fast_losses_equal_the_plain_losses(layout):
    model = make_model(layout=layout)
    units = models.prunable_units(ARCH, model)
    masks = Masks(model, units)
    select_some(units, masks)
    splits = splitter(ARCH, model)
    plain, fast = PlainEvaluator(model, masks), FastEvaluator(model, splits, 24)
    prefix = PrefixCachedEvaluator(model, masks, splits)
    step_batch = batch(3, size=4, pixels=32)
    generator = torch.Generator().manual_seed(2)
    # the stem's unit, no shortcut (block 1), a shortcut (block 2), after the zero layers
    # (block 5), a shortcut late (block 20), the last (block 21)
    names = {"blocks.0.hidden", "blocks.1.hidden", "blocks.2.hidden", "blocks.5.hidden",
             "blocks.20.hidden", "blocks.21.hidden"}
    chosen = [u for u in units if u.name in names]
    assert len(chosen) == len(names)
    for unit in chosen:
        others = masks.weights[unit.name].clone()
        counts = torch.zeros(unit.size, dtype=torch.long)
        counts[torch.randperm(unit.size, generator=generator)[:2]] = torch.tensor([1, 2])
        masks.set_counts(unit.name, counts)
        candidates = torch.cat([torch.nonzero(counts).flatten(),
                                torch.randint(0, unit.size, (5,), generator=generator)])
        reference = plain.losses(unit, counts, candidates, step_batch)
        assert reference.max() - reference.min() > 20 * RTOL * reference.mean(), unit.name
        for evaluator in (fast, prefix):
            torch.testing.assert_close(evaluator.losses(unit, counts, candidates, step_batch),
                                       reference, rtol=RTOL, atol=0)
        selected = torch.nonzero(counts).flatten()
        torch.testing.assert_close(fast.removal_losses(unit, counts, selected, step_batch),
                                   plain.removal_losses(unit, counts, selected, step_batch),
                                   rtol=RTOL, atol=0)
        masks.set_weights(unit.name, others)
    with torch.no_grad():  # each split's rest is the plain network from the block's input
        x = step_batch[0]
        for unit in chosen:
            split = splits(unit)
            torch.testing.assert_close(split.rest(split.prefix(x)), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["imagenet", "cifar"])
def test_slim_equals_masked_and_the_checkpoint_rebuilds_it(layout, tmp_path):
    model = make_model(1, layout)
    units = models.prunable_units(ARCH, model)
    masks = Masks(model, units)
    select_some(units, masks)
    counts = {u.name: (masks.weights[u.name] > 0).long() for u in units}
    x = batch(5, size=2)[0]
    slim, kept, _, out = slim_checked(model, masks, x)
    dense_macs, dense_params = macs_and_params(models.build(ARCH, 1.0, 10, layout), 32)
    slim_macs, slim_params = macs_and_params(slim, 32)
    assert slim_macs < dense_macs and slim_params < dense_params
    assert slim.blocks[0].mobile_inverted_conv.depth_conv.conv.in_channels == \
        slim.first_conv.conv.out_channels == len(kept["blocks.0.hidden"])
    save(Checkpoint("pruned", ARCH, 1.0, 10, slim.state_dict(), "hidden",
                    selection_cfg(units, counts, kept), layout=layout), tmp_path / "p.pth")
    ckpt = read(tmp_path / "p.pth", "--pruned")
    with torch.no_grad():
        assert torch.equal(models.load_model(ckpt).eval()(x), out)


def test_the_scripts_know_the_family():
    args = prune_cli.build_parser(ARCH).parse_args(["--dataset", "cifar10"])
    prune_cli.check_args(args)
    assert args.layout == "cifar" and args.units == "hidden"
    family = models.get(ARCH)
    assert family.script == "proxyless" and family.recipe == {"lr": 0.01,
                                                              "lr_schedule": "cosine"}
    assert not family.has_width
    with pytest.raises(ValueError, match="no width multiplier"):
        models.build(ARCH, 0.5)
