"""Every entry point checks its input as the prune and fine-tune scripts do (tracker issue 22,
items 5-7): before any work and under ``--dry-run``, with one line naming the argument or the file
and exit status 2, never a traceback. The checks are ``runner.arguments``'; each case below was
accepted, or ended in a traceback or an unclear message, before.

Entry points are called in-process through their ``main``/``build``/``parse`` where they allow it;
two cases run a script as a process, to see the whole path from the command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.runner import finetune_cli
from scripts.runner import prune_cli
from data.mnist import write_idx
from scripts.runner import arguments, distributed
from scripts.runner.command import run_command
from tests.support import ROOT
from tests.support.cli import run_script

sys.path.insert(0, str(ROOT / "scripts"))

import bench_select  # noqa: E402
import gpu_check  # noqa: E402
import launch  # noqa: E402
import mnist_two_layer  # noqa: E402
import pipeline  # noqa: E402
import pretraining  # noqa: E402
import report  # noqa: E402
import table1  # noqa: E402
import table2  # noqa: E402
import table3  # noqa: E402
import table5_backward  # noqa: E402
import toy_two_layer  # noqa: E402

HUGE_SEED = str(2**70)  # 1180591620717411303424
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-images", "32", "--workers", "0",
             "--no-progress", "--device", "cpu"]


def refused(capsys, call, *needles: str) -> str:
    """Run ``call``; it must exit with status 2 and one line on stderr holding every needle."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err.strip()


def prune(arch: str, *argv: str):
    """The prune script's parsing and checks (``prune_cli.parse``) as ``main`` ends them."""
    return lambda: run_command(lambda: prune_cli.parse(arch, [*SYNTHETIC, *argv]),
                               on_nonfinite="", on_interrupt="")


def finetune(arch: str, *argv: str):
    """The fine-tune script's parsing and checks, as ``main`` ends them."""
    def parse():
        args = finetune_cli.build_parser(arch).parse_args([*SYNTHETIC, *argv])
        args.width = getattr(args, "width", None)
        finetune_cli.check_args(args, distributed.World())
    return lambda: run_command(parse, on_nonfinite="", on_interrupt="")


def launcher(module, *argv: str):
    return lambda: launch.main(lambda: module.build(list(argv)))


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a user's file\n")
    return path


# -- the launchers, under --dry-run ----------------------------------------------------------------


@pytest.mark.parametrize("argv, needles", [
    (["--mobilenet-v2-epsilons", "nan"], ["--mobilenet-v2-epsilons", "nan"]),
    (["--resnet34-epsilons", "0.05,inf"], ["--resnet34-epsilons", "inf"]),
    (["--epochs", "-3"], ["--epochs", "-3"]),
    (["--device", "tpu"], ["--device", "tpu", "expected cpu or cuda[:N]"]),
    (["--nproc-per-node", "0"], ["--nproc-per-node"]),
    (["--runs-dir", ""], ["--runs-dir", "empty path"]),
])
def test_table1_dry_run_refuses_nonsense(argv, needles, tmp_path, capsys):
    refused(capsys, launcher(table1, "--dry-run", "--runs-dir", str(tmp_path), *argv), *needles)
    assert not list(tmp_path.iterdir())


def test_table2_dry_run_refuses_zero_epochs(tmp_path, capsys):
    refused(capsys, launcher(table2, "--dry-run", "--runs-dir", str(tmp_path), "--epochs", "0"),
            "--epochs", "must be >= 1, got 0")


@pytest.mark.parametrize("module", [table1, table2, table3, table5_backward, pretraining])
def test_every_launcher_refuses_a_runs_dir_that_is_a_file(module, a_file, capsys):
    refused(capsys, launcher(module, "--dry-run", "--runs-dir", str(a_file)), "--runs-dir",
            str(a_file), "not a folder")
    refused(capsys, launcher(module, "--dry-run", "--runs-dir", str(a_file / "below")),
            "--runs-dir", "is a file, not a folder")
    assert a_file.read_text() == "a user's file\n"


