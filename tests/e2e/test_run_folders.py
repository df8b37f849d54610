"""A run folder belongs to one run, and nothing a user made is lost (scripts/runner/rundir.py).

Each test runs a case of issue 22 as a user would (the scripts' ``main``, in this process to stay
fast, or a real process where a second one is the point), and checks the refusal (its exit
status and its one line, naming the folder or the file), that nothing the user made is deleted,
and that the old run is intact.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts.runner import finetune_cli
import models
from scripts.runner import prune_cli
from scripts.runner import distributed
from pruning.checkpoint import read
from scripts.runner.rundir import ASIDE, LOCK
from tests.support import ROOT
from tests.support.cli import TINY, run_main, run_script, start_script
from tests.support.disk import fill

sys.path.insert(0, str(ROOT / "scripts"))

import launch  # noqa: E402
import pipeline  # noqa: E402

ARCH = "mobilenet_v2"
PRUNE = [*TINY, "--width", "0.5", "--image-size", "16"]
KEEP = ["--stop", "fraction", "--keep-fraction", "0.05"]
FINETUNE = ["--dataset", "synthetic", "--synthetic-images", "64", "--synthetic-val-images", "32",
            "--image-size", "16", "--batch-size", "16", "--epochs", "1", "--workers", "0",
            "--no-progress", "--device", "cpu", "--lr", "0.001"]


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory) -> Path:
    """A finished MobileNetV2 x0.5 prune run (a few seconds)."""
    out = tmp_path_factory.mktemp("prune") / "run"
    prune_cli.run(ARCH, [*PRUNE, *KEEP, "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, prune_run) -> Path:
    """A finished one-epoch fine-tune of ``prune_run``'s network."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    finetune_cli.run(ARCH, [*FINETUNE, "--pruned", str(prune_run / "pruned.pth"),
                            "--output-dir", str(out)])
    return out


