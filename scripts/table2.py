"""Table 2 of Ye et al. (2020): fine-tuning a pruned MobileNetV2 versus re-training it from scratch.

    python scripts/table2.py --data-path /data/imagenet --nproc-per-node 4
    python scripts/table2.py --smoke

For each of the paper's two MobileNetV2 rows (220M and 170M MACs) it takes the pruned network of
Table 1's epsilon sweep nearest those MACs (pruning it first if the sweep has not run: the runs
are shared with ``table1.py`` under ``runs/table1/``) and trains the same architecture twice:

* fine-tuned from the inherited weights: Table 1's fine-tune run of that network;
* re-trained from a new random initialization with Liu et al. (2019)'s Scratch-B budget
  (``--from-scratch``: epochs x min(dense MACs / pruned MACs, 2)), under ``runs/table2/``.

The paper's MobileNetV3 row has no counterpart here (this repository has no MobileNetV3).
"""

from __future__ import annotations

import launch
from launch import Context

ARCH = "mobilenet_v2"
#: The paper's rows: MACs, re-training top-1, fine-tune top-1.
PAPER = [(220e6, 70.8, 71.6), (170e6, 69.0, 70.4)]


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    launch.add_arch_options(p, (ARCH,), shared=True)
    p.add_argument("--epochs", type=int,
                   help="fine-tune epochs, and the Scratch-B base (default: the paper's 150)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context("table2", args)
    pretrained = ctx.dense(ARCH, launch.arch_option(args, ARCH, "pretrained"))
    swept = launch.sweep(ctx, ARCH, launch.sweep_epsilons(ctx, args, ARCH), pretrained)
    rows = []
    for paper_macs, paper_scratch, paper_finetune in PAPER:
        pick = launch.nearest(swept, paper_macs / launch.PAPER_DENSE_MACS[ARCH])
        cells = [launch.macs(paper_macs), paper_scratch, paper_finetune]
        if pick is None:
            ctx.note(f"{launch.macs(paper_macs)}: fine-tune and re-train the sweep run nearest "
                     "these MACs once the sweep above exists")
            rows.append([*cells, "—", "—", "—", "—", "—"])
            continue
        finetune = ctx.finetune(ARCH, pick, pick.out.parent / "finetune", args.epochs)
        scratch = ctx.finetune(ARCH, pick, ctx.dir / pick.out.parent.name / "scratch",
                               args.epochs, "--from-scratch")
        ctx.run([finetune, scratch])
        ft, sc = finetune.summary() or {}, scratch.summary() or {}
        rows.append([*cells, launch.row_name(pick), launch.macs(ft.get("macs")),
                     f"{ft['macs'] / ft['dense_macs']:.3f}" if ft else "—",
                     f"{launch.pct(sc.get('top1'))} ({sc.get('epochs', '—')} ep)",
                     f"{launch.pct(ft.get('top1'))} ({ft.get('epochs', '—')} ep)"])
    table = launch.markdown(
        ["paper MACs", "paper re-training", "paper fine-tune", "run", "MACs", "of dense",
         "re-training top-1 (Scratch-B epochs)", "fine-tune top-1 (epochs)"], rows)
    ctx.write_table([("Table 2: MobileNetV2, fine-tune vs re-train from scratch", table
                      + "\n\nRows are matched to the paper's by MACs as a fraction of the dense "
                        "network's (paper: 314M).")])


if __name__ == "__main__":
    launch.main(build)
