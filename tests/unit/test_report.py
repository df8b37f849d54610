"""scripts/report.py: the markdown table and the MACs-vs-top-1 plot, from summary.json files alone.

The runs here are JSON written by hand in the formats of prune_cli.py and finetune_cli.py, so the
test needs no training.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from scripts import report
from tests.support.cli import run_script


def write(path: Path, summary: dict) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def prune_run(path: Path, method: str, macs: int, **args: str) -> Path:
    """A prune summary as prune_cli.py writes it (its args are strings)."""
    return write(path, {
        "arch": "mobilenet_v2", "method": method, "macs": macs, "params": macs // 10,
        "dense_macs": 300_000_000, "loss_pruned": 1.25, "loss_dense": 1.0, "top1_pruned": 61.5,
        "args": {"method": method, "match_kept": "None", "stop": "loss_gap", "epsilon": "0.05",
                 **args},
    })


def train_run(path: Path, macs: int, top1: float, pruned: Path | None, epochs: int = 150,
              from_scratch: bool = False) -> Path:
    """A fine-tune / training summary as finetune_cli.py writes it."""
    return write(path, {
        "arch": "mobilenet_v2", "macs": macs, "params": macs // 10, "top1": top1,
        "top5": top1 + 20, "epochs": epochs, "dense_macs": 300_000_000,
        "pruned": pruned is not None,
        "args": {"pruned": str(pruned / "pruned.pth") if pruned else None,
                 "from_scratch": from_scratch},
    })


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "table9"
    greedy = prune_run(root / "greedy" / "prune", "greedy", 220_000_000)
    uniform = prune_run(root / "uniform" / "prune", "uniform", 210_000_000, stop="fraction",
                        keep_fraction="0.7")
    magnitude = prune_run(root / "magnitude" / "prune", "magnitude", 220_000_000,
                          match_kept=str(greedy / "pruned.pth"))
    train_run(root / "greedy" / "finetune", 220_000_000, 71.55, greedy)
    train_run(root / "greedy" / "scratch", 220_000_000, 70.25, greedy, 300, from_scratch=True)
    train_run(root / "uniform" / "finetune", 210_000_000, 69.5, uniform)
    train_run(root / "magnitude" / "finetune", 220_000_000, 70.0, magnitude)
    train_run(root / "dense", 300_000_000, 72.0, None, epochs=0)
    return root


def test_report_writes_the_table_and_the_plot_from_json(runs, tmp_path):
    md, png = report.report(runs, tmp_path / "fig")
    assert (md.name, png.name) == ("table9.md", "table9_macs_top1.png")
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    mb = "| mobilenet_v2 | "
    assert (mb + "greedy, epsilon 0.05; fine-tuned | 220.0M | 22.00M | 71.55 | 91.55 | 150 | "
            "greedy/finetune |") in rows
    assert (mb + "greedy, epsilon 0.05; re-trained from scratch | 220.0M | 22.00M | 70.25 | "
            "90.25 | 300 | greedy/scratch |") in rows
    assert (mb + "uniform, keep 0.7; fine-tuned | 210.0M | 21.00M | 69.50 | 89.50 | 150 | "
            "uniform/finetune |") in rows
    assert any(r.startswith(mb + "magnitude, same kept channels; fine-tuned |") for r in rows)
    assert any(r.startswith(mb + "dense (evaluated) | 300.0M |") for r in rows)
    # the selections section: loss and top-1 before training, MACs as a share of the dense
    assert (mb + "greedy, epsilon 0.05 | 220.0M | 0.733 | 22.00M | 1.2500 | 61.50 | "
            "greedy/prune |") in rows
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_script_writes_into_out(runs, tmp_path):
    run_script("scripts/report.py", runs, "--out", tmp_path / "out", "--name", "smoke_table9",
               timeout=300)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "smoke_table9.md", "smoke_table9_macs_top1.png"]


def test_report_refuses_a_directory_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no summary.json"):
        report.report(tmp_path, tmp_path / "fig")


def test_report_writes_under_runs_by_default_never_into_fig(runs, tmp_path, monkeypatch):
    """runs/ is git-ignored: a report without --out leaves the tracked fig/ alone."""
    monkeypatch.chdir(tmp_path)
    report.main([str(runs)])
    assert sorted(p.name for p in (tmp_path / "runs" / "report").iterdir()) == [
        "table9.md", "table9_macs_top1.png"]
    assert not (tmp_path / "fig").exists()
