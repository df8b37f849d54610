"""The table launchers (scripts/table*.py, scripts/pretraining.py) end to end in --smoke mode.

One tiny dense MobileNetV2 x0.5 and ResNet34 are trained once for the session and passed to every
launcher as --...-pretrained; the dense MobileNetV3-Small x0.75 and ProxylessNAS-Mobile are
trained by Table 1's smoke run itself (under ``<runs>/dense/``, where Table 2 finds its
MobileNetV3-Small). All launchers write into one runs directory, so Tables 2 and 5 reuse Table 1's
epsilon sweep as they would on a GPU machine. Every check reads a number from the
launcher's table.md and compares it with the summary.json of the run it names.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from scripts import launch
from tests.support import ROOT
from tests.support.cli import run_main, run_script

sys.path.insert(0, str(ROOT / "scripts"))


def dry_run(capsys, script: str, *argv: str) -> str:
    """``scripts/<script> --dry-run argv`` in this process (a dry run only prints): its stdout."""
    module = importlib.import_module(script.removesuffix(".py"))
    result = run_main(capsys, module.launch.main, lambda: module.build(["--dry-run", *argv]))
    assert result.code == 0, result.err
    return result.out


def table_rows(path: Path, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under the ``## <title...>`` heading, as dicts."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    body = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            body.append([c.strip() for c in line.strip("|").split("|")])
    header, rows = body[0], body[2:]
    return [dict(zip(header, row)) for row in rows]


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def dense(runs: Path, arch: str) -> str:
    """A dense smoke network trained in this process (as the launchers would train it)."""
    ctx = launch.Context("dense", launch.parser("").parse_args(["--smoke", "--runs-dir",
                                                                str(runs)]))
    return ctx.dense(arch, None)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> dict:
    """The runs directory all launchers share, and the dense MobileNetV2 x0.5 they prune."""
    runs = tmp_path_factory.mktemp("runs")
    return {"runs": runs, "mobilenet_v2": dense(runs, "mobilenet_v2")}


@pytest.fixture(scope="session")
def resnet34(smoke) -> str:
    return dense(smoke["runs"], "resnet34")


def common(smoke: dict) -> list[str]:
    return ["--smoke", "--runs-dir", str(smoke["runs"])]


def test_table1_smoke_builds_the_table_from_the_runs(smoke, resnet34):
    run_script("scripts/table1.py", *common(smoke), "--mobilenet-v2-pretrained",
               smoke["mobilenet_v2"], "--resnet34-pretrained", resnet34)
    table = smoke["runs"] / "table1" / "table.md"
    for row in table_rows(table, "Epsilon sweep"):
        s = summary(smoke["runs"] / "table1" / row["run"] / "prune")
        assert row["MACs"] == launch.macs(s["macs"])
        assert row["kept channels"] == f"{s['kept_channels']}/{s['total_channels']}"
    rows = table_rows(table, "Table 1")
    assert {r["arch"] for r in rows} == {"mobilenet_v2", "resnet34", "mobilenet_v3_small",
                                         "proxylessnas_mobile"}
    assert len([r for r in rows if r["method"] == "Ours (greedy)"]) == 7 + 2 + 1 + 1
    # the newer families' rows: the paper's MACs as fractions of the paper's dense counts (64M
    # and 324M, not this repository's 60.9M and 336M), each fine-tuned from its own run
    for arch, method, paper, target, run in (
            ("mobilenet_v3_small", "Ours (greedy)", "49.0M", "0.766", "greedy"),
            ("mobilenet_v3_small", "Uniform", "47.0M", "0.734", "uniform"),
            ("proxylessnas_mobile", "Ours (greedy)", "232.0M", "0.716", "greedy"),
            ("proxylessnas_mobile", "Uniform", "240.0M", "0.741", "uniform")):
        row = next(r for r in rows if r["arch"] == arch and r["method"] == method)
        assert (row["paper MACs"], row["paper of dense"]) == (paper, target)
        assert row["run"].startswith(f"{arch}-{run}")
        s = summary(smoke["runs"] / "table1" / row["run"] / "finetune")
        assert s["arch"] == arch and row["top-1"] == f"{s['top1']:.2f}"
        assert row["of dense"] == f"{s['macs'] / s['dense_macs']:.3f}"
    assert summary(smoke["runs"] / "table1" / "mobilenet_v3_small-dense")["width"] == 0.75
    # with --smoke the baselines run for the paper's two main families only
    assert {r["arch"] for r in rows if "same kept channels" in r["method"]} == {"mobilenet_v2",
                                                                             "resnet34"}
    dense = next(r for r in rows if r["arch"] == "mobilenet_v2" and r["method"] == "Full model")
    s = summary(smoke["runs"] / "table1" / dense["run"])
    assert dense["top-1"] == f"{s['top1']:.2f}" and dense["fine-tune epochs"] == "0"
    ours = next(r for r in rows if r["arch"] == "resnet34" and r["method"] == "Ours (greedy)")
    s = summary(smoke["runs"] / "table1" / ours["run"] / "finetune")
    assert (ours["top-1"], ours["top-5"]) == (f"{s['top1']:.2f}", f"{s['top5']:.2f}")
    assert ours["MACs"] == launch.macs(s["macs"]) and ours["fine-tune epochs"] == "1"
    # the baselines keep exactly the greedy run's channels per unit, hence its MACs
    mobilenet = [r for r in rows if r["arch"] == "mobilenet_v2"]
    for base in ("magnitude", "random"):
        row = next(r for r in mobilenet if r["method"].startswith(base))
        greedy = next(r for r in mobilenet if r["method"] == "Ours (greedy)"
                      and row["run"].startswith(r["run"]))
        assert row["MACs"] == greedy["MACs"] and row["params"] == greedy["params"]
        kept = summary(smoke["runs"] / "table1" / row["run"] / "prune")["kept"]
        assert kept == summary(smoke["runs"] / "table1" / greedy["run"] / "prune")["kept"]


def test_table2_smoke_retrains_with_the_scratch_b_budget(smoke):
    out = run_script("scripts/table2.py", *common(smoke), "--mobilenet-v2-pretrained",
                     smoke["mobilenet_v2"]).stdout
    rows = table_rows(smoke["runs"] / "table2" / "table.md", "Table 2")
    assert [(r["arch"], r["paper MACs"], r["paper of dense"]) for r in rows] == [
        ("mobilenet_v2", "220.0M", "0.701"), ("mobilenet_v2", "170.0M", "0.541"),
        ("mobilenet_v3_small", "49.0M", "0.766")]
    for row in rows:
        scratch = summary(smoke["runs"] / "table2" / row["run"] / "scratch")
        finetune = summary(smoke["runs"] / "table1" / row["run"] / "finetune")
        assert scratch["init"].startswith("architecture of") and scratch["macs"] == finetune["macs"]
        # Scratch-B: 1 epoch x min(dense / pruned MACs, 2)
        assert scratch["epochs"] == 2 and finetune["epochs"] == 1
        assert row["re-training top-1 (Scratch-B epochs)"] == f"{scratch['top1']:.2f} (2 ep)"
        assert row["fine-tune top-1 (epochs)"] == f"{finetune['top1']:.2f} (1 ep)"
    if (smoke["runs"] / "table1" / "table.md").exists():  # Table 1 ran first: its sweep reused
        prunes = [line for line in out.splitlines() if "_prune.py" in line]
        assert prunes and all(line.startswith("# done, skipped") for line in prunes)


def test_table3_smoke_prunes_three_widths(smoke):
    run_script("scripts/table3.py", *common(smoke), "--pretrained",
               f"0.5={smoke['mobilenet_v2']}")
    rows = table_rows(smoke["runs"] / "table3" / "table.md", "Table 3")
    assert [r["width"] for r in rows] == ["x1.0", "x0.75", "x0.5"]
    dense = [summary(smoke["runs"] / "table3" / r["run"] / "prune")["dense_macs"] for r in rows]
    assert dense[0] > dense[1] > dense[2]
    for row in rows:
        s = summary(smoke["runs"] / "table3" / row["run"] / "finetune")
        assert row["top-1"] == f"{s['top1']:.2f}" and row["MACs"] == launch.macs(s["macs"])
        assert s["width"] == float(row["width"][1:])


def test_table5_smoke_compares_at_equal_kept_channels(smoke):
    run_script("scripts/table5_backward.py", *common(smoke), "--archs", "mobilenet_v2",
               "--mobilenet-v2-pretrained", smoke["mobilenet_v2"])
    rows = table_rows(smoke["runs"] / "table5" / "table.md", "Table 5")
    forward = next(r for r in rows if r["method"].startswith("forward"))
    backward = next(r for r in rows if r["method"].startswith("backward"))
    f = summary(smoke["runs"] / "table1" / forward["run"] / "prune")
    b = summary(smoke["runs"] / "table5" / backward["run"] / "prune")
    assert b["method"] == "backward" and f["method"] == "greedy"
    assert b["kept"] == f["kept"] and b["macs"] == f["macs"]
    assert backward["selection loss (train subset)"] == f"{b['loss_pruned']:.4f}"
    ft = summary(smoke["runs"] / "table5" / backward["run"] / "finetune")
    assert backward["top-1"] == f"{ft['top1']:.2f}"


def test_pretraining_smoke_prunes_every_snapshot(smoke):
    run_script("scripts/pretraining.py", *common(smoke), "--archs", "mobilenet_v2")
    base = smoke["runs"] / "pretraining-cifar10"
    rows = table_rows(base / "table.md", "This repository")
    assert [r["training images"] for r in rows] == ["128", "all (256)"]
    # 16 iterations of batch 32, a snapshot every 8: 4 epochs of 128 images, 2 of 256
    assert sorted(p.name for p in (base / "mobilenet_v2-n128" / "dense").glob("epoch_*.pth")) == [
        "epoch_002.pth", "epoch_004.pth"]
    record = json.loads((base / "mobilenet_v2-n128-ep2-eps1" / "prune" / launch.RECORD).read_text())
    assert record["args"][record["args"].index("--pretrained") + 1].endswith("epoch_002.pth")
    for row, name in zip(rows, ("mobilenet_v2-n128", "mobilenet_v2-nall")):
        dense = summary(base / name / "dense")
        assert row["dense top-1"] == f"{dense['top1']:.2f}"
        epochs = (2, 4) if name == "mobilenet_v2-n128" else (1, 2)
        ft = summary(base / f"{name}-ep{epochs[1]}-eps1" / "finetune")
        assert row["16 it"].startswith(f"{ft['top1']:.2f} (")


@pytest.mark.parametrize("script,extra", [
    ("table1.py", []), ("table2.py", []), ("table3.py", ["--pretrained", "0.75=w.pth",
                                                         "--pretrained", "0.5=w.pth"]),
    ("table5_backward.py", []), ("pretraining.py", ["--dataset", "imagenet"]),
])
def test_dry_run_prints_the_full_runs_and_runs_nothing(script, extra, tmp_path, capsys):
    out = dry_run(capsys, script, "--data-path", "/data/x", "--runs-dir", str(tmp_path),
                  "--nproc-per-node", "4", *extra)
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    assert commands and all("--data-path /data/x" in c for c in commands)
    assert any("_prune.py" in c for c in commands)
    assert all("torch.distributed.run --standalone --nproc_per_node=4" in c for c in commands)
    assert not list(tmp_path.iterdir())


def test_a_finished_step_is_skipped_and_one_with_other_arguments_is_refused(tmp_path):
    step = launch.Step("mobile2_prune.py", ("--epsilon", "0.05", "--workers", "2"), tmp_path)
    assert not step.done()
    (tmp_path / launch.RECORD).write_text(json.dumps(step.record()))
    (tmp_path / launch.SUMMARY).write_text("{}")
    assert step.done()
    # run-only flags (workers, device, progress, resume) do not change what a step computes
    assert launch.Step("mobile2_prune.py", ("--epsilon", "0.05"), tmp_path).done()
    with pytest.raises(launch.StepFailed, match="other arguments"):
        launch.Step("mobile2_prune.py", ("--epsilon", "0.1"), tmp_path).done()


def test_a_step_as_its_own_process_equals_the_step_run_in_process(smoke, tmp_path):
    """Full runs start each step as a process, smoke runs inside the launcher: same result."""
    args = launch.parser("").parse_args(["--smoke", "--runs-dir", str(tmp_path)])
    ctx = launch.Context("t", args)
    steps = [ctx.evaluate("mobilenet_v2", smoke["mobilenet_v2"], tmp_path / name) for name in "ab"]
    ctx.run(steps[:1])
    ctx.in_process = False  # the full-run path
    ctx.run(steps[1:])
    a, b = summary(tmp_path / "a"), summary(tmp_path / "b")
    assert (a["top1"], a["val_loss"]) == (b["top1"], b["val_loss"])


def test_scripts_flags_and_run_folders_are_named_by_the_registry(tmp_path, capsys):
    """No launcher names a family's scripts or flags itself: they follow ``models.get``."""
    out = dry_run(capsys, "table1.py", "--data-path", "/data/x", "--runs-dir", str(tmp_path),
                  "--mobilenet-v2-epsilons", "0.05", "--resnet34-epsilons", "0.08",
                  "--mobilenet-v2-pretrained", "w.pth")
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    mobilenet = [c for c in commands if "mobile2_prune.py" in c and "--epsilon" in c]
    resnet = [c for c in commands if "resnet34_prune.py" in c and "--epsilon" in c]
    assert len(mobilenet) == len(resnet) == 1
    assert "--width 1.0" in mobilenet[0] and "--pretrained w.pth" in mobilenet[0]
    assert "--width" not in resnet[0] and "--pretrained IMAGENET1K_V1" in resnet[0]
    assert str(tmp_path / "table1" / "mobilenet_v2-greedy-eps0.05" / "prune") in mobilenet[0]
    assert str(tmp_path / "table1" / "resnet34-greedy-eps0.08" / "prune") in resnet[0]
    assert launch.arch_flag("mobilenet_v2", "pretrained") == "--mobilenet-v2-pretrained"
    assert (launch.prune_script("resnet34"), launch.train_script("mobilenet_v2")) == (
        "resnet34_prune.py", "mobile2_finetune.py")


