"""Nothing lost, nothing silently wrong: finished runs, non-finite numbers, bad files, Ctrl-C.

Each test here failed before the fix it names (tracker: the failure modes found by trying to
break the scripts).
"""

import json
import signal
import subprocess
import time

import pytest
import torch

from scripts.runner import finetune_cli
import models
from scripts.runner import prune_cli
from pruning.checkpoint import load, save_atomic
from pruning.masks import Masks
from pruning.selection import SelectionSettings, select_unit
from pruning.stop import MaxFraction, NonFiniteLoss
from tests.support.cli import run_main, run_script, start_script, tiny
from tests.support.nets import tiny_net, tiny_units

FINETUNE = ["--dataset", "synthetic", "--synthetic-images", "64", "--synthetic-val-images", "32",
            "--image-size", "16", "--batch-size", "16", "--epochs", "1", "--workers", "0",
            "--no-progress", "--device", "cpu"]


def prune_argv(out, *extra):
    """A ResNet34 run keeping 1% of every unit (1 to 6 channels: 47 greedy steps)."""
    return tiny(out, "--image-size", "16", "--stop", "fraction", "--keep-fraction", "0.01",
                *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished ResNet34 prune run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    prune_cli.run("resnet34", prune_argv(out))
    return out


# -- a finished prune run is never overwritten silently ------------------------------------------


def test_a_finished_prune_run_is_refused_reported_on_resume_and_replaced_on_overwrite(finished,
                                                                                        capsys):
    before = (finished / "pruned.pth").stat().st_mtime_ns
    with pytest.raises(ValueError, match="holds a finished run .* --overwrite"):
        prune_cli.run("resnet34", prune_argv(finished))
    result = run_main(capsys, prune_cli.main, "resnet34",
                      argv=prune_argv(finished, "--resume", "--epsilon", "0.3"))
    assert result.code == 0 and "finished run" in result.out
    assert (finished / "pruned.pth").stat().st_mtime_ns == before
    prune_cli.run("resnet34", prune_argv(finished, "--overwrite"))
    assert (finished / "pruned.pth").stat().st_mtime_ns != before


def test_resume_and_overwrite_exclude_each_other():
    args = prune_cli.build_parser("resnet34").parse_args(["--resume", "--overwrite"])
    with pytest.raises(ValueError, match="give one"):
        prune_cli.check_args(args)


def test_finetune_overwrite_replaces_a_run_and_an_evaluation_is_not_overwritten(tmp_path):
    out = str(tmp_path / "ft")
    finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", out])
    with pytest.raises(finetune_cli.UsageError, match="--overwrite"):
        finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", out])
    finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", out, "--overwrite"])
    evaluation = str(tmp_path / "eval")
    finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", evaluation, "--evaluate-only"])
    with pytest.raises(finetune_cli.UsageError, match="holds an evaluation"):
        finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", evaluation, "--evaluate-only"])


# -- non-finite numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, argv, flag", [
    ("resnet34_finetune.py", ["--lr", "inf"], "--lr"),
    ("resnet34_finetune.py", ["--weight-decay", "nan"], "--weight-decay"),
    ("resnet34_prune.py", ["--epsilon", "nan"], "--epsilon"),
    ("resnet34_prune.py", ["--finetune-lr", "inf"], "--finetune-lr"),
])
def test_non_finite_float_arguments_are_refused_by_name(name, argv, flag, capsys):
    """In this process (the parse is the point; test_entry_arguments runs a script as a process
    for the exit status and the one line)."""
    main = prune_cli.main if name.endswith("_prune.py") else finetune_cli.main
    result = run_main(capsys, main, "resnet34", argv=argv)
    assert result.code == 2
    assert f"argument {flag}: expected a finite number" in result.err
    assert "Traceback" not in result.err


def test_training_that_diverges_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(
        tmp_path):
    out = tmp_path / "diverged"
    argv = [*FINETUNE, "--epochs", "2", "--output-dir", str(out)]
    finetune_cli.run("resnet34", argv)  # two good epochs
    result = run_script("resnet34_finetune.py", *FINETUNE, "--epochs", "2", "--lr", "1e30",
                        "--output-dir", str(tmp_path / "bad"), expect=1)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: epoch 1: the training loss is nan; nothing of that epoch was saved" in (
        result.stderr)
    assert not (tmp_path / "bad" / "last.pth").exists()  # nothing of the broken epoch is saved
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=pytest.fail)  # plain JSON: no NaN or Infinity


