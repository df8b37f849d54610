"""scripts/gpu_check.py's own logic: the check runner, its table, its slim-vs-masked criterion.

The checks themselves run in `make test` as ``scripts/gpu_check.py --device cpu``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402
from gpu_check import Check, CheckFailed, Context, Outcome  # noqa: E402


def ok(ctx):
    return "fine"


def bad(ctx):
    raise CheckFailed("found a problem")


def crash(ctx):
    raise ZeroDivisionError("division by zero")


def test_a_failed_need_fails_its_dependents_without_running_them_and_crashes_are_fails():
    ran = []

    def record(ctx):
        ran.append("after-ok")
        return "ran"

    items = [Check("a", ok), Check("b", bad, ("a",)), Check("c", record, ("b",)),
             Check("d", crash), Check("e", record, ("a",)), Check("f", ok, ("missing",))]
    outcomes = gpu_check.run_checks(items, ctx=None, jobs=2)
    assert [o.name for o in outcomes] == ["a", "b", "c", "d", "e", "f"]
    assert [o.passed for o in outcomes] == [True, False, False, False, True, False]
    assert outcomes[1].detail == "found a problem"
    assert outcomes[2].detail == "not run: b failed" and ran == ["after-ok"]
    assert outcomes[3].detail == "ZeroDivisionError: division by zero"
    assert outcomes[5].detail == "unknown need"


def test_the_table_has_one_row_per_check_with_its_result():
    text = gpu_check.table([Outcome("first check", True, 1.25, "all good"),
                            Outcome("second", False, 0.0, "not run: first failed")])
    lines = text.splitlines()
    assert lines[0].split() == ["check", "result", "seconds", "detail"]
    assert lines[1].split()[:4] == ["first", "check", "PASS", "1.2"]
    assert lines[2].split()[:2] == ["second", "FAIL"]


def write_summary(tmp_path: Path, **verification) -> Context:
    out = tmp_path / "run"
    out.mkdir(parents=True)
    summary = {"loss_dense": 2.3, "loss_pruned": 2.4, "loss_pruned_masked": 2.4,
               "macs": 1e5, "dense_macs": 1e6, "candidate_precision": "fp32",
               "device_name": "cpu", "torch_version": "x", "cuda_version": None,
               "tf32": False, "exact_parts": "IEEE float32 (TF32 off)", "slim_exact": True,
               "slim_vs_masked_float64": 1e-16, "slim_tolerance": 1e-8, **verification}
    (out / "summary.json").write_text(json.dumps(summary))
    return Context(torch.device("cpu"), gpu_check.SIZES["cpu"], tmp_path, jobs=1)


def test_slim_vs_masked_passes_rounding_and_fails_a_real_difference(tmp_path):
    close = write_summary(tmp_path / "close", max_rel_diff_slim_vs_masked=3e-6,
                          slim_error_vs_float64=1e-6, masked_error_vs_float64=1e-6)
    assert "slim vs masked 3e-06" in gpu_check.pruned_ok(close, "run")
    # activations a thousand times the logits: both float32 networks are off float64 alike
    rounding = write_summary(tmp_path / "rounding", max_rel_diff_slim_vs_masked=6e-4,
                             slim_error_vs_float64=6e-4, masked_error_vs_float64=5e-4)
    assert "vs float64: slim 6e-04, masked 5e-04" in gpu_check.pruned_ok(rounding, "run")
    wrong = write_summary(tmp_path / "wrong", max_rel_diff_slim_vs_masked=0.2,
                          slim_error_vs_float64=0.3, masked_error_vs_float64=1e-6)
    with pytest.raises(CheckFailed, match="slim vs masked 2e-01"):
        gpu_check.pruned_ok(wrong, "run")


def test_a_slim_network_that_is_not_the_masked_one_fails(tmp_path):
    """``slim_exact`` (the prune script's float64 check) false, or missing, is a FAIL even where
    the float32 numbers look close."""
    wrong = write_summary(tmp_path / "wrong", max_rel_diff_slim_vs_masked=3e-6,
                          slim_error_vs_float64=1e-6, masked_error_vs_float64=1e-6,
                          slim_exact=False, slim_vs_masked_float64=3e-3)
    with pytest.raises(CheckFailed, match="slim != masked in float64: 3e-03"):
        gpu_check.pruned_ok(wrong, "run")
    old = write_summary(tmp_path / "old", max_rel_diff_slim_vs_masked=3e-6,
                        slim_error_vs_float64=1e-6, masked_error_vs_float64=1e-6)
    path = tmp_path / "old" / "run" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in summary.items() if k != "slim_exact"}))
    with pytest.raises(CheckFailed, match="lacks slim_exact"):
        gpu_check.pruned_ok(old, "run")


def test_a_nan_loss_or_a_missing_record_fails(tmp_path):
    nan = write_summary(tmp_path / "nan", max_rel_diff_slim_vs_masked=0.0,
                        slim_error_vs_float64=0.0, masked_error_vs_float64=0.0)
    path = tmp_path / "nan" / "run" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "loss_pruned": float("nan")}))
    with pytest.raises(CheckFailed, match="not finite: loss_pruned=nan"):
        gpu_check.pruned_ok(nan, "run")
    path.write_text(json.dumps({k: v for k, v in summary.items() if k != "tf32"}))
    with pytest.raises(CheckFailed, match="lacks tf32"):
        gpu_check.pruned_ok(nan, "run")


def test_the_scripts_and_widths_come_from_the_registry():
    assert (gpu_check.prune_script("mobilenet_v2"), gpu_check.train_script("resnet34")) == (
        "mobile2_prune.py", "resnet34_finetune.py")
    assert (gpu_check.prune_script("mobilenet_v3_small"),
            gpu_check.train_script("proxylessnas_mobile")) == ("mobile3_prune.py",
                                                               "proxyless_finetune.py")
    assert gpu_check.half_width("mobilenet_v2") == ["--width", "0.5"]
    assert gpu_check.half_width("mobilenet_v3_small") == ["--width", "0.75"]  # its smallest
    assert gpu_check.half_width("resnet34") == gpu_check.half_width("proxylessnas_mobile") == []
    ctx = Context(torch.device("cpu"), gpu_check.SIZES["cpu"], Path("work"), jobs=1)
    assert "--width" not in ctx.prune_argv("resnet34", "out")


def test_the_resume_checks_read_the_checkpoint_schema(tmp_path):
    """The SIGKILL checks poll a selection state and a training checkpoint as they are written."""
    from pruning.checkpoint import Checkpoint, save

    path = tmp_path / "selection_state.pth"
    assert gpu_check.loadable(path) is None
    counts = {"features.2.hidden": torch.ones(4, dtype=torch.long)}
    save(Checkpoint("selection", "mobilenet_v2", 0.5, 10, {},
                    state={"completed": counts, "batches_drawn": 3}), path)
    assert len(gpu_check.loadable(path).state["completed"]) == 1
    save(Checkpoint("training", "mobilenet_v2", 0.5, 10, {}, state={"epoch": 1}), path)
    assert gpu_check.loadable(path).state["epoch"] == 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_both_newer_families_prune_with_both_evaluators_and_fine_tune(device):
    """Every need names a check of the list; MobileNetV3-Small and ProxylessNAS-Mobile each have
    a fast and a plain prune run on the same candidate subsets, their comparison, and a
    fine-tune; the gated family alone has the in-process loss comparison."""
    items = gpu_check.checks("0.05", torch.device(device))
    names = [c.name for c in items]
    assert len(names) == len(set(names))
    assert all(n in names for c in items for n in c.needs)
    for arch in ("mobilenet_v3_small", "proxylessnas_mobile"):
        mine = [n for n in names if arch in n]
        assert f"dense: {arch}" in mine and f"finetune {arch} --pruned" in mine
        assert f"prune {arch}: fast selection = plain selection" in mine
        same = next(c for c in items if c.name == f"prune {arch}: fast selection = plain selection")
        assert same.needs == (f"prune {arch} --evaluator fast", f"prune {arch} --evaluator plain")
    assert [n for n in names if "gated units" in n] == [
        "mobilenet_v3_small gated units: fast fp32 losses = plain losses"]
    launcher = next(c for c in items if c.name.startswith("launcher"))
    assert "dense: mobilenet_v3_small" in launcher.needs


def test_the_selection_comparison_names_the_units_that_differ(tmp_path):
    from pruning.checkpoint import Checkpoint, save

    def pruned(out: str, counts: dict) -> None:
        (tmp_path / out).mkdir()
        units = {name: {"space": name, "total": 4, "kept": len(c), "selections": sum(c.values()),
                        "counts": c} for name, c in counts.items()}
        save(Checkpoint("pruned", "mobilenet_v2", 0.5, 10, {}, "hidden",
                        {"spaces": {n: sorted(c) for n, c in counts.items()}, "units": units}),
             tmp_path / out / "pruned.pth")

    pruned("fast", {"a": {0: 1}, "b": {1: 2}})
    pruned("plain", {"a": {0: 1}, "b": {1: 2}})
    pruned("other", {"a": {0: 1}, "b": {2: 2}})
    ctx = Context(torch.device("cpu"), gpu_check.SIZES["cpu"], tmp_path, jobs=1)
    assert "the same selection in all 2 units (2 channels kept" in gpu_check.same_selection(
        "fast", "plain")(ctx)
    with pytest.raises(CheckFailed, match=r"otherwise in 1 of 2 units, first \['b'\]"):
        gpu_check.same_selection("fast", "other")(ctx)


def test_batchnorm_statistics_are_re_estimated_where_their_momentum_is_slow(tmp_path):
    """MobileNetV3-Small's BatchNorm momentum 0.01: fresh running statistics make the eval-mode
    logits the same for every image; after ``calibrate_batchnorm`` they differ, and the checks
    get the calibrated weights. MobileNetV2 (momentum 0.1) is left as it is."""
    import dataclasses

    import data
    import models

    sizes = dataclasses.replace(gpu_check.SIZES["cpu"], images=32)
    ctx = Context(torch.device("cpu"), sizes, tmp_path, jobs=1)
    arch = "mobilenet_v3_small"
    (tmp_path / f"dense-{arch}").mkdir()
    torch.manual_seed(0)
    torch.save(models.build(arch, 0.75, 10).state_dict(), tmp_path / f"dense-{arch}" / "last.pth")
    assert gpu_check.calibrate_batchnorm(ctx, "mobilenet_v2") == ""
    assert "momentum 0.01" in gpu_check.calibrate_batchnorm(ctx, arch)
    assert ctx.dense(arch).name == gpu_check.CALIBRATED
    assert ctx.dense("mobilenet_v2").name == "last.pth"
    dataset, _ = data.build_dataset("synthetic", None, "train", image_size=16, augment=False,
                                    num_images=8)
    x = torch.stack([dataset[i][0] for i in range(8)])
    spread = {}
    for name in ("last.pth", gpu_check.CALIBRATED):
        model = models.build(arch, 0.75, 10)
        model.load_state_dict(torch.load(tmp_path / f"dense-{arch}" / name))
        with torch.no_grad():
            spread[name] = float(model.eval()(x).std(0).max())
    assert spread["last.pth"] < 1e-6 < 1e-2 < spread[gpu_check.CALIBRATED]
