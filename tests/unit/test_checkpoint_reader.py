"""One reader of pruned and masked checkpoints (``models.read_pruned`` / ``models.load_pruned``)
for every caller: the library, the prune scripts' --match-kept and the fine-tune scripts'
--pruned refuse the same bad files with the same one-line reason, and a masked and a pruned
checkpoint of one selection, in the current or a legacy format, rebuild the same network."""

import sys
from pathlib import Path

import pytest
import torch

import models
from pruning.checkpoint import FORMAT, Checkpoint, CheckpointError, save, save_atomic, selection_cfg
from pruning.masks import Masks
from scripts.runner import finetune_cli, prune_cli
from tests.support.nets import random_selection, randomize_bn

ARCH = "mobilenet_v2"
WIDTH = 0.5
CLASSES = 10
PRUNE = ["--dataset", "synthetic", "--width", str(WIDTH), "--device", "cpu", "--no-progress"]
FINETUNE = ["--dataset", "synthetic", "--device", "cpu", "--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> dict:
    """One selection of a small MobileNetV2, saved as pruned.pth and masked.pth, with its slim
    network and an input."""
    folder = tmp_path_factory.mktemp("selection")
    torch.manual_seed(0)
    model = randomize_bn(models.build(ARCH, WIDTH, CLASSES))
    units = models.prunable_units(ARCH, model)
    masks = Masks(model, units)
    counts = random_selection(units, masks)
    slim, kept, weights = masks.slim(model)  # takes the masks off: model is dense again
    cfg = selection_cfg(units, counts, kept)
    save(Checkpoint("pruned", ARCH, WIDTH, CLASSES, slim.state_dict(), "hidden", cfg),
         folder / "pruned.pth")
    save(Checkpoint("masked", ARCH, WIDTH, CLASSES, model.state_dict(), "hidden", cfg,
                    state={"mixing_weights": weights}), folder / "masked.pth")
    return {"folder": folder, "slim": slim.eval(), "cfg": cfg, "x": torch.randn(2, 3, 32, 32)}


def bad_files(selection: dict) -> dict[str, tuple[Path, str]]:
    """name -> (a file no caller may accept, the words its reason must contain)."""
    folder = selection["folder"] / "bad"
    folder.mkdir(exist_ok=True)
    pruned = torch.load(selection["folder"] / "pruned.pth", weights_only=True)
    sd = pruned["state_dict"]
    (folder / "garbage.pth").write_bytes(b"not a checkpoint")
    save_atomic({"format": FORMAT, "kind": "pruned", "arch": ARCH}, folder / "damaged.pth")
    save(Checkpoint("selection", ARCH, WIDTH, 0, sd), folder / "selection.pth")
    save(Checkpoint("training", ARCH, WIDTH, CLASSES,
                    models.build(ARCH, WIDTH, CLASSES).state_dict()), folder / "dense.pth")
    save(Checkpoint("pruned", ARCH, WIDTH, CLASSES, sd, "hidden",
                    {"spaces": selection["cfg"]["spaces"]}), folder / "no_units.pth")
    save(Checkpoint("pruned", "resnet34", 1.0, CLASSES, {}, "inner", {"spaces": {}, "units": {}}),
         folder / "resnet34.pth")
    return {
        "missing": (folder / "missing.pth", "no such file"),
        "garbage": (folder / "garbage.pth", "not a checkpoint (UnpicklingError"),
        "damaged": (folder / "damaged.pth", "a damaged checkpoint (TypeError"),
        "kind": (folder / "selection.pth",
                 "holds a selection checkpoint of mobilenet_v2; expected pruned or masked or "
                 "training"),
        "dense": (folder / "dense.pth", "holds a dense mobilenet_v2, not a pruned network"),
        "cfg": (folder / "no_units.pth", "a damaged checkpoint (its cfg lacks the kept channels"),
        "arch": (folder / "resnet34.pth", "checkpoint is for resnet34, this run is for "
                                          "mobilenet_v2"),
    }


def rebuild_only_files(selection: dict) -> dict[str, tuple[Path, str]]:
    """Files whose fault only a caller that rebuilds the network or names a layout sees
    (--match-kept reads the kept counts alone, of any layout)."""
    folder = selection["folder"] / "bad"
    folder.mkdir(exist_ok=True)
    pruned = torch.load(selection["folder"] / "pruned.pth", weights_only=True)
    sd = dict(pruned["state_dict"])
    sd.pop("classifier.1.weight")
    save(Checkpoint("pruned", ARCH, WIDTH, CLASSES, sd, "hidden", selection["cfg"]),
         folder / "weights.pth")
    save(Checkpoint("pruned", ARCH, WIDTH, CLASSES, pruned["state_dict"], "hidden",
                    selection["cfg"], layout="cifar"), folder / "cifar.pth")
    return {
        "weights": (folder / "weights.pth",
                    "a damaged checkpoint (it does not rebuild the mobilenet_v2 network of its "
                    "cfg: Missing key(s) in state_dict: \"classifier.1.weight\""),
        "layout": (folder / "cifar.pth", "a network of the cifar layout; this run builds the "
                                         "imagenet layout"),
    }


def cli(main, argv: list, monkeypatch, capsys) -> tuple[int, str]:
    """``python <script> argv`` in this process: exit status and stderr."""
    monkeypatch.setattr(sys, "argv", ["script", *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(ARCH)
    return exit_.value.code, capsys.readouterr().err


def library_reason(path: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        models.load_pruned(path, "--pruned", arch=ARCH, layout="imagenet")
    message = str(error.value)
    assert message.startswith(f"--pruned {path}: ") and "\n" not in message
    return message.removeprefix(f"--pruned {path}: ")


def cli_reason(main, flag: str, argv: list, path: Path, monkeypatch, capsys) -> str:
    code, err = cli(main, [*argv, flag, path], monkeypatch, capsys)
    prefix = f"error: {flag} {path}: "
    assert code == 2 and err.startswith(prefix) and err.count("\n") == 1, err
    return err.removeprefix(prefix).rstrip("\n")


def test_every_caller_refuses_the_same_bad_files_with_the_same_reason(selection, tmp_path,
                                                                     monkeypatch, capsys):
    for name, (path, words) in bad_files(selection).items():
        reasons = {
            "library": library_reason(path),
            "--match-kept": cli_reason(prune_cli.main, "--match-kept",
                                       [*PRUNE, "--output-dir", tmp_path / f"prune_{name}"],
                                       path, monkeypatch, capsys),
            "--pruned": cli_reason(finetune_cli.main, "--pruned",
                                   [*FINETUNE, "--output-dir", tmp_path / f"finetune_{name}"],
                                   path, monkeypatch, capsys),
        }
        assert len(set(reasons.values())) == 1, (name, reasons)
        assert words in reasons["library"], (name, reasons["library"])


def test_the_callers_that_rebuild_refuse_bad_weights_and_another_layout_alike(selection,
                                                                              tmp_path,
                                                                              monkeypatch,
                                                                              capsys):
    for name, (path, words) in rebuild_only_files(selection).items():
        library = library_reason(path)
        assert words in library, (name, library)
        assert cli_reason(finetune_cli.main, "--pruned",
                          [*FINETUNE, "--output-dir", tmp_path / name], path, monkeypatch,
                          capsys) == library
    # --match-kept takes the kept counts of a network of any layout: only the architecture
    # must be the run's
    path = rebuild_only_files(selection)["layout"][0]
    assert models.read_pruned(path, "--match-kept", arch=ARCH).cfg == selection["cfg"]


def test_a_masked_and_a_pruned_checkpoint_of_one_selection_rebuild_the_same_network(selection):
    folder, x = selection["folder"], selection["x"]
    with torch.no_grad():
        expected = selection["slim"](x)
        for name in ("pruned.pth", "masked.pth"):
            model, ckpt = models.load_pruned(folder / name, arch=ARCH, layout="imagenet")
            assert torch.equal(model.eval()(x), expected), name
            args = finetune_cli.build_parser(ARCH).parse_args(["--pruned", str(folder / name)])
            tuned, _ = finetune_cli.pruned_network(args)
            assert torch.equal(tuned.eval()(x), expected), name
            # --match-kept reads the same kept counts from either file
            units = models.prunable_units(ARCH, models.build(ARCH, WIDTH, CLASSES))
            counts = prune_cli.matched_kept(
                models.read_pruned(folder / name, "--match-kept", arch=ARCH).cfg["units"],
                str(folder / name), units)
            assert counts == {n: u["kept"] for n, u in selection["cfg"]["units"].items()}


def test_legacy_pruned_and_training_checkpoints_still_load(selection, tmp_path):
    """The formats written before the current schema: pruned-v1 (a prune run's pruned.pth) and
    train-v1 (a fine-tuned last.pth of one, its weights under ``model``)."""
    pruned = torch.load(selection["folder"] / "pruned.pth", weights_only=True)
    common = {"arch": ARCH, "width": WIDTH, "num_classes": CLASSES, "unit_kind": "hidden",
              "cfg": pruned["cfg"], "args": {}, "metrics": {}}
    weights = pruned["state_dict"]
    save_atomic({"format": "greedy-forward-selection/pruned-v1", **common,
                 "state_dict": weights}, tmp_path / "v1.pth")
    save_atomic({"format": "greedy-forward-selection/train-v1", **common, "model": weights,
                 "optimizer": {}, "epoch": 3}, tmp_path / "train_v1.pth")
    x = selection["x"]
    with torch.no_grad():
        expected = selection["slim"](x)
        for name, kind in (("v1.pth", "pruned"), ("train_v1.pth", "training")):
            model, ckpt = models.load_pruned(tmp_path / name, arch=ARCH, layout="imagenet")
            assert ckpt.kind == kind and ckpt.layout == "imagenet"
            assert torch.equal(model.eval()(x), expected), name