class NaNAfter:
    """An evaluator whose losses turn NaN at the given step."""

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def losses(self, unit, counts, candidates, batch):
        self.calls += 1
        values = torch.arange(len(candidates), dtype=torch.float64)
        return values * float("nan") if self.calls >= self.step else values


def test_selection_stops_at_a_non_finite_loss_naming_the_unit_and_step():
    model, units = tiny_net(), tiny_units()
    masks = Masks(model, units)
    batches = iter(lambda: (torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))), None)
    with pytest.raises(NonFiniteLoss, match="unit u1, step 3: the best candidate's loss is nan"):
        select_unit(units[0], masks, NaNAfter(3), batches, MaxFraction(1.0), SelectionSettings(),
                    0)


# -- bad input found before any work ---------------------------------------------------------------


def test_bad_paths_and_learning_rates_are_refused_before_any_work(tmp_path, finished):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (["--finetune-lr", "-1", "--finetune-between", "0.1"], "--finetune-lr must be > 0"),
        (["--output-dir", str(a_file)], "exists and is not a folder"),
        (["--match-kept", str(garbage), "--stop", "loss_gap", "--keep-fraction", "1.0"],
         f"--match-kept {garbage}: not a checkpoint"),  # (--match-kept takes no other stop rule)
    ]
    for extra, message in cases:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            prune_cli.run("resnet34", [*prune_argv(tmp_path / "out"), *extra])
        assert time.perf_counter() - start < 5  # no data, no model
    with pytest.raises(finetune_cli.UsageError, match="exists and is not a folder"):
        finetune_cli.run("resnet34", [*FINETUNE, "--output-dir", str(a_file)])


def test_a_truncated_selection_state_is_named_on_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / prune_cli.STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=f"cannot read {out / prune_cli.STATE_FILE}"):
        prune_cli.run("resnet34", prune_argv(out, "--resume"))


def test_a_pruned_checkpoint_given_as_pretrained_says_where_it_belongs(finished, tmp_path):
    with pytest.raises(ValueError, match="is a pruned checkpoint .* --pruned"):
        prune_cli.run("resnet34", [*prune_argv(tmp_path / "x"), "--pretrained",
                                   str(finished / "pruned.pth")])


def test_resume_ignores_arguments_the_stop_rule_never_reads(tmp_path):
    args = prune_cli.build_parser("resnet34").parse_args(prune_argv(tmp_path))
    changed = prune_cli.build_parser("resnet34").parse_args(
        prune_argv(tmp_path, "--epsilon", "0.3", "--finetune-lr", "0.1"))
    assert prune_cli.selection_args(args) == prune_cli.selection_args(changed)
    gap = prune_cli.build_parser("resnet34").parse_args(["--epsilon", "0.3"])
    assert prune_cli.selection_args(gap)["epsilon"] == 0.3


# -- interruptions ---------------------------------------------------------------------------------


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pth"
    save_atomic({"a": 1}, path)

    def interrupted(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": 2}, path)
    assert load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]


def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored: the child must get the default disposition, as from a terminal, to test Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "run"
    # every channel of every unit: a run long enough (tens of seconds) that a test process
    # starved of CPU on a loaded machine still interrupts it before it ends
    process = start_script("mobile2_prune.py", *tiny(out, "--width", "0.5", "--stop",
                                                     "fraction", "--keep-fraction", "1.0"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=_default_sigint)
    for line in process.stdout:
        if "kept" in line:  # the first unit is done: interrupt once it is saved
            deadline = time.time() + 60
            while not (out / prune_cli.STATE_FILE).exists():
                assert time.time() < deadline
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130  # scripts.runner.command: both script families
    assert "Traceback" not in stderr and "continue with the same command and --resume" in stderr
    assert not list(out.glob(".*tmp*"))
    assert (out / prune_cli.STATE_FILE).exists()


def test_weights_holding_nan_are_refused_naming_the_parameter(tmp_path):
    """Seen on a CPU: --amp bfloat16 training left NaN in weights no input reaches at 16 px,
    invisible in the loss; pruning them made the float64 slim check NaN."""
    model = models.build("resnet34", 1.0, num_classes=10)
    state = model.state_dict()
    state["layer4.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(NonFiniteLoss, match="layer4.0.conv1.weight holds 1 NaN"):
        prune_cli.run("resnet34", [*prune_argv(tmp_path / "out"), "--pretrained", str(path)])