def copy(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` (file times kept) with a file of the user's in it."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "notes.txt").write_text("mine")
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (but the lock, which a run rewrites) by size and time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != LOCK}


def cli(main, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """``python <script> argv`` in this process: exit status, stdout, stderr
    (``tests.support.cli.run_main``, which sets and restores ``sys.argv`` itself; the tests'
    ``monkeypatch`` patches the scripts' functions)."""
    return run_main(capsys, main, ARCH, argv=argv)


# -- --overwrite reads every input first -----------------------------------------------------------


def test_overwrite_reads_match_kept_inside_the_folder_before_the_old_run_goes(
        prune_run, tmp_path, monkeypatch, capsys):
    out = copy(prune_run, tmp_path)
    kept = json.loads((out / "summary.json").read_text())["kept"]
    code, stdout, err = cli(prune_cli.main, [*PRUNE, "--method", "magnitude", "--match-kept",
                                             out / "pruned.pth", "--overwrite", "--output-dir",
                                             out], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "magnitude" and summary["kept"] == kept
    assert f"moved the previous run's files to {out / ASIDE}" in stdout
    assert not (out / ASIDE).exists()  # deleted once the new run's checkpoint was written
    assert (out / "notes.txt").read_text() == "mine"


def test_finetune_overwrite_reads_pruned_inside_the_folder_first(finetune_run, tmp_path,
                                                                  monkeypatch, capsys):
    out = copy(finetune_run, tmp_path)
    before = (out / "last.pth").stat().st_mtime_ns
    code, _, err = cli(finetune_cli.main, [*FINETUNE, "--pruned", out / "best.pth", "--overwrite",
                                           "--output-dir", out], monkeypatch, capsys)
    assert code == 0, err
    assert (out / "last.pth").stat().st_mtime_ns != before
    assert read(out / "last.pth", "x").args["pruned"] == str(out / "best.pth")
    assert not (out / ASIDE).exists() and (out / "notes.txt").read_text() == "mine"


def test_overwrite_with_a_mistyped_pretrained_deletes_nothing(prune_run, tmp_path, monkeypatch,
                                                              capsys):
    out = copy(prune_run, tmp_path)
    before = snapshot(out)
    typo = out / "dense.ptj"
    code, _, err = cli(prune_cli.main, [*PRUNE, *KEEP, "--pretrained", typo, "--overwrite",
                                        "--output-dir", out], monkeypatch, capsys)
    assert code == 2
    assert err.startswith(f"error: --pretrained {typo}: no such file") and err.count("\n") == 1
    assert snapshot(out) == before


def test_an_overwrite_that_stops_before_its_first_checkpoint_is_undone(prune_run, tmp_path,
                                                                       monkeypatch, capsys):
    out = copy(prune_run, tmp_path)
    before = snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C (or a SIGKILL) before the first checkpoint

    monkeypatch.setattr(prune_cli, "save", killed)
    code, _, _ = cli(prune_cli.main, [*PRUNE, *KEEP, "--seed", "1", "--overwrite",
                                      "--output-dir", out], monkeypatch, capsys)
    assert code == 130
    assert (out / ASIDE / "pruned.pth").exists()  # the old run, aside and whole
    monkeypatch.undo()
    code, stdout, err = cli(prune_cli.main, [*PRUNE, *KEEP, "--resume", "--output-dir", out],
                            monkeypatch, capsys)
    assert code == 0, err
    assert f"restored the run it had moved to {out / ASIDE}" in stdout
    assert "holds a finished run (pruned.pth); nothing to do" in stdout
    assert snapshot(out) == before


# -- one kind of run per folder --------------------------------------------------------------------


@pytest.mark.parametrize("older", [False, True], ids=["recorded", "older-version"])
def test_a_fine_tune_into_a_prune_folder_is_refused(older, prune_run, tmp_path, monkeypatch,
                                                    capsys):
    out = copy(prune_run, tmp_path)
    if older:  # a folder of a version before run.json: its kind is read from its files
        (out / "run.json").unlink()
    before = snapshot(out)
    for extra in ([], ["--overwrite"], ["--evaluate-only", "--pruned", out / "pruned.pth"]):
        code, _, err = cli(finetune_cli.main, [*FINETUNE, "--width", "0.5", *extra,
                                               "--output-dir", out], monkeypatch, capsys)
        this = "this evaluation" if extra[:1] == ["--evaluate-only"] else "this fine-tune run"
        assert code == 2
        assert err == (f"error: --output-dir {out} holds a prune run of mobilenet_v2; give "
                       f"{this} its own --output-dir\n")
    assert snapshot(out) == before


def test_a_prune_into_a_fine_tune_folder_is_refused(finetune_run, tmp_path, monkeypatch, capsys):
    out = copy(finetune_run, tmp_path)
    before = snapshot(out)
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, _, err = cli(prune_cli.main, [*PRUNE, *KEEP, *extra, "--output-dir", out],
                           monkeypatch, capsys)
        assert code == 2
        assert err == (f"error: --output-dir {out} holds a fine-tune run of mobilenet_v2; give "
                       "this prune run its own --output-dir\n")
    assert snapshot(out) == before


def test_a_run_of_another_family_is_refused_unless_overwrite(prune_run, tmp_path, monkeypatch,
                                                             capsys):
    out = copy(prune_run, tmp_path)
    before = snapshot(out)
    monkeypatch.setattr(sys, "argv", ["script", *TINY, "--image-size", "16", *KEEP,
                                      "--output-dir", str(out)])
    with pytest.raises(SystemExit) as refused:
        prune_cli.main("resnet34")
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --output-dir {out} holds a prune run of mobilenet_v2; this run is of resnet34: "
        "choose another --output-dir, or pass --overwrite to replace it\n")
    assert snapshot(out) == before


# -- one run at a time -----------------------------------------------------------------------------


def test_a_second_run_at_once_is_refused_and_a_killed_run_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    first_args = [*PRUNE, "--stop", "fraction", "--keep-fraction", "1.0", "--seed", "3",
                  "--output-dir", str(out)]
    first = start_script("mobile2_prune.py", *first_args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120  # until it holds the lock and has saved its first unit
        while not ((out / prune_cli.STATE_FILE).exists()
                   and f"pid {first.pid} " in (out / LOCK).read_text()):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        code, _, err = cli(prune_cli.main, [*PRUNE, *KEEP, "--seed", "4", "--output-dir", out],
                           monkeypatch, capsys)
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: --output-dir {out}: another run is working there (pid "
                              f"{first.pid} on ")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the kernel dropped the lock with the process: --resume continues the killed run
    args = prune_cli.parse(ARCH, [*first_args, "--resume"])
    job = prune_cli.setup(args, distributed.World())
    try:
        assert job.saved is not None and job.saved.state["completed"]
    finally:
        job.folder.release()


def test_a_refused_run_leaves_no_trace(tmp_path, monkeypatch, capsys):
    out = tmp_path / "new"
    code, _, err = cli(prune_cli.main, [*PRUNE, *KEEP, "--pretrained", tmp_path / "missing.pth",
                                        "--output-dir", out], monkeypatch, capsys)
    assert code == 2 and "missing.pth: no such file" in err
    assert not out.exists()


# -- the pipeline's --overwrite removes only what it wrote -----------------------------------------


def test_pipeline_overwrite_refuses_a_folder_with_files_it_did_not_write(tmp_path):
    out = tmp_path / "pipeline"
    step = out / "mobilenet_v2" / "prune-greedy"
    (step / "tb").mkdir(parents=True)
    for name in ("invocations.json", "table.md", "mobilenet_v2/log.txt", "mobilenet_v2/"
                 "timings.json", "mobilenet_v2/prune-greedy/pruned.pth",
                 "mobilenet_v2/prune-greedy/launch.json", "mobilenet_v2/prune-greedy/tb/events"):
        (out / name).write_text("{}")
    thesis = out / "my-thesis" / "chapter1.tex"
    thesis.parent.mkdir()
    thesis.write_text("\\chapter{One}")
    notes = step / "notes.txt"
    for mine in (thesis, notes):  # a user's file at the top, then one inside a step's folder
        with pytest.raises(SystemExit) as refused:
            pipeline.start_out(out, resume=False, overwrite=True)
        assert str(refused.value) == (
            f"error: --out {out} holds {mine}, which the pipeline did not write; --overwrite "
            "deletes only the pipeline's own files: move it away or choose another --out")
        assert mine.read_text() and (step / "pruned.pth").exists()
        if mine == thesis:
            shutil.rmtree(thesis.parent)
            notes.write_text("mine")
    notes.unlink()
    pipeline.start_out(out, resume=False, overwrite=True)  # all of it the pipeline's: removed
    assert sorted(p.name for p in out.iterdir()) == [LOCK, "run.json"]
    assert json.loads((out / "run.json").read_text())["kind"] == "pipeline"


# -- files that are damaged are named --------------------------------------------------------------


def test_resume_names_a_damaged_metrics_file_and_drops_a_torn_last_line(
        prune_run, finetune_run, tmp_path, monkeypatch, capsys):
    out = copy(finetune_run, tmp_path)
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    resume = [*FINETUNE, "--pruned", prune_run / "pruned.pth", "--resume", "--output-dir", out]
    metrics.write_text('{"epoch": 1, oops\n' + good)
    code, _, err = cli(finetune_cli.main, resume, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --resume: {metrics}, line 1: not an epoch's metrics (")
    metrics.write_text(good + '{"epoch": 2, "train_lo')  # a crash while appending epoch 2
    code, _, err = cli(finetune_cli.main, resume, monkeypatch, capsys)
    assert code == 0, err
    assert metrics.read_text() == good


def test_a_damaged_launch_record_is_named(tmp_path):
    out = tmp_path / "step"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "launch.json").write_text('{"script": "mobile2_prune.py", "args": [')
    with pytest.raises(launch.StepFailed) as failed:
        launch.Step("mobile2_prune.py", ("--epsilon", "0.1"), out).done()
    message = str(failed.value)
    assert message.startswith(f"{out / 'launch.json'}: damaged (JSONDecodeError: ")
    assert "\n" not in message and f"remove {out} to run the step again" in message


class NotATensor:
    """Pickled into a checkpoint: a file that loading with weights_only=True refuses."""


def test_weights_of_another_architecture_are_named_on_the_first_line(tmp_path, monkeypatch,
                                                                     capsys):
    path = tmp_path / "resnet34.pth"
    torch.save(models.build("resnet34", 1.0, 10).state_dict(), path)
    code, _, err = cli(prune_cli.main, [*PRUNE, *KEEP, "--pretrained", path, "--output-dir",
                                        tmp_path / "out"], monkeypatch, capsys)
    first, *rest = err.splitlines()
    assert code == 2 and len(rest) == 1  # the names that differ, on one line
    assert first.startswith(f"error: --pretrained {path}: does not fit the mobilenet_v2 model")
    assert "most names differ: the file is probably for another architecture" in first


@pytest.mark.parametrize("main, flag", [(prune_cli.main, "--pretrained"),
                                        (finetune_cli.main, "--pretrained"),
                                        (finetune_cli.main, "--pruned")])
def test_a_file_holding_python_objects_is_refused_in_one_line(main, flag, tmp_path, monkeypatch,
                                                              capsys):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": models.build(ARCH, 0.5, 10).state_dict(), "extra": NotATensor()},
               path)
    common = [*PRUNE, *KEEP] if main is prune_cli.main else [*FINETUNE, "--width", "0.5"]
    if flag == "--pruned":
        common = FINETUNE
    code, _, err = cli(main, [*common, flag, path, "--output-dir", tmp_path / "out"],
                       monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {flag} {path}: ")
    assert f"Python object ({__name__}.NotATensor)" in err and "weights_only=True" in err
    assert "Re-running" not in err and "GLHF" not in err


# -- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path):
    """A small tmpfs of its own, to fill (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def full_before(module, name: str, disk: Path, monkeypatch) -> None:
    """``module.save`` fills the disk just before it writes a file called ``name``."""
    real = module.save

    def save(ckpt, path):
        if Path(path).name == name:
            fill(disk)
        real(ckpt, path)

    monkeypatch.setattr(module, "save", save)


@pytest.mark.parametrize("name, kept", [
    (prune_cli.STATE_FILE, "no partial file was left"),  # the first checkpoint
    ("masked.pth", "no partial file was left"),  # after pruned.pth, the state still there
])
def test_a_full_disk_while_pruning_ends_in_one_line_and_resumes(name, kept, disk, monkeypatch,
                                                                capsys):
    out = disk / "run"
    argv = [*PRUNE, *KEEP, "--output-dir", out]
    full_before(prune_cli, name, disk, monkeypatch)
    code, _, err = cli(prune_cli.main, argv, monkeypatch, capsys)
    assert code == 1
    assert err == (f"error: no space left on device while writing {out / name}; {kept}; free "
                   "space and --resume\n")
    assert not list(out.glob(".*tmp*")) and not (out / name).exists()
    if name == "masked.pth":
        assert read(out / prune_cli.STATE_FILE, "x", ("selection",)).state["completed"]
    monkeypatch.undo()
    (disk / "filler").unlink()
    code, _, err = cli(prune_cli.main, [*argv, "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert (out / "masked.pth").exists() and not (out / prune_cli.STATE_FILE).exists()


def test_a_full_disk_while_fine_tuning_ends_in_one_line(prune_run, disk, monkeypatch, capsys):
    out = disk / "run"
    argv = [*FINETUNE, "--epochs", "2", "--pruned", prune_run / "pruned.pth", "--output-dir", out]
    real, calls = finetune_cli.save, []

    def save(ckpt, path):  # epoch 1 is saved; the disk is full when epoch 2's last.pth is written
        calls.append(path)
        if len(calls) == 3:
            fill(disk)
        real(ckpt, path)

    monkeypatch.setattr(finetune_cli, "save", save)
    code, _, err = cli(finetune_cli.main, argv, monkeypatch, capsys)
    assert code == 1
    assert err == (f"error: no space left on device while writing {out / 'last.pth'}; the "
                   "previous checkpoint is intact; free space and --resume\n")
    assert read(out / "last.pth", "x", ("training",)).state["epoch"] == 1
    assert not list(out.glob(".*tmp*"))


WORKER = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from scripts.runner import prune_cli
from tests.support.disk import fill

disk = Path(sys.argv[2])
real = prune_cli.save


def save(ckpt, path):
    if Path(path).name == prune_cli.STATE_FILE:
        fill(disk)
    real(ckpt, path)


prune_cli.save = save
sys.argv = [sys.argv[0], *sys.argv[3:]]
prune_cli.main("mobilenet_v2")
"""


def test_a_full_disk_under_torchrun_stops_every_rank_with_one_line(disk, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = disk / "run"
    start = time.time()
    result = run_script(worker, ROOT, disk, *PRUNE, *KEEP, "--output-dir", out, torchrun=2,
                        expect=None, timeout=180,
                        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    line = (f"error: no space left on device while writing {out / prune_cli.STATE_FILE}; no "
            "partial file was left; free space and --resume")
    assert result.stderr.count(line) == 2, result.stderr[-3000:]  # rank 0 and rank 1
    assert "inline_container" not in result.stderr and "prune_cli.py" not in result.stderr
    assert time.time() - start < 120
