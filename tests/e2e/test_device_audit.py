"""Every per-step and per-batch path keeps its tensors on the data's device and reads the host
once per call, checked on the CPU by running it on the meta device (``support/device_audit.py``).

The first GPU run crashed in ``finetune_cli.evaluate`` because a count tensor was created on the
CPU; ``test_evaluate_stays_on_the_device_and_reads_the_host_once`` fails on that code.
"""

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from scripts.runner import finetune_cli
import models
from scripts.runner import prune_cli
from models import splitter
from pruning.baselines import backward_elimination
from scripts.runner.runlog import RunLog
from pruning.evaluators import PlainEvaluator
from pruning.fast_evaluators import FastEvaluator, PrefixCachedEvaluator
from scripts.runner.grda import gRDA, grda_param_groups
from pruning.masks import Masks
from pruning.metrics import SubsetMeasure
from pruning.selection import SelectionSettings, greedy_forward_selection
from pruning.shortlist import ShortlistEvaluator
from pruning.stop import LossGap, MaxFraction
from tests.support.device_audit import META, DeviceAudit, MixedDevices

PIXELS = 16


def meta_model(arch: str):
    model = models.build(arch, 0.5 if arch == "mobilenet_v2" else 1.0, num_classes=10)
    return model.to(META).eval()


def meta_batch(size: int = 4):
    return (torch.randn(size, 3, PIXELS, PIXELS, device=META),
            torch.randint(0, 10, (size,), device=META))


def loader(images: int, batch_size: int = 4) -> DataLoader:
    data = TensorDataset(torch.randn(images, 3, PIXELS, PIXELS), torch.randint(0, 10, (images,)))
    return DataLoader(data, batch_size=batch_size)


def train_args(**overrides) -> argparse.Namespace:
    args = {"device": META, "amp": None, "channels_last": False, "label_smoothing": 0.0,
            "no_progress": True, "log_interval": 1000}
    return argparse.Namespace(**{**args, **overrides})


def test_the_audit_catches_a_cpu_tensor_among_device_tensors_and_counts_reads():
    x, y = meta_batch()
    logits = torch.randn(4, 10, device=META)
    with DeviceAudit() as audit:
        with pytest.raises(MixedDevices, match="cpu"):  # the H100's crash in evaluate
            torch.stack([F.cross_entropy(logits, y, reduction="sum"), torch.tensor(y.numel())])
        with pytest.raises(MixedDevices):
            torch.zeros(4, device=META).copy_(torch.ones(4))
        with pytest.raises(MixedDevices):
            x[torch.randperm(4, generator=torch.Generator().manual_seed(0))]
        total = x.sum()
        assert total.item() == 1 and x.sum(0).cpu().shape == (3, PIXELS, PIXELS)
        torch.ones(3).to(META)
    assert audit.reads == ["item", "to cpu"] and audit.uploads == 1


@pytest.mark.parametrize("batches", [1, 3])
def test_evaluate_stays_on_the_device_and_reads_the_host_once(batches):
    model = meta_model("mobilenet_v2")
    with DeviceAudit() as audit:
        metrics = finetune_cli.evaluate(model, loader(4 * batches), train_args())
    assert audit.reads == ["to cpu"]  # the sums, once, after the last batch
    assert audit.uploads == 2 * batches  # images and labels of each batch
    assert set(metrics) == {"val_loss", "top1", "top5"}


@pytest.mark.parametrize("batches", [1, 3])
def test_a_training_epoch_stays_on_the_device_and_reads_the_host_once(batches):
    model = meta_model("resnet34").train()
    args = train_args()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-5)
    scheduler = finetune_cli.make_scheduler("cosine", optimizer, batches)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with DeviceAudit() as audit:
        finetune_cli.train_one_epoch(model, loader(4 * batches), optimizer, scheduler, scaler,
                                     args, 0, 1, RunLog(Path("unused"), is_main=False))
    assert audit.reads == ["item"]  # the epoch's loss sum


