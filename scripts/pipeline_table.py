"""The table and the figure of ``scripts/pipeline.py``, built from the results it collects from
the runs' ``summary.json`` files (``pipeline.collect``): one Markdown table per network (kept
channels, MACs, params, held-out top-1 before and after fine-tuning, measured speed-ups) and one
figure (MACs vs held-out top-1, before and after fine-tuning, one marker per method).
"""

from __future__ import annotations

from pathlib import Path

import launch


def speedup(latency: dict, batch: int) -> str:
    b = latency["batches"][str(batch)]
    return f"{b['speedup']:.2f}x ({b['dense_ms']:.1f} -> {b['slim_ms']:.1f} ms)"


def step_times(r: dict) -> str:
    """Where one network's time went, from its worker's ``timings.json``."""
    t, methods = r["step_seconds"], list(r["methods"])
    if not t:
        return ""
    groups = [("dense training", ("dense",)), ("greedy selection", ("prune-greedy",)),
              ("3 baselines", tuple(f"prune-{m}" for m in methods[1:])),
              ("4 evaluations", tuple(f"eval-{m}" for m in methods)),
              ("4 fine-tunes", tuple(f"finetune-{m}" for m in methods)),
              ("scratch", ("scratch-greedy",))]
    parts = [f"{name} {sum(t.get(k, 0.0) for k in keys):.0f} s" for name, keys in groups]
    return f"Time: {', '.join(parts)} ({sum(t.values()):.0f} s in all)."


def table_markdown(results: list[dict], meta: dict) -> str:
    lines = []
    for r in results:
        s, d = r["sizes"], r["dense"]
        lat = r["methods"]["greedy"]["latency"]
        lines += [f"### {r['title']}", "", r["description"] + ".", ""]
        header = ["method", "kept channels", "MACs", "params", "top-1 before fine-tuning",
                  f"top-1 after fine-tuning ({s['finetune_epochs']} ep)",
                  "speed-up, batch 1", f"speed-up, batch {s['select_batch']}"]
        rows = [["dense", "all", launch.macs(d["macs"]), launch.params(d["params"]),
                 launch.pct(d["top1"]), "—", "1", "1"]]
        for method, m in r["methods"].items():
            rows.append([method, f"{m['kept_channels']}/{m['total_channels']}",
                         launch.macs(m["macs"]), launch.params(m["params"]),
                         launch.pct(m["top1_before"]), launch.pct(m["top1_after"]),
                         speedup(m["latency"], 1), speedup(m["latency"], s["select_batch"])])
        greedy, sc = r["methods"]["greedy"], r["scratch"]
        rows.append([f"greedy's architecture from scratch (Scratch-B: {sc['epochs']} ep)",
                     f"{greedy['kept_channels']}/{greedy['total_channels']}",
                     launch.macs(sc["macs"]), launch.params(greedy["params"]), "—",
                     launch.pct(sc["top1"]), "—", "—"])
        lines += [launch.markdown(header, rows), ""]
        lines += [f"Top-1: percent of {s['val_images']} held-out images (the fine-tune script's "
                  f"validation split) at the end of training (dense: {d['epochs']} epochs). "
                  f"Speed-up: median dense / slim forward time per batch "
                  f"({lat['precision']}, {lat['mode']}) on {lat['device_name']}, "
                  f"{lat['threads']} thread(s), measured by each prune run "
                  "(`summary.json`'s `latency`). " + step_times(r), ""]
    load = meta.get("load_before") or ["?"] * 3, meta.get("load_after") or ["?"] * 3
    calls = f" in {meta['invocations']} calls (--resume)" if meta.get("invocations", 1) > 1 else ""
    lines += [f"`{meta['command']}`: {meta['wall_seconds'] / 60:.1f} min{calls} on {meta['cpu']} "
              f"({meta['cpus']} cores; the networks in {meta['jobs']} processes of "
              f"{meta['threads']} thread(s) at once); 1-minute load average "
              f"{load[0][0]} before, {load[1][0]} after; torch {meta['torch']}.", ""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """MACs vs held-out top-1 per network: hollow markers before fine-tuning, filled after,
    an arrow between them. The methods prune to the same MACs (``--match-kept``), so they are
    drawn side by side around that value, each at its own small offset."""
    from matplotlib.figure import Figure

    style = {"greedy": ("o", "tab:blue"), "magnitude": ("s", "tab:orange"),
             "random": ("^", "tab:green"), "uniform": ("D", "tab:purple")}
    fig = Figure(figsize=(5.6 * len(results), 4.4), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, r in zip(axes, results):
        dense = r["dense"]
        dodge = 0.025 * dense["macs"] / 1e6
        ax.axhline(dense["top1"], color="gray", lw=0.8, ls=":")
        ax.plot(dense["macs"] / 1e6, dense["top1"], "*", color="black", ms=13, label="dense")
        for i, (method, m) in enumerate(r["methods"].items()):
            marker, color = style[method]
            x = m["macs"] / 1e6 + (i - 1.5) * dodge
            ax.plot(x, m["top1_before"], marker, mfc="none", mec=color, mew=1.5, ms=9,
                    label=f"{method}, pruned")
            ax.plot(x, m["top1_after"], marker, color=color, ms=8,
                    label=f"{method}, fine-tuned")
            ax.annotate("", (x, m["top1_after"]), (x, m["top1_before"]),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8,
                                    "alpha": 0.7})
        sc = r["scratch"]
        ax.plot(sc["macs"] / 1e6 + 2.5 * dodge, sc["top1"], "x", color="tab:red", ms=9, mew=2,
                label="greedy's arch., from scratch")
        ax.set_title(f"{r['title']} (synthetic, {r['sizes']['image_size']} px): pruned to "
                     f"{r['methods']['greedy']['macs'] / dense['macs']:.0%} of the MACs",
                     fontsize=10)
        ax.set_xlabel("MACs (millions; the pruned networks, equal in MACs, drawn side by side)",
                      fontsize=8)
        ax.set_ylabel("held-out top-1 (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)
