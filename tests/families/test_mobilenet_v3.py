"""MobileNetV3-Small: its units and gates, MACs as the paper counts them, torchvision weights,
the first-order score through the SE gate, and a wrongly declared (ungated) family refused at the
end of a prune run. Exactness shared by every family (fast = plain, slim = masked, checkpoints)
is in test_conformance.py."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision_compat  # noqa: F401
from torchvision.ops.misc import SqueezeExcitation

import models
from models import weights as W
from pruning.fast_evaluators import FastEvaluator
from pruning.flops import macs_and_params
from pruning.masks import Masks, mixing_weights
from tests.support import ROOT
from tests.support.cli import run_script

ARCH = "mobilenet_v3_small"
HIDDEN = [16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576]
GATED = [True, False, False] + [True] * 8


def test_eleven_hidden_units_and_their_gates():
    model = models.build(ARCH)
    units = models.prunable_units(ARCH, model)
    assert [u.size for u in units] == HIDDEN
    assert [bool(u.gates) for u in units] == GATED
    assert [u.additive for u in units] == [not g for g in GATED]
    first = units[0]  # no expansion: the stem makes block 1's hidden channels
    assert first.producer == "features.0.0" and first.block == "features.0"
    assert "features.0.1" in first.space.producers
    for unit in units:
        for gate in unit.gates:
            se = model.get_submodule(gate)
            assert isinstance(se, SqueezeExcitation)
            assert f"{gate}.fc1" in unit.space.consumers and f"{gate}.fc2" in unit.space.producers


def test_macs_params_and_batchnorm_as_torchvision_has_them():
    model = models.build(ARCH)
    assert macs_and_params(model, 224) == (60_910_032, 2_542_856)  # ptflops, pytorch backend
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    narrow = models.build(ARCH, 0.75)
    assert [u.size for u in models.prunable_units(ARCH, narrow)][:2] == [16, 56]
    assert models.get(ARCH).infer_width(narrow.state_dict()) == 0.75


def test_torchvision_enum_and_file_weights(monkeypatch, tmp_path):
    from torchvision.models import MobileNet_V3_Small_Weights

    source = models.build(ARCH)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.1)
    weights = MobileNet_V3_Small_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("download attempted although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    x = torch.randn(2, 3, 64, 64)
    target = models.build(ARCH)
    description = W.load_pretrained(target, ARCH, "IMAGENET1K_V1")
    assert "IMAGENET1K_V1" in description and "67.668" in description
    assert torch.equal(target.eval()(x), source.eval()(x))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "mine.pth")
    from_file = models.build(ARCH)
    W.load_pretrained(from_file, ARCH, str(tmp_path / "mine.pth"))
    assert torch.equal(from_file.eval()(x), source(x))
    with pytest.raises(ValueError, match="width 1.0"):
        W.load_pretrained(models.build(ARCH, 0.75), ARCH, "IMAGENET1K_V1")


def _random_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def test_linear_scores_are_the_derivative_through_the_gate():
    """The gated score of candidate k is the first-order change of the loss along k's move (w_k
    up by N/(|S|+1), the gate of k opened when c_k = 0), divided by N/(|S|+1): checked against
    central differences of that same move in float64."""
    torch.manual_seed(0)
    model = _random_statistics(models.build(ARCH, 0.75, 5, "cifar"), 1).double()
    units = models.prunable_units(ARCH, model)
    unit = units[4]
    assert unit.gates
    masks = Masks(model, units)
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[:7] = torch.tensor([1, 2, 1, 0, 1, 3, 1])
    masks.set_counts(unit.name, counts)
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (6,))
    fast = FastEvaluator(model, models.splitter(ARCH, model))
    candidates = torch.tensor([2, 3, 10, 40])
    scores = fast.linear_scores(unit, counts, candidates, (x, y))
    step = fast._prepare(unit, (x, y))
    weights = mixing_weights(counts).double()
    kept = (counts > 0).double()
    size, selected = unit.size, int(counts.sum())

    def loss(w, g):
        out = fast._with_bias(step, fast._gated_mix(step, w.unsqueeze(0), g.unsqueeze(0)))
        return F.cross_entropy(step.split.tail(step.skip, out), y).item()

    delta = 1e-6
    for k, score in zip(candidates.tolist(), scores.tolist()):
        dw = torch.zeros(size, dtype=torch.float64)
        dw[k] = 1.0
        dg = dw * ((selected + 1) / size) * (counts[k] == 0)
        numeric = (loss(weights + delta * dw, kept + delta * dg)
                   - loss(weights - delta * dw, kept - delta * dg)) / (2 * delta)
        assert score == pytest.approx(numeric, rel=1e-5, abs=1e-9)


UNGATED = '''
import dataclasses
import sys

import torchvision_compat  # noqa: F401
import models
from models import mobilenet_v3
from models.registry import Architecture, register
from scripts.runner import prune_cli


def units(model, kind):
    """Block 5's SE is left out of its unit's gates: a wrongly declared family."""
    return [dataclasses.replace(u, gates=()) if u.name == "features.5.hidden" else u
            for u in mobilenet_v3.units(model, kind)]


def split(model, unit):
    cut = mobilenet_v3.split(model, unit)
    return dataclasses.replace(cut, gate=None) if unit.name == "features.5.hidden" else cut


register(dataclasses.replace(mobilenet_v3.ARCHITECTURE, name="ungated_v3", units=units,
                             split=split, torchvision_weights=None))
prune_cli.main("ungated_v3")
'''

TINY = ["--dataset", "synthetic", "--synthetic-images", "64", "--eval-images", "32",
        "--batch-size", "16", "--eval-batch-size", "32", "--workers", "0", "--no-progress",
        "--candidates", "4", "--device", "cpu", "--width", "0.75", "--layout", "cifar",
        "--image-size", "32", "--stop", "fraction", "--keep-fraction", "0.05"]


def test_a_family_whose_se_is_not_gated_fails_the_prune_run(tmp_path):
    script = tmp_path / "ungated_prune.py"
    script.write_text(UNGATED)
    out = tmp_path / "run"
    result = run_script(script, *TINY, "--output-dir", out, expect=1,
                        env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "not the masked one" in lines[0] and "'features.5.hidden'" in lines[0]
    assert not (out / "pruned.pth").exists() and not (out / "masked.pth").exists()
    assert not (out / "summary.json").exists()
    assert (out / "selection_state.pth").exists()  # the selection is kept for --resume


def test_prune_and_finetune_from_the_command_line(tmp_path):
    out = tmp_path / "prune"
    run_script("mobile3_prune.py", *TINY, "--output-dir", out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == ARCH and len(summary["kept"]) == 11
    assert summary["slim_exact"] and summary["slim_vs_masked_float64"] < summary["slim_tolerance"]
    assert summary["macs"] < summary["dense_macs"]
    ft = tmp_path / "ft"
    run_script("mobile3_finetune.py", "--dataset", "synthetic", "--synthetic-images", "64",
               "--synthetic-val-images", "32", "--image-size", "32", "--epochs", "1",
               "--batch-size", "16", "--workers", "0", "--no-progress", "--layout", "cifar",
               "--device", "cpu", "--pruned", out / "pruned.pth", "--output-dir", ft)
    trained = json.loads((ft / "summary.json").read_text())
    assert trained["macs"] == summary["macs"]
