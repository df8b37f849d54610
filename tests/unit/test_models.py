"""Units of the real architectures, physical removal, FLOPs and pruned checkpoints."""

import pytest
import torch

import models
from pruning.checkpoint import Checkpoint, read, save, selection_cfg
from pruning.flops import macs_and_params
from pruning.masks import Masks
from pruning.slim import slim_model
from tests.support.nets import random_selection, randomize_bn, slim_checked

CASES = [
    ("mobilenet_v2", 1.0, "hidden"),
    ("mobilenet_v2", 0.5, "hidden+outputs"),
    ("mobilenet_v2", 0.75, "released"),
    ("resnet34", 1.0, "inner"),
]


@pytest.mark.parametrize("arch,width,kind", CASES)
def test_slim_model_matches_masked_model(arch, width, kind, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(models.build(arch, width, num_classes=10))
    units = models.prunable_units(arch, model, kind)
    masks = Masks(model, units)
    counts = random_selection(units, masks)
    x = torch.randn(2, 3, 64, 64)
    slim, kept, weights, out = slim_checked(model, masks, x)
    slim_params = sum(p.numel() for p in slim.parameters())
    assert slim_params < sum(p.numel() for p in model.parameters())
    # only ordinary modules, no hooks: what ptflops counts is what would be deployed
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in slim.modules())
    for idx in kept.values():
        assert idx == sorted(set(idx))

    # round trip through a checkpoint: rebuilt from the cfg, never a pickled module
    cfg = selection_cfg(units, counts, kept)
    save(Checkpoint("pruned", arch, width, 10, slim.state_dict(), kind, cfg), tmp_path / "p.pth")
    rebuilt = models.load_model(read(tmp_path / "p.pth", "--pruned")).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert macs_and_params(rebuilt, 32) == macs_and_params(slim, 32)

    # the masked checkpoint: full-width weights and mixing weights, loadable on its own
    masked_ckpt = Checkpoint("masked", arch, width, 10, model.state_dict(), kind, cfg,
                             state={"mixing_weights": weights})
    save(masked_ckpt, tmp_path / "masked.pth")
    loaded = read(tmp_path / "masked.pth", "--pruned")
    full = models.load_model(loaded, slim=False).eval()
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in model.parameters())
    folded = models.load_model(loaded).eval()
    with torch.no_grad():
        assert (full(x) - out).abs().max() <= 1e-4 * out.abs().max()
        assert torch.equal(folded(x), out)


def test_block_output_units_remove_stream_channels_physically():
    model = randomize_bn(models.build("mobilenet_v2", 1.0, num_classes=10))
    units = models.prunable_units("mobilenet_v2", model, "hidden+outputs")
    masks = Masks(model, units)
    for unit in units:  # keep channel 0 of every unit only
        c = torch.zeros(unit.size, dtype=torch.long)
        c[0] = 1
        masks.set_counts(unit.name, c)
    slim, kept, _ = masks.slim(model)
    # every stage's residual stream is down to one channel in the real layers
    assert slim.features[3].conv[2].out_channels == 1  # 24-channel stage
    assert slim.features[4].conv[0][0].in_channels == 1
    assert slim.features[16].conv[3].num_features == 1  # 160-channel stage
    assert slim.features[17].conv[0][0].in_channels == 1
    assert kept["stream.2-3"] == [0]


def test_unit_inventory_matches_the_papers_and_the_released_code():
    mb = models.build("mobilenet_v2")
    hidden = models.prunable_units("mobilenet_v2", mb)
    assert len(hidden) == 17 and hidden[0].size == 32 and hidden[-1].size == 960
    released = models.prunable_units("mobilenet_v2", mb, "released")
    assert len(released) == 31 and sum(u.size for u in released) == 8272  # "about 8.3k"
    both = models.prunable_units("mobilenet_v2", mb, "hidden+outputs")
    assert len(both) == 32
    rn = models.prunable_units("resnet34", models.build("resnet34"))
    assert len(rn) == 16 and sum(u.size for u in rn) == 3776
    with pytest.raises(ValueError, match="--units"):
        models.prunable_units("resnet34", models.build("resnet34"), "hidden")
    with pytest.raises(ValueError, match="--width"):
        models.build("mobilenet_v2", 0.6)


def test_flops_baselines_match_torchvision_counts_at_224():
    assert macs_and_params(models.build("mobilenet_v2")) == (320_300_008, 3_504_872)
    assert macs_and_params(models.build("resnet34")) == (3_680_019_432, 21_797_672)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = models.build("mobilenet_v2", 0.5, num_classes=10).eval()
    units = models.prunable_units("mobilenet_v2", model)
    weights = {u.name: torch.ones(u.size) for u in units}
    slim, kept = slim_model(model, units, weights)
    counts = {u.name: torch.ones(u.size, dtype=torch.long) for u in units}
    ckpt = Checkpoint("pruned", "mobilenet_v2", 0.5, 10, slim.state_dict(), "hidden",
                      selection_cfg(units, counts, kept))
    ckpt.width = 1.0  # claims another width than its weights have
    with pytest.raises(RuntimeError, match="size mismatch"):
        models.load_model(ckpt)
