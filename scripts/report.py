"""A table and a MACs-vs-top-1 plot of every run under a directory, from the runs' JSON alone.

    python scripts/report.py runs/table1    # writes runs/report/table1.md, table1_macs_top1.png
    python scripts/report.py runs/table1 --out fig    # the same into the tracked fig/

The launchers write their own paper-shaped ``table.md``; this report is the generic view that
needs nothing but the ``summary.json`` files the prune and fine-tune scripts write, so it works on
any set of runs (also ones made by hand). A training run (fine-tune, re-training, dense training
or evaluation: its summary has ``top1``) is labelled by how its network was obtained, read from
the prune run its ``--pruned`` checkpoint came from: the selection method (greedy with its
epsilon, backward, magnitude, random, uniform; "same kept channels" for ``--match-kept``) and
whether it was fine-tuned or re-trained from scratch. Prune runs also get a table of their own
(MACs and the selection's loss and top-1 on the training subset, before any training).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.runner.arguments import ArgumentParser, input_folder, output_folder  # noqa: E402

MARKERS = "osD^v<>ph*"
#: The default output folder: under the git-ignored runs/, so a report never dirties the tree.
DEFAULT_OUT = Path("runs/report")
#: The numbers each kind of summary must hold: a training run's, a prune run's.
TRAIN_KEYS = ("macs", "params", "top1", "top5", "epochs")
PRUNE_KEYS = ("macs", "dense_macs", "params", "loss_pruned", "top1_pruned")


def warn(text: str) -> None:
    print(f"report.py: {text}", file=sys.stderr, flush=True)


def read_summary(path: Path) -> dict | None:
    """The summary at ``path``, or None (with one line on stderr naming the file) when it is not
    a JSON object holding the numbers its kind needs. A number that is not finite (a diverged
    run's nan top-1) is kept but listed in ``nonfinite``: flagged in the table, not plotted."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSONDecodeError: ValueError
        warn(f"skipped {path}: not JSON ({str(error).splitlines()[0]})")
        return None
    if not isinstance(summary, dict):
        warn(f"skipped {path}: holds a JSON {type(summary).__name__}, not an object")
        return None
    keys = PRUNE_KEYS if "loss_pruned" in summary else TRAIN_KEYS if "top1" in summary else ()
    missing = [k for k in keys if k not in summary]
    if missing:
        warn(f"skipped {path}: no {', '.join(missing)}")
        return None
    bad = [k for k in keys if isinstance(summary[k], bool)
           or not isinstance(summary[k], int | float)]
    if bad:
        warn(f"skipped {path}: {bad[0]} is {summary[bad[0]]!r}, not a number")
        return None
    if not isinstance(summary.get("args", {}), dict):
        warn(f"skipped {path}: args is a JSON {type(summary['args']).__name__}, not an object")
        return None
    summary["nonfinite"] = [k for k in keys if not math.isfinite(summary[k])]
    if summary["nonfinite"]:
        warn(f"{path}: " + ", ".join(f"{k} is {summary[k]}" for k in summary["nonfinite"])
             + " (not finite): flagged in the table, left out of the plot")
    return summary


def load_runs(root: Path) -> tuple[list[dict], list[dict]]:
    """(training runs, prune runs) under ``root``, each summary with its ``run`` directory;
    a summary.json that cannot be read is skipped with one line naming it."""
    train, prune = [], []
    for path in sorted(root.rglob("summary.json")):
        summary = read_summary(path)
        if summary is None:
            continue
        summary["run"] = path.parent
        if "loss_pruned" in summary:
            prune.append(summary)
        elif "top1" in summary:
            train.append(summary)
    return train, prune


def cell(value: float, text: str) -> str:
    """A table cell; a number that is not finite is flagged, not shown as a result."""
    return text if math.isfinite(value) else f"{value} (not finite)"


def fraction(part: float, whole: float) -> str:
    return cell(part / whole, f"{part / whole:.3f}") if whole else "—"


def selection(prune: dict[str, Any]) -> str:
    """How a prune run chose its channels, e.g. ``greedy, epsilon 0.05``."""
    args = prune.get("args", {})
    method = prune.get("method") or args.get("method", "greedy")
    if args.get("match_kept") not in (None, "None"):
        return f"{method}, same kept channels"
    if args.get("stop") == "fraction":
        return f"{method}, keep {args.get('keep_fraction')}"
    if args.get("stop") == "top1_tol":
        return f"{method}, top-1 tolerance {args.get('top1_tol')}"
    return f"{method}, epsilon {args.get('epsilon')}"


def label(run: dict[str, Any], prunes: dict[Path, dict]) -> tuple[str, str]:
    """(row label, plot series) of a training run."""
    args = run.get("args", {})
    if not run.get("pruned"):
        if run.get("epochs", 0) == 0:
            return "dense (evaluated)", "dense"
        return "dense (trained)", "dense"
    source = prunes.get(Path(str(args.get("pruned"))).parent.resolve())
    chosen = selection(source) if source else "pruned (selection run not found)"
    method = chosen.split(",")[0]
    if args.get("from_scratch"):
        return f"{chosen}; re-trained from scratch", f"{method}, from scratch"
    return f"{chosen}; fine-tuned", method


def fmt_macs(value: float) -> str:
    return cell(value, f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M")


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def report(root: Path, out: Path, name: str | None = None) -> tuple[Path, Path]:
    """Write ``<out>/<name>.md`` and ``<out>/<name>_macs_top1.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = name or root.resolve().name
    train, prune = load_runs(root)
    if not train and not prune:
        raise SystemExit(f"error: no summary.json under {root}")
    prunes = {p["run"].resolve(): p for p in prune}
    labelled = sorted(((label(r, prunes), r) for r in train),
                      key=lambda lr: (lr[1].get("arch", ""), lr[0][1], -lr[1]["macs"]))
    rows = [[r.get("arch", "—"), text, fmt_macs(r["macs"]),
             cell(r["params"], f"{r['params'] / 1e6:.2f}M"), cell(r["top1"], f"{r['top1']:.2f}"),
             cell(r["top5"], f"{r['top5']:.2f}"), r["epochs"], r["run"].relative_to(root)]
            for (text, _), r in labelled]
    sel_rows = [[p.get("arch", "—"), selection(p), fmt_macs(p["macs"]),
                 fraction(p["macs"], p["dense_macs"]),
                 cell(p["params"], f"{p['params'] / 1e6:.2f}M"),
                 cell(p["loss_pruned"], f"{p['loss_pruned']:.4f}"),
                 cell(p["top1_pruned"], f"{p['top1_pruned']:.2f}"), p["run"].relative_to(root)]
                for p in sorted(prune, key=lambda p: (p.get("arch", ""), selection(p), -p["macs"]))]
    text = (f"# {name}\n\n## Trained networks\n\n"
            + markdown(["arch", "method", "MACs", "params", "top-1", "top-5", "fine-tune epochs",
                        "run"], rows)
            + "\n\n## Selections (before training; loss and top-1 on the training subset)\n\n"
            + markdown(["arch", "selection", "MACs", "of dense", "params", "loss", "top-1", "run"],
                       sel_rows) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(text)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[str, list[dict]] = {}
    for (_, group), r in labelled:  # one curve per network and method, finite points only
        if not (math.isfinite(r["macs"]) and math.isfinite(r["top1"])):
            continue
        series.setdefault(f"{r.get('arch', '')} {group}".strip(), []).append(r)
    for i, (group, runs) in enumerate(sorted(series.items())):
        runs = sorted(runs, key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in runs], [r["top1"] for r in runs],
                marker="*" if group.endswith("dense") else MARKERS[i % len(MARKERS)],
                markersize=11 if group.endswith("dense") else 6,
                linestyle="none" if group.endswith("dense") else "-", label=group)
    ax.set_xscale("log")  # networks of different sizes side by side
    ax.set_xlabel("MACs (M, ptflops; log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{name}: MACs vs top-1 after training")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    png = out / f"{name}_macs_top1.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(text)
    print(f"wrote {md} and {png}")
    return md, png


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=input_folder, help="a directory of runs, e.g. runs/table1")
    p.add_argument("--out", type=output_folder, default=str(DEFAULT_OUT),
                   help=f"where to write (default: {DEFAULT_OUT}, git-ignored like every run; "
                        "--out fig for the tracked figures)")
    p.add_argument("--name", help="file name stem (default: the runs directory's name)")
    args = p.parse_args(argv)
    if args.name is not None and (not args.name.strip() or "/" in args.name):
        p.error(f"argument --name: a file name stem without '/', got {args.name!r}")
    report(args.runs, args.out, args.name)


if __name__ == "__main__":
    main()
