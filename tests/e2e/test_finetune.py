"""Fine-tuning, re-training and evaluation (finetune_cli.py): training lowers the loss, pruned
checkpoints keep their MACs through training and reloading, --from-scratch re-initializes, the
schedules follow their formulas, a resumed run equals an uninterrupted one, two gloo processes
stay identical under DDP, and bad input fails early with a message naming the argument.

Everything runs a MobileNetV2 of width 0.5 on a few synthetic 32 x 32 images, single-threaded.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import data
from scripts.runner import finetune_cli as ft
import models
from models.weights import load_pretrained
from pruning.checkpoint import Checkpoint, load, save, save_atomic, selection_cfg
from scripts.runner.arguments import plain
from pruning.flops import macs_and_params
from pruning.masks import Masks
from tests.support import ROOT
from tests.support.cli import run_script

ARCH = "mobilenet_v2"
COMMON = [
    "--dataset", "synthetic", "--synthetic-images", "96", "--synthetic-val-images", "48",
    "--batch-size", "32", "--eval-batch-size", "48", "--workers", "0", "--device", "cpu",
    "--no-progress",
]


def _float_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> tuple[Path, int]:
    """A pruned.pth as the prune script writes it (random selection of about a third of each
    unit; BatchNorm and classifier bias randomized so that no tensor sits at its initial
    value), and its MACs."""
    torch.manual_seed(0)
    model = models.build(ARCH, 0.5, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.normal_(0, 0.1, generator=generator)
            m.running_mean.normal_(0, 0.1, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)
    model.classifier[1].bias.data.normal_(0, 0.1, generator=generator)
    units = models.prunable_units(ARCH, model)
    masks = Masks(model, units)
    counts = {}
    for unit in units:
        c = torch.zeros(unit.size, dtype=torch.long)
        c[torch.randperm(unit.size, generator=generator)[: max(1, unit.size // 3)]] = 1
        masks.set_counts(unit.name, c)
        counts[unit.name] = c
    slim, kept, _ = masks.slim(model.eval())
    macs, _ = macs_and_params(slim, 32)
    path = tmp_path_factory.mktemp("prune") / "pruned.pth"
    cfg = selection_cfg(units, counts, kept)
    save(Checkpoint("pruned", ARCH, 0.5, 10, slim.state_dict(), "hidden", cfg,
                    metrics={"macs": macs}), path)
    return path, macs


def _train_loss(model: nn.Module) -> float:
    """Cross-entropy on the whole (unaugmented) synthetic training set with BatchNorm's batch
    statistics (as in training, independent of the running statistics) and without dropout."""
    dataset, _ = data.build_dataset("synthetic", None, "train", num_images=96, augment=False)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor(dataset.targets)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetuning_lowers_the_loss_and_keeps_the_pruned_architecture(pruned, tmp_path):
    """Twelve SGD steps from a pruned network whose loss is far above chance.

    The random network of the fixture sits at chance (loss ln 10), where MobileNetV2 needs a few
    hundred steps on this dataset before the loss moves; a classifier scaled by 10, like a badly
    calibrated network right after pruning, gives loss about 5, which a few steps of
    fine-tuning reliably lower (measured: 3.3-4.0 after 12 steps at lr 0.003 over four seeds).
    """
    path, macs = pruned
    start = load(path)
    start["state_dict"]["classifier.1.weight"] *= 10
    save_atomic(start, tmp_path / "start.pth")
    out = tmp_path / "ft"
    summary = ft.run(ARCH, ["--pruned", str(tmp_path / "start.pth"), "--epochs", "4",
                            "--lr", "0.003", "--lr-schedule", "constant", "--save-every", "2",
                            "--output-dir", str(out), *COMMON])
    before = _train_loss(models.load_pruned(str(tmp_path / "start.pth"))[0])
    tuned, ckpt = models.load_pruned(str(out / "last.pth"))  # re-loadable as --pruned
    after = _train_loss(tuned)
    assert before > 4 and after < before - 0.5, (before, after)

    assert ckpt.kind == "training" and ckpt.state["epoch"] == 4 and ckpt.cfg is not None
    assert macs_and_params(tuned, 32)[0] == macs == summary["macs"]
    assert summary["macs"] < summary["dense_macs"]
    for key in ("arch", "macs", "params", "top1", "top5", "num_classes", "epochs", "seconds"):
        assert key in summary
    assert summary["arch"] == ARCH and summary["num_classes"] == 10 and summary["epochs"] == 4
    assert 0 <= summary["top1"] <= summary["top5"] <= 100
    assert json.loads((out / "summary.json").read_text())["top1"] == summary["top1"]
    lines = _lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4] and all(m["lr"] == 0.003 for m in lines)
    best = max(lines, key=lambda m: m["top1"])  # the first epoch reaching the best top-1
    assert load(out / "best.pth")["state"]["epoch"] == best["epoch"] == summary["best_epoch"]
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == ["epoch_002.pth", "epoch_004.pth"]
    assert list((out / "tb").iterdir())

    # evaluate-only on the fine-tuned checkpoint: same model, same validation set, same numbers
    evaluated = ft.run(ARCH, ["--pruned", str(out / "last.pth"), "--evaluate-only",
                              "--output-dir", str(tmp_path / "eval"), *COMMON])
    assert evaluated["macs"] == macs
    assert evaluated["top1"] == pytest.approx(lines[-1]["top1"], abs=1e-9)
    assert evaluated["top5"] == pytest.approx(lines[-1]["top5"], abs=1e-9)


def test_from_scratch_reinitializes_every_weight_with_the_scratch_b_budget(pruned, tmp_path):
    path, macs = pruned
    setup = ft.prepare(ARCH, ["--pruned", str(path), "--from-scratch", "--epochs", "3",
                              "--output-dir", str(tmp_path), *COMMON])
    fresh = setup.model.state_dict()
    saved = load(path)["state_dict"]
    assert fresh.keys() == saved.keys()
    for key, value in _float_tensors(saved).items():
        assert fresh[key].shape == value.shape, key
        assert not torch.equal(fresh[key], value), f"{key} kept its pruned value"
    for m in setup.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.2)
    assert setup.macs == macs
    assert setup.epochs == math.ceil(3 * min(setup.dense_macs / macs, 2.0) - 1e-9)


def test_scratch_b_epochs():
    assert ft.scratch_epochs(150, 320, 170, 2.0) == 283  # ceil(150 * 320 / 170)
    assert ft.scratch_epochs(150, 320, 100, 2.0) == 300  # capped at twice the epochs
    assert ft.scratch_epochs(150, 320, 100, 1.0) == 150  # Scratch-E
    assert ft.scratch_epochs(90, 200, 100, 2.0) == 180


def test_schedules_follow_their_formulas():
    total, lr0 = 37, 0.01
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr0, momentum=0.9, nesterov=True)
    scheduler = ft.make_scheduler("cosine", optimizer, total)
    for t in range(total + 1):
        expected = lr0 * (1 + math.cos(math.pi * t / total)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        optimizer.step()
        scheduler.step()
    optimizer = torch.optim.SGD([param], lr=2.5e-4)
    scheduler = ft.make_scheduler("constant", optimizer, total)
    for _ in range(total):
        assert optimizer.param_groups[0]["lr"] == 2.5e-4
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("arch,lr,schedule", [("mobilenet_v2", 0.01, "cosine"),
                                              ("resnet34", 2.5e-4, "constant")])
def test_defaults_are_the_papers_recipe(arch, lr, schedule):
    args = ft.build_parser(arch).parse_args([])
    args.arch = arch
    ft.check_args(args, ft.distributed.World())
    assert (args.lr, args.lr_schedule, args.epochs, args.batch_size) == (lr, schedule, 150, 512)
    assert (args.optimizer, args.momentum, args.nesterov, args.weight_decay) == (
        "sgd", 0.9, True, 5e-5)
    assert args.amp is None and not args.channels_last and not args.compile
    assert args.label_smoothing == 0.0 and args.image_size is None  # 224 on ImageNet


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resumed_run_equals_uninterrupted_run(workers, tmp_path, monkeypatch):
    """Cosine schedule, momentum, dropout and random augmentation all carry over, whether the
    augmentation runs in the main process (its RNG state is saved) or in DataLoader workers
    (re-seeded from seed, rank and epoch)."""
    args = ["--epochs", "2", "--width", "0.5", "--lr", "0.05", *COMMON, "--workers", workers]
    straight = ft.run(ARCH, [*args, "--output-dir", str(tmp_path / "a")])

    calls = []
    original = ft.train_one_epoch

    def crash_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. a preempted job
        return original(*a, **k)

    monkeypatch.setattr(ft, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        ft.run(ARCH, [*args, "--output-dir", str(tmp_path / "b")])
    monkeypatch.setattr(ft, "train_one_epoch", original)
    assert load(tmp_path / "b" / "last.pth")["state"]["epoch"] == 1
    resumed = ft.run(ARCH, [*args, "--output-dir", str(tmp_path / "b"), "--resume"])

    a, b = load(tmp_path / "a" / "last.pth"), load(tmp_path / "b" / "last.pth")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    a, b = a["state"], b["state"]
    for p, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][p]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert resumed["top1"] == straight["top1"] and resumed["val_loss"] == straight["val_loss"]
    lines_a, lines_b = _lines(tmp_path / "a" / "metrics.jsonl"), _lines(tmp_path / "b" /
                                                                        "metrics.jsonl")
    assert [m["train_loss"] for m in lines_a] == [m["train_loss"] for m in lines_b]
    # per-iteration cosine: the second epoch starts halfway, at lr0 * (1 + cos(pi/2)) / 2
    assert lines_a[1]["lr"] == pytest.approx(0.025, rel=1e-12)


def test_dense_checkpoint_is_accepted_by_load_pretrained(tmp_path):
    """So that ``mobile2_prune.py --pretrained runs/dense/best.pth`` prunes a trained model."""
    out = tmp_path / "dense"
    ft.run(ARCH, ["--epochs", "1", "--width", "0.5", "--output-dir", str(out), *COMMON])
    ckpt = load(out / "best.pth")
    model = models.build(ARCH, 0.5, num_classes=10)
    description = load_pretrained(model, ARCH, out / "best.pth")
    assert "state_dict" in description
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key
    # and as --pretrained of the training scripts themselves (continued training)
    setup = ft.prepare(ARCH, ["--pretrained", str(out / "best.pth"), "--width", "0.5",
                              "--output-dir", str(tmp_path / "more"), *COMMON])
    for key, value in setup.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_grda_reports_unstructured_sparsity(tmp_path):
    summary = ft.run(ARCH, ["--epochs", "1", "--width", "0.5", "--optimizer", "grda",
                            "--grda-c", "0.5", "--lr", "0.05", "--output-dir", str(tmp_path),
                            *COMMON])
    report = summary["sparsity"]
    assert 0 < report["total"]["sparsity"] <= 1
    assert "features.1.conv.1.weight" in report["layers"]
    ckpt = load(tmp_path / "last.pth")
    zeros = sum(int((ckpt["state_dict"][k] == 0).sum()) for k in report["layers"])
    assert zeros == report["total"]["zeros"]
    assert json.loads((tmp_path / "summary.json").read_text())["sparsity"] == report


def test_train_subset_is_class_balanced_and_reproducible(tmp_path):
    def subset(seed: str) -> list[int]:
        setup = ft.prepare(ARCH, ["--train-subset", "40", "--seed", seed, "--width", "0.5",
                                  "--output-dir", str(tmp_path), *COMMON])
        return list(setup.train_set.indices)

    first = subset("0")
    assert first == subset("0") and first != subset("1") and len(first) == 40
    labels = [i % 10 for i in first]  # synthetic labels are index % classes
    assert all(labels.count(c) == 4 for c in range(10))


def _other_arch_checkpoint(path: Path) -> Path:
    save(Checkpoint("pruned", "resnet34", 1.0, 10, {}, "inner", {"spaces": {}, "units": {}}),
         path)
    return path


@pytest.mark.parametrize("argv,env,message", [
    (["--pruned", "{other}"], {}, "checkpoint is for resnet34, this run is for mobilenet_v2"),
    (["--batch-size", "10"], {"WORLD_SIZE": "4", "RANK": "0"},
     "--batch-size 10 is not divisible by world size 4"),
    (["--dataset", "imagenet", "--data-path", "{tmp}/missing"], {}, "--data-path"),
    (["--from-scratch"], {}, "--from-scratch re-trains a pruned architecture"),
    (["--pruned", "{pruned}", "--pretrained", "IMAGENET1K_V1"], {}, "exclude each other"),
    (["--optimizer", "grda", "--momentum", "0.9"], {}, "--momentum: not an option"),
    (["--pruned", "{dense}"], {}, "pass it as --pretrained"),
    (["--pretrained", "{dense}"], {}, "--pretrained"),  # width 1.0 model, width 0.5 file
    (["--pruned", "{pruned}", "--dataset", "synthetic", "--batch-size", "512"], {},
     "larger than the training set"),
    (["--train-subset", "5000"], {}, "--train-subset 5000"),
    (["--output-dir", "{run}"], {}, "pass --resume"),
    (["--output-dir", "{run}", "--resume", "--lr", "0.5"], {}, "--lr (saved"),
])
def test_bad_input_fails_before_training(argv, env, message, pruned, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save(Checkpoint("training", ARCH, 0.5, 10, {}, args=plain(_resolved(["--width", "0.5"]))),
         run_dir / "last.pth")
    dense = tmp_path / "dense.pth"
    save(Checkpoint("training", ARCH, 0.5, 10, models.build(ARCH, 0.5, 10).state_dict()), dense)
    names = {"other": _other_arch_checkpoint(tmp_path / "other.pth"), "pruned": pruned[0],
             "dense": dense, "run": run_dir, "tmp": tmp_path}
    argv = [a.format(**names) for a in argv]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ft, "train", lambda *a: pytest.fail("training started"))
    with pytest.raises(ft.UsageError, match=re.escape(message)):
        ft.run(ARCH, [*COMMON, "--output-dir", str(tmp_path / "out"), *argv])


def _resolved(argv: list[str]):
    args = ft.build_parser(ARCH).parse_args([*COMMON, *argv])
    ft.check_args(args, ft.distributed.World())
    return args


def test_script_prints_error_without_traceback(tmp_path):
    result = run_script("mobile2_finetune.py", "--dataset", "imagenet", "--data-path",
                        tmp_path / "missing", "--output-dir", tmp_path / "out", "--device", "cpu",
                        expect=2, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --data-path") and "Traceback" not in result.stderr


WORKER = textwrap.dedent("""
    import os, sys
    import torch
    import torchvision_compat  # noqa: F401
    from scripts.runner import finetune_cli

    captured = {}
    evaluate = finetune_cli.evaluate

    def capture(model, loader, args):
        captured["model"] = model
        return evaluate(model, loader, args)

    finetune_cli.evaluate = capture
    summary = finetune_cli.run("mobilenet_v2", sys.argv[2:])
    torch.save({"state": captured["model"].state_dict(), "summary": summary},
               os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
""")


def test_two_gloo_processes_stay_identical(tmp_path):
    """torchrun with 2 CPU processes: DDP averages the gradients of two different half-batches,
    so both ranks must hold bit-identical parameters and buffers after every step."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "ddp"
    result = run_script(worker, tmp_path, "--epochs", "2", "--width", "0.5", "--lr", "0.05",
                        "--output-dir", out, *COMMON, torchrun=2, timeout=180,
                        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    saved = load(out / "last.pth")
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, rank0["state"][key]), key
    assert rank0["summary"]["world_size"] == 2 and rank0["summary"]["top1"] == rank1["summary"][
        "top1"]
    rng = saved["state"]["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 logs
    assert len(_lines(out / "metrics.jsonl")) == 2


def test_resnet34_dense_training_runs_and_its_checkpoint_loads_for_pruning(tmp_path):
    """ResNet34 has no --width; a dense run must still train, save and feed the prune script."""
    out = tmp_path / "rn"
    summary = ft.run("resnet34", ["--epochs", "1", "--image-size", "16", "--output-dir",
                                  str(out), *COMMON])
    assert summary["arch"] == "resnet34" and summary["width"] == 1.0
    model = models.build("resnet34", num_classes=10)
    assert "state_dict" in load_pretrained(model, "resnet34", out / "best.pth")
