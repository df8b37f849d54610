"""The prune script under torchrun: two gloo ranks share the candidates and prune as one process.

With ``--evaluator plain`` every rank runs exactly the forward passes a single process would
run for its share of the candidates, so the two-rank selection must equal the single-process
one bit for bit, and only rank 0 may write the outputs.
"""

import json

from scripts.runner import prune_cli
from pruning.checkpoint import load
from tests.support.cli import run_script

ARGS = ["--dataset", "synthetic", "--synthetic-images", "160", "--eval-images", "20",
        "--batch-size", "8", "--eval-batch-size", "20", "--workers", "0", "--no-progress",
        "--candidates", "2", "--device", "cpu", "--image-size", "16", "--stop", "fraction",
        "--keep-fraction", "0.01", "--evaluator", "plain"]


def test_torchrun_with_two_ranks_prunes_like_one_process(tmp_path):
    shared, single = tmp_path / "two_ranks", tmp_path / "one_process"
    result = run_script("resnet34_prune.py", *ARGS, "--output-dir", shared, torchrun=2)
    # both ranks finished (torchrun's exit code); only rank 0 printed
    assert result.stdout.count("wrote") == 1 and result.stdout.count("dense: loss") == 1
    reference = prune_cli.run("resnet34", [*ARGS, "--output-dir", str(single)])
    summary = json.loads((shared / "summary.json").read_text())
    assert summary["kept"] == reference["kept"]
    assert set(summary["latency"]["batches"]) == {"1", "8"}  # measured by rank 0, which writes
    assert summary["selections"] == reference["selections"] > 2 * 16
    counts, expected = load(shared / "pruned.pth")["cfg"], load(single / "pruned.pth")["cfg"]
    assert counts == expected
    assert len(list((shared / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert not (shared / prune_cli.STATE_FILE).exists()