def test_grda_steps_on_the_device():
    model = meta_model("mobilenet_v2").train()
    optimizer = gRDA(grda_param_groups(model), lr=0.1, c=0.005, mu=0.51)
    x, y = meta_batch()
    with DeviceAudit() as audit:
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert audit.reads == []


def evaluators(arch: str, model, masks) -> dict:
    split = splitter(arch, model)
    fast = FastEvaluator(model, split, samples_per_pass=8)
    return {"plain": PlainEvaluator(model, masks),
            "prefix": PrefixCachedEvaluator(model, masks, split),
            "fast": fast,
            "shortlist": ShortlistEvaluator(fast, 2)}


@pytest.mark.parametrize("arch", models.names())
def test_each_evaluator_reads_the_host_once_per_call_whatever_the_candidates(arch):
    model = meta_model(arch)
    units = models.prunable_units(arch, model)
    masks = Masks(model, units)
    unit = units[len(units) // 2]
    counts = torch.zeros(unit.size, dtype=torch.long)
    counts[:3] = 1
    batch = meta_batch()
    for name, evaluator in evaluators(arch, model, masks).items():
        calls = [("losses", torch.arange(3, 3 + n)) for n in (3, 7)]
        if name in ("plain", "fast"):
            calls += [("removal_losses", torch.arange(n)) for n in (1, 3)]
        if name == "fast":
            calls += [("linear_scores", torch.arange(n)) for n in (3, 7)]
        for method, candidates in calls:
            with DeviceAudit() as audit:
                result = getattr(evaluator, method)(unit, counts, candidates, batch)
            assert result.device.type == "cpu" and result.shape == candidates.shape
            # one read of the losses; the shortlist first reads the linear scores
            assert len(audit.reads) == (2 if name == "shortlist" else 1), (name, method)


@pytest.mark.parametrize("use_splits", [False, True])
def test_the_stop_rule_measurement_reads_the_host_once_per_call(use_splits):
    arch = "resnet34"
    model = meta_model(arch)
    units = models.prunable_units(arch, model)
    Masks(model, units)
    measure = SubsetMeasure(model, [meta_batch() for _ in range(3)],
                            splitter(arch, model) if use_splits else None)
    for unit in (units[0], units[-1], units[-1]):
        with DeviceAudit() as audit:
            measure(unit)
        assert audit.reads == ["to cpu"]


@pytest.mark.parametrize("search", [greedy_forward_selection, backward_elimination])
def test_a_whole_selection_reads_the_host_once_per_step_for_each_decision(search):
    arch = "mobilenet_v2"
    model = meta_model(arch)
    units = models.prunable_units(arch, model)[:2]  # 16 and 48 channels
    masks = Masks(model, units)
    batches = iter([meta_batch() for _ in range(20)])
    measure = SubsetMeasure(model, [meta_batch()], splitter(arch, model))
    steps = []
    with DeviceAudit() as audit:
        search(units, masks, FastEvaluator(model, splitter(arch, model), 8), batches,
               LossGap(0.1, dense_loss=1.0, measure=measure) if search is greedy_forward_selection
               else MaxFraction(0.9), SelectionSettings(),
               log_step=lambda *step: steps.append(len(audit.reads)))
    # the audit's reads return ones: the loss gap is 0 < 0.1 after every unit's first step
    per_step = 2 if search is greedy_forward_selection else 1  # losses (+ the stop rule)
    assert steps == [per_step * (i + 1) for i in range(len(steps))] and steps


def test_the_short_finetune_between_units_never_reads_the_host():
    model = meta_model("mobilenet_v2")
    units = models.prunable_units("mobilenet_v2", model)
    masks = Masks(model, units)
    masks.set_counts(units[0].name, torch.tensor([1] + [0] * (units[0].size - 1)))
    batches = iter([meta_batch() for _ in range(3)])
    with DeviceAudit() as audit:
        prune_cli.short_finetune(model, masks, batches, steps=3, lr=1e-3, seed=0)
    assert audit.reads == []