def test_table3_refuses_a_non_finite_epsilon(tmp_path, capsys):
    refused(capsys, launcher(table3, "--dry-run", "--runs-dir", str(tmp_path), "--epsilons",
                             "0.5=0.01,nan"), "--epsilons", "nan")


def test_a_launcher_refuses_a_data_path_that_is_a_file_or_missing(a_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    refused(capsys, launcher(table1, "--dry-run", "--data-path", str(a_file), "--runs-dir",
                             str(runs)), "--data-path", str(a_file), "not a folder")
    refused(capsys, launcher(table1, "--data-path", str(tmp_path / "missing"), "--runs-dir",
                             str(runs)), "--data-path", "no such folder")
    assert not runs.exists()


# -- pipeline.py, report.py, bench_select.py, gpu_check.py --------------------------------------


@pytest.mark.parametrize("argv, needles", [
    (["--out", "{file}"], ["--out", "not a folder"]),
    (["--out", ""], ["--out", "empty path"]),
    (["--seed", HUGE_SEED], ["--seed", "0..2**63-1", HUGE_SEED]),
    (["--jobs", "0"], ["--jobs"]),
])
def test_pipeline_refuses_bad_arguments(argv, needles, a_file, capsys):
    argv = [a.format(file=a_file) for a in argv]
    refused(capsys, lambda: pipeline.main(argv), *needles)
    assert a_file.read_text() == "a user's file\n"


def test_report_refuses_an_out_that_is_a_file_and_a_missing_runs_folder(a_file, tmp_path,
                                                                       capsys):
    refused(capsys, lambda: report.main([str(tmp_path), "--out", str(a_file)]), "--out",
            str(a_file), "not a folder")
    refused(capsys, lambda: report.main([str(tmp_path / "missing")]), "runs", "no such folder")


def training_summary(**fields) -> dict:
    return {"arch": "resnet34", "macs": 2e9, "params": 1.5e7, "top1": 70.0, "top5": 89.0,
            "epochs": 1, "pruned": False, **fields}


def test_report_skips_bad_summaries_by_name_and_flags_non_finite_numbers(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, text in {"not-json": "{oops", "a-list": "[1, 2]",
                       "no-macs": json.dumps({"top1": 70.0, "top5": 89.0, "params": 1.0,
                                              "epochs": 1}),
                       "good": json.dumps(training_summary()),
                       "diverged": json.dumps(training_summary(top1=float("nan"),
                                                               macs=1e9))}.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text(text)
    md, _ = report.report(runs, tmp_path / "out")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and not any("Traceback" in line for line in lines)
    said = {line.split("/")[-2]: line for line in lines}
    assert "skipped" in said["not-json"] and "not JSON" in said["not-json"]
    assert "skipped" in said["a-list"] and "JSON list" in said["a-list"]
    assert "skipped" in said["no-macs"] and "no macs" in said["no-macs"]
    assert "top1 is nan (not finite)" in said["diverged"]
    rows = [line for line in md.read_text().splitlines() if line.startswith("| resnet34")]
    assert len(rows) == 2  # the good run and the flagged one
    flagged = next(row for row in rows if "diverged" in row)
    assert "nan (not finite)" in flagged
    assert all(" nan |" not in row for row in rows)  # never a bare nan


@pytest.mark.parametrize("argv, needles", [
    (["--batch-size", "0"], ["--batch-size", "must be >= 1, got 0"]),
    (["--image-size", "-5"], ["--image-size", "must be >= 1, got -5"]),
    (["--image-size", "8"], ["--image-size 8", "ResNet34", "at least 16 px"]),
    (["--image-size", "1000000"], ["--image-size 1000000", "largest image size accepted"]),
    (["--device", "tpu"], ["--device", "TPUs are not supported"]),
    (["--exact-steps", "1,x"], ["--exact-steps"]),
])
def test_bench_select_refuses_bad_sizes_before_building_anything(argv, needles, capsys):
    argv = argv if "--device" in argv else [*argv, "--device", "cpu"]
    refused(capsys, lambda: bench_select.main(argv), *needles)


def test_gpu_check_refuses_a_workdir_that_is_a_file(a_file, capsys):
    refused(capsys, lambda: gpu_check.main(["--device", "cpu", "--workdir", str(a_file)]),
            "--workdir", str(a_file), "not a folder")


# -- the two-layer experiments ------------------------------------------------------------------


def test_toy_refuses_a_seed_beyond_63_bits(capsys):
    message = refused(capsys, lambda: toy_two_layer.main(["--seed", HUGE_SEED]), "--seed",
                      "0..2**63-1")
    assert message.endswith(f"got {HUGE_SEED}")
    refused(capsys, lambda: toy_two_layer.main(["--seed", str(2**63 - 2), "--seeds", "5"]),
            "--seed", "2**63-1")


def test_mnist_refuses_a_seed_its_generators_cannot_take_and_an_out_that_is_a_file(
        a_file, tmp_path, capsys):
    refused(capsys, lambda: mnist_two_layer.main(["--data-path", str(tmp_path), "--seed",
                                                  HUGE_SEED]), "--seed", HUGE_SEED)
    refused(capsys, lambda: mnist_two_layer.main(["--data-path", str(tmp_path), "--out",
                                                  str(a_file)]), "--out", "not a folder")


def test_mnist_idx_files_with_no_images_are_refused_naming_the_file(tmp_path, capsys):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    refused(capsys, lambda: mnist_two_layer.main(["--data-path", str(tmp_path), "--quick",
                                                  "--out", str(tmp_path / "out")]),
            "train-images-idx3-ubyte: holds 0 images")
    assert not (tmp_path / "out").exists()


# -- the prune and fine-tune scripts -------------------------------------------------------------


def test_prune_names_seed_beyond_63_bits(tmp_path, capsys):
    refused(capsys, prune("resnet34", "--output-dir", str(tmp_path), "--seed", HUGE_SEED),
            "argument --seed: expected an integer in 0..2**63-1, got 1180591620717411303424")


@pytest.mark.parametrize("script", [prune, finetune])
def test_an_image_size_that_cannot_fit_is_refused_before_anything_is_built(script, tmp_path,
                                                                           capsys):
    refused(capsys, script("mobilenet_v2", "--output-dir", str(tmp_path), "--image-size",
                           "1000000"), "--image-size 1000000", "PiB",
            "largest image size accepted")


def test_a_batch_that_cannot_fit_names_the_batch_size(tmp_path, capsys):
    refused(capsys, prune("resnet34", "--output-dir", str(tmp_path), "--batch-size",
                          str(10**9)), "--batch-size 1000000000", "at most --batch-size")


@pytest.mark.parametrize("arch, layout, size, needed", [
    ("resnet34", "imagenet", "1", "at least 16 px"),  # 1x1 images once ended as a NaN loss
    ("resnet34", "imagenet", "8", "at least 16 px"),
    ("mobilenet_v2", "imagenet", "4", "at least 8 px"),
    ("resnet34", "cifar", "4", "at least 8 px"),
])
def test_images_too_small_for_the_stem_are_refused_naming_the_size_needed(
        arch, layout, size, needed, tmp_path, capsys):
    refused(capsys, prune(arch, "--output-dir", str(tmp_path), "--layout", layout,
                          "--image-size", size), f"--image-size {size}", needed)
    refused(capsys, finetune(arch, "--output-dir", str(tmp_path), "--layout", layout,
                             "--image-size", size), f"--image-size {size}", needed)


def test_the_smallest_image_sizes_follow_the_stems_and_admit_the_smoke_runs():
    needed = {(arch, layout): arguments.network_sizes(arch, layout, 1.0).min_image_size
              for arch in ("mobilenet_v2", "resnet34") for layout in ("imagenet", "cifar")}
    assert needed == {("mobilenet_v2", "imagenet"): 8, ("resnet34", "imagenet"): 16,
                      ("mobilenet_v2", "cifar"): 8, ("resnet34", "cifar"): 8}
    for arch, size in launch.SMOKE_IMAGE_SIZE.items():  # every family's smoke runs
        assert arguments.network_sizes(arch, "imagenet", 1.0).min_image_size <= size, arch


def test_finetune_batch_size_1_is_refused_where_batchnorm_trains(tmp_path, capsys):
    refused(capsys, finetune("mobilenet_v2", "--output-dir", str(tmp_path), "--batch-size", "1"),
            "--batch-size 1", "BatchNorm", "at least 2 images")
    finetune("mobilenet_v2", "--output-dir", str(tmp_path), "--batch-size", "1",
             "--evaluate-only")()  # an evaluation trains nothing: accepted


@pytest.mark.parametrize("script", [prune, finetune])
def test_an_empty_output_dir_is_refused(script, capsys):
    refused(capsys, script("resnet34", "--output-dir", ""), "--output-dir ''", "empty path")


@pytest.mark.parametrize("device, needles", [
    ("tpu", ["--device tpu", "TPUs are not supported"]),
    ("mps", ["--device mps"]),
    (f"cuda:{torch.cuda.device_count()}", ["--device cuda:"]),
])
def test_devices_that_do_not_exist_here_are_refused(device, needles, tmp_path, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here (and the prune scripts take cpu or cuda only)")
    refused(capsys, prune("resnet34", "--output-dir", str(tmp_path), "--device", device),
            *needles)
    with pytest.raises(arguments.UsageError, match="--device"):
        arguments.check_device(device, ("cpu", "cuda"))


def test_match_kept_with_another_stop_rule_is_refused(tmp_path, capsys):
    refused(capsys, prune("resnet34", "--output-dir", str(tmp_path), "--match-kept", "P.pth",
                          "--stop", "fraction", "--keep-fraction", "0.5"),
            "--match-kept P.pth", "--stop fraction --keep-fraction 0.5 would be ignored")


@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "0"], "--epsilon must be > 0, got 0.0"),
    (["--top1-tol", "1", "--stop", "top1_tol"], "--top1-tol must be in [0, 1), got 1.0"),
    (["--keep-fraction", "0", "--stop", "fraction"], "--keep-fraction must be in (0, 1]"),
    (["--candidates", "0"], "--candidates must be >= 1, got 0"),
    (["--method", "random"], "--method random keeps a given number of channels: set --stop "
                             "fraction (with --keep-fraction) or --match-kept"),
    (["--shortlist", "4", "--evaluator", "plain"],
     "--shortlist needs --method greedy and --evaluator fast"),
    (["--shortlist", "0"], "--shortlist must be >= 1, got 0"),
    (["--shortlist-exact-steps", "2"], "--shortlist-exact-steps needs --shortlist"),
    (["--evaluator", "plain", "--precision", "bf16"], "--precision bf16 needs --evaluator fast"),
])
def test_the_selection_checks_are_the_configs_worded_in_flags(argv, message, tmp_path, capsys):
    """``PruneConfig`` holds these checks once; the script words them in its flags."""
    err = refused(capsys, prune("resnet34", "--output-dir", str(tmp_path), *argv), message)
    assert "PruneConfig" not in err and "_" not in err  # no field names (keep_fraction)


def test_scratch_max_factor_without_from_scratch_is_refused(tmp_path, capsys):
    refused(capsys, finetune("resnet34", "--output-dir", str(tmp_path), "--scratch-max-factor",
                             "3"), "--scratch-max-factor", "--from-scratch")


# -- as processes: the whole path from the command line ------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["scripts/table1.py", "--dry-run", "--epochs", "-3", "--runs-dir", "{tmp}"], "--epochs"),
    (["resnet34_prune.py", "--seed", HUGE_SEED, "--device", "cpu", "--output-dir", "{tmp}"],
     "--seed"),
])
def test_a_script_run_as_a_process_exits_2_with_one_line(argv, flag, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = run_script(*argv, expect=2, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"argument {flag}" in result.stderr
    assert not result.stdout and not list(tmp_path.iterdir())
