"""Table 2 of Ye et al. (2020): fine-tuning a pruned MobileNetV2 / MobileNetV3-Small versus
re-training it from scratch.

    python scripts/table2.py --data-path /data/imagenet --nproc-per-node 4
    python scripts/table2.py --smoke

For each of the paper's rows (MobileNetV2 at 220M and 170M MACs, MobileNetV3-Small at 49M) it
takes the pruned network of Table 1's epsilon sweep nearest those MACs as a fraction of the dense
MACs (pruning it first if the sweep has not run: the runs are shared with ``table1.py`` under
``runs/table1/``) and trains the same architecture twice:

* fine-tuned from the inherited weights: Table 1's fine-tune run of that network;
* re-trained from a new random initialization with Liu et al. (2019)'s Scratch-B budget
  (``--from-scratch``: epochs x min(dense MACs / pruned MACs, 2)), under ``runs/table2/``.

The fraction is the paper's: 49M of its 64M dense MobileNetV3-Small is 0.766 of this
repository's dense count (60.9M; no ptflops setting gives 64M), so the 49M row is matched to the
sweep run nearest 0.766 of dense, not to 49M.
"""

from __future__ import annotations

import launch
from launch import Context

#: The paper's rows: MACs, re-training top-1, fine-tune top-1.
PAPER = {"mobilenet_v2": [(220e6, 70.8, 71.6), (170e6, 69.0, 70.4)],
         "mobilenet_v3_small": [(49e6, 63.2, 65.8)]}


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", choices=tuple(PAPER), default=list(PAPER),
                   help="the networks to run (default: both); MAC targets are the paper's "
                        "fractions of its dense counts (MobileNetV3-Small: 49/64 of this "
                        "repository's 60.9M)")
    launch.add_arch_options(p, tuple(PAPER), shared=True)
    p.add_argument("--epochs", type=launch.positive_int,
                   help="fine-tune epochs, and the Scratch-B base (default: the paper's 150)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context("table2", args)
    # every family's weights first, as in table1.py
    weights = {arch: ctx.dense(arch, launch.arch_option(args, arch, "pretrained"))
               for arch in args.archs}
    rows = []
    for arch in args.archs:
        swept = launch.sweep(ctx, arch, launch.sweep_epsilons(ctx, args, arch), weights[arch])
        for paper_macs, paper_scratch, paper_finetune in PAPER[arch]:
            fraction = paper_macs / launch.PAPER_DENSE_MACS[arch]
            pick = launch.nearest(swept, fraction)
            cells = [arch, launch.macs(paper_macs), f"{fraction:.3f}", paper_scratch,
                     paper_finetune]
            if pick is None:
                ctx.note(f"{arch} {launch.macs(paper_macs)} ({fraction:.3f} of the dense MACs): "
                         "fine-tune and re-train the sweep run nearest this fraction once the "
                         "sweep above exists")
                rows.append([*cells, "—", "—", "—", "—", "—"])
                continue
            finetune = ctx.finetune(arch, pick, pick.out.parent / "finetune", args.epochs)
            scratch = ctx.finetune(arch, pick, ctx.dir / pick.out.parent.name / "scratch",
                                   args.epochs, "--from-scratch")
            ctx.run([finetune, scratch])
            ft, sc = finetune.summary() or {}, scratch.summary() or {}
            rows.append([*cells, launch.row_name(pick), launch.macs(ft.get("macs")),
                         f"{ft['macs'] / ft['dense_macs']:.3f}" if ft else "—",
                         f"{launch.pct(sc.get('top1'))} ({sc.get('epochs', '—')} ep)",
                         f"{launch.pct(ft.get('top1'))} ({ft.get('epochs', '—')} ep)"])
    table = launch.markdown(
        ["arch", "paper MACs", "paper of dense", "paper re-training", "paper fine-tune", "run",
         "MACs", "of dense", "re-training top-1 (Scratch-B epochs)", "fine-tune top-1 (epochs)"],
        rows)
    ctx.write_table([("Table 2: MobileNetV2 and MobileNetV3-Small, fine-tune vs re-train from "
                      "scratch", table + NOTE)])


NOTE = ("\n\nRows are matched to the paper's by MACs as a fraction of the dense network's "
        "(\"paper of dense\": the paper's MACs over its full model, 314M MobileNetV2, 64M "
        "MobileNetV3-Small). This repository counts 60.9M for the dense MobileNetV3-Small (no "
        "ptflops setting gives 64M), so its 49M row is 0.766 of the dense count, not 49M.")

if __name__ == "__main__":
    launch.main(build)