def test_the_newer_families_dry_run_with_their_scripts_and_fraction_targets(tmp_path, capsys):
    """MobileNetV3-Small (torchvision's weights, width 1.0) and ProxylessNAS-Mobile (no
    torchvision weights: a placeholder in a dry run, or the file given) in Tables 1 and 2, with
    the paper's MACs as fractions of its dense counts (49/64, 232/324)."""
    out = dry_run(capsys, "table1.py", "--data-path", "/data/x", "--runs-dir", str(tmp_path),
                  "--archs", "mobilenet_v3_small", "proxylessnas_mobile",
                  "--mobilenet-v3-small-epsilons", "0.02")
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    v3 = [c for c in commands if "mobile3_prune.py" in c]
    assert len(v3) == 1 + 5  # the one epsilon given and the five uniform fractions
    assert all("--width 1.0 " in c and "--pretrained IMAGENET1K_V1" in c for c in v3)
    assert str(tmp_path / "table1" / "mobilenet_v3_small-greedy-eps0.02" / "prune") in v3[0]
    proxyless = [c for c in commands if "proxyless_prune.py" in c]
    assert len(proxyless) == len(launch.SWEEP_EPSILONS["proxylessnas_mobile"]) + 5
    assert all("--width" not in c and "--pretrained PROXYLESSNAS_MOBILE_WEIGHTS" in c
               for c in proxyless)
    assert any("mobile3_finetune.py" in c and "--evaluate-only" in c for c in commands)
    for note in ("mobilenet_v3_small 49.0M (0.766 of the dense MACs)",
                 "mobilenet_v3_small 47.0M (0.734 of the dense MACs)",
                 "proxylessnas_mobile 232.0M (0.716 of the dense MACs)",
                 "proxylessnas_mobile 240.0M (0.741 of the dense MACs)",
                 "--proxylessnas-mobile-pretrained"):
        assert note in out
    out = dry_run(capsys, "table1.py", "--data-path", "/data/x", "--runs-dir", str(tmp_path),
                  "--archs", "proxylessnas_mobile", "--proxylessnas-mobile-pretrained",
                  "proxyless_mobile.pth")
    assert "--pretrained proxyless_mobile.pth" in out and "_WEIGHTS" not in out
    out = dry_run(capsys, "table2.py", "--data-path", "/data/x", "--runs-dir", str(tmp_path),
                  "--archs", "mobilenet_v3_small", "--mobilenet-v3-small-epsilons", "0.02")
    assert [c for c in out.splitlines() if c.startswith("$ ")] == [  # Table 1's sweep, shared
        c for c in commands if "mobile3_prune.py" in c and "--epsilon " in c]
    assert "mobilenet_v3_small 49.0M (0.766 of the dense MACs)" in out
    assert not list(tmp_path.iterdir())


def test_a_full_run_without_proxylessnas_weights_is_refused_before_any_step(tmp_path):
    """torchvision has no ProxylessNAS-Mobile weights: a full run is refused up front (exit 2),
    not after the other families' runs."""
    (tmp_path / "data").mkdir()
    result = run_script("scripts/table1.py", "--data-path", tmp_path / "data", "--runs-dir",
                        tmp_path / "runs", expect=2, timeout=300)
    assert "give the pretrained ProxylessNAS-Mobile weights" in result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("launch.json"))
