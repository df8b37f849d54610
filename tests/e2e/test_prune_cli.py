"""The prune scripts end to end on the synthetic dataset: outputs, resume, bad input."""

import json
import subprocess

import pytest
import torch

import models
from scripts.runner import prune_cli
from pruning.checkpoint import load
from tests.support.cli import run_main, run_script, start_script, tiny

#: MobileNetV2 x0.5 keeping 5% of every unit: the script's run below and the killed run's
MOBILE2 = ("--width", "0.5", "--stop", "fraction", "--keep-fraction", "0.05")


@pytest.fixture(scope="module")
def mobile2_run(tmp_path_factory):
    """``mobile2_prune.py`` run once as a process (its folder and the finished process), for
    the tests of what it wrote and as the uninterrupted run a killed run must equal."""
    out = tmp_path_factory.mktemp("mobile2") / "mb"
    return out, run_script("mobile2_prune.py", *tiny(out, *MOBILE2))


@pytest.fixture(scope="module")
def loss_gap_runs(tmp_path_factory):
    """ResNet34 under the loss-gap rule (epsilon 0.3, 16 px: 123 greedy steps), once with each
    evaluator: the summaries, each with its pruned.pth's cfg."""
    runs = {}
    for evaluator in ("fast", "plain"):
        out = tmp_path_factory.mktemp("loss-gap") / evaluator
        runs[evaluator] = prune_cli.run("resnet34", tiny(out, "--epsilon", "0.3", "--image-size",
                                                         "16", "--evaluator", evaluator))
        runs[evaluator]["cfg"] = load(out / "pruned.pth")["cfg"]
    return runs


def test_mobile2_prune_script_writes_a_slim_checkpoint_and_summary(mobile2_run):
    out, result = mobile2_run
    assert "MACs" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in ("arch", "macs", "params", "dense_macs", "dense_params", "kept", "loss_dense",
                "loss_pruned", "max_abs_diff_slim_vs_masked", "seconds"):
        assert key in summary
    assert summary["arch"] == "mobilenet_v2" and summary["macs"] < summary["dense_macs"]
    assert summary["params"] < summary["dense_params"]
    assert len(summary["kept"]) == 17 and summary["kept"]["features.17.hidden"].endswith("/480")
    assert summary["max_abs_diff_slim_vs_masked"] < 1e-4
    assert abs(summary["loss_pruned"] - summary["loss_pruned_masked"]) < 1e-4
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert not (out / prune_cli.STATE_FILE).exists()
    model, ckpt = models.load_pruned(out / "pruned.pth")
    assert ckpt.metrics["macs"] == summary["macs"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet34_prune_runs_with_the_loss_gap_rule(loss_gap_runs):
    summary = loss_gap_runs["fast"]
    assert summary["arch"] == "resnet34" and summary["macs"] < summary["dense_macs"]
    assert len(summary["kept"]) == 16
    # on an untrained network every unit stops early, each within epsilon of the dense loss
    assert summary["loss_pruned_masked"] - summary["loss_dense"] < 0.5 * 16


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_ends_with_the_same_selection(tmp_path, monkeypatch):
    extra = ("--width", "0.5", "--stop", "fraction", "--keep-fraction", "0.03",
             "--finetune-between", "0.1")
    prune_cli.run("mobilenet_v2", tiny(tmp_path / "straight", *extra))

    real_save = prune_cli.save
    saves = []

    def crash_after_five_units(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 5:
            raise Interrupt  # as if killed right after the fifth unit's checkpoint

    monkeypatch.setattr(prune_cli, "save", crash_after_five_units)
    with pytest.raises(Interrupt):
        prune_cli.run("mobilenet_v2", tiny(tmp_path / "resumed", *extra))
    monkeypatch.setattr(prune_cli, "save", real_save)
    state = load(tmp_path / "resumed" / prune_cli.STATE_FILE)
    assert len(state["state"]["completed"]) == 5

    with pytest.raises(ValueError, match="--resume"):  # refuses to silently start over
        prune_cli.run("mobilenet_v2", tiny(tmp_path / "resumed", *extra))
    with pytest.raises(ValueError, match="--seed"):  # refuses to continue a different run
        prune_cli.run("mobilenet_v2", tiny(tmp_path / "resumed", *extra, "--resume", "--seed", "1"))
    prune_cli.run("mobilenet_v2", tiny(tmp_path / "resumed", *extra, "--resume"))

    a, b = load(tmp_path / "straight" / "pruned.pth"), load(tmp_path / "resumed" / "pruned.pth")
    assert a["cfg"] == b["cfg"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


@pytest.mark.parametrize("extra,message", [
    (["--epsilon", "0"], "--epsilon"),
    (["--epsilon", "-1"], "--epsilon"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:0"], "--device"),
    (["--candidates", "0"], "--candidates"),
    (["--keep-fraction", "1.5"], "--keep-fraction"),
    (["--shortlist-exact-steps", "4"], "--shortlist-exact-steps needs --shortlist$"),
    (["--shortlist", "2", "--shortlist-exact-steps", "-1"], "--shortlist-exact-steps must be"),
])
def test_bad_arguments_are_refused_by_name(tmp_path, extra, message):
    if extra[-1] == "cuda:0" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=message):
        prune_cli.run("mobilenet_v2", tiny(tmp_path, *extra))


def test_missing_or_empty_data_folder_is_refused(tmp_path):
    argv = ["--dataset", "imagenet", "--output-dir", str(tmp_path / "o"), "--device", "cpu"]
    with pytest.raises(ValueError, match="--data-path"):
        prune_cli.run("resnet34", [*argv, "--data-path", str(tmp_path / "nowhere")])
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="--data-path"):
        prune_cli.run("resnet34", [*argv, "--data-path", str(tmp_path / "empty")])


def test_pretrained_file_of_another_architecture_fails_fast_with_a_clear_message(tmp_path):
    weights = tmp_path / "resnet34.pth"
    torch.save(models.build("resnet34", num_classes=10).state_dict(), weights)
    result = run_script("mobile2_prune.py", *tiny(tmp_path / "o", "--pretrained", str(weights)),
                        expect=None, timeout=300)
    assert result.returncode != 0
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert "mobilenet_v2" in result.stderr and "unexpected" in result.stderr.lower()


def test_baseline_methods_from_the_command_line_match_a_greedy_run(tmp_path):
    greedy = tmp_path / "greedy"
    prune_cli.run("resnet34", tiny(greedy, "--image-size", "16", "--stop", "fraction",
                                   "--keep-fraction", "0.02"))
    kept = json.loads((greedy / "summary.json").read_text())["kept"]
    for method in ("magnitude", "random", "uniform", "backward"):
        extra = ["--match-kept", str(greedy / "pruned.pth")]
        if method == "backward":  # eliminating from 512 down to 11 is long; keep most instead
            extra = ["--stop", "fraction", "--keep-fraction", "0.97"]
        summary = prune_cli.run("resnet34", tiny(tmp_path / method, "--image-size", "16",
                                                 "--method", method, *extra))
        assert summary["method"] == method
        if method != "backward":
            assert summary["kept"] == kept
        else:
            assert summary["kept"]["layer4.2.inner"] == "497/512"
    with pytest.raises(ValueError, match="--stop fraction"):
        prune_cli.run("resnet34", tiny(tmp_path / "bad", "--method", "random"))
    with pytest.raises(ValueError, match="--match-kept"):
        prune_cli.run("mobilenet_v2", tiny(tmp_path / "bad2", "--width", "0.5",
                                           "--match-kept", str(greedy / "pruned.pth")))


def test_a_killed_process_resumes_to_the_uninterrupted_selection(mobile2_run, tmp_path,
                                                                   capsys):
    """A real SIGKILL mid-run: only completed units survive, --resume finishes identically
    (to ``mobile2_run``, the same command run without interruption)."""
    import signal
    import time

    argv = tiny(tmp_path / "killed", *MOBILE2)
    process = start_script("mobile2_prune.py", *argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # kill right after the third unit's checkpoint
        if line.startswith("features.3.hidden: kept"):
            state = tmp_path / "killed" / prune_cli.STATE_FILE
            deadline = time.time() + 60
            while not state.exists() or len(load(state)["state"]["completed"]) < 3:
                assert time.time() < deadline
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "pruned.pth").exists()
    resumed = run_main(capsys, prune_cli.main, "mobilenet_v2", argv=[*argv, "--resume"])
    assert resumed.code == 0, resumed.err
    assert "resuming after" in resumed.out
    straight, _ = mobile2_run
    a, b = load(straight / "pruned.pth"), load(tmp_path / "killed" / "pruned.pth")
    assert a["cfg"] == b["cfg"]


def test_fast_and_plain_evaluators_make_the_same_loss_gap_run(loss_gap_runs):
    """The whole loss-gap run, fast (candidates from cached prefixes, the stop rule measured from
    each unit's cached block inputs) against plain (full forwards everywhere): same channels."""
    fast, plain = loss_gap_runs["fast"], loss_gap_runs["plain"]
    assert fast["selections"] == plain["selections"] > 2 * 16  # units stop after several steps
    assert fast["cfg"] == plain["cfg"]
    assert fast["loss_pruned"] == pytest.approx(plain["loss_pruned"], rel=1e-5)


def test_a_shortlist_exact_for_every_step_selects_what_exact_greedy_selects(tmp_path):
    """--shortlist-exact-steps E scores every candidate while a unit holds fewer than E channels:
    with E above every unit's kept count, even K=1 selects what exact greedy selects."""
    runs = {}
    for name, extra in (("exact", []), ("hybrid", ["--shortlist", "1",
                                                    "--shortlist-exact-steps", "100"])):
        runs[name] = prune_cli.run("mobilenet_v2", tiny(
            tmp_path / name, "--width", "0.5", "--image-size", "16", "--stop", "fraction",
            "--keep-fraction", "0.05", *extra))
        runs[name]["cfg"] = load(tmp_path / name / "pruned.pth")["cfg"]
    assert runs["hybrid"]["cfg"] == runs["exact"]["cfg"]
    assert runs["hybrid"]["args"]["shortlist_exact_steps"] == "100"
