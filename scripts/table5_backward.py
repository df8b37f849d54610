"""Appendix 11 / Table 5 of Ye et al. (2020): greedy forward selection vs greedy backward
elimination, on ResNet34 and MobileNetV2.

    python scripts/table5_backward.py --data-path /data/imagenet --nproc-per-node 4
    python scripts/table5_backward.py --smoke

Both searches minimize the same loss with the same candidate evaluator; they differ only in
direction (``pruning/baselines.py``). To compare them at equal size, as the paper does ("under
fixed FLOPs constraints"), backward elimination removes channels until every unit keeps exactly
as many as the forward run kept (``--method backward --match-kept``), which gives equal MACs
and parameters. The forward runs are Table 1's (its epsilon sweep, the run nearest each MAC
target, fine-tuned; shared under ``runs/table1/``); the backward runs go under ``runs/table5/``.
The table shows the selection loss each search reached on the training subset before
fine-tuning (what both minimize) and the top-1 after fine-tuning.

Cost: a unit of N channels keeping a fraction f takes f N greedy steps of N candidates forward
but (1 - f) N steps over a shrinking pool backward, about f N^2 versus (1 - f^2) N^2 / 2
candidate evaluations: similar at the paper's sizes, but backward is the slower one whenever
most channels go (the smoke run keeps one channel per unit, which makes its backward run the
longest of all smoke runs).
"""

from __future__ import annotations

import launch
from launch import Context

#: MAC targets: Table 1's ResNet34 rows and the MobileNetV2 rows of Table 2. The provided text
#: of the paper does not include Table 5's numbers.
TARGETS = {"resnet34": (2.64e9, 2.07e9), "mobilenet_v2": (220e6, 170e6)}


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", choices=tuple(TARGETS), default=list(TARGETS),
                   help="the networks to run (default: both)")
    launch.add_arch_options(p, tuple(TARGETS), shared=True)
    p.add_argument("--epochs", type=launch.positive_int,
                   help="fine-tune epochs (default: the paper's 150)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context("table5", args)
    rows = []
    for arch in args.archs:
        pretrained = ctx.dense(arch, launch.arch_option(args, arch, "pretrained"))
        swept = launch.sweep(ctx, arch, launch.sweep_epsilons(ctx, args, arch), pretrained)
        seen = set()
        for target in TARGETS[arch]:
            pick = launch.nearest(swept, target / launch.PAPER_DENSE_MACS[arch])
            if pick is None:
                ctx.note(f"{arch} {launch.macs(target)}: eliminate backward to the kept channels "
                         "of the sweep run nearest these MACs once the sweep exists")
                rows.append([arch, launch.macs(target)] + ["—"] * 10)
                continue
            if pick in seen:
                continue
            seen.add(pick)
            forward = ctx.finetune(arch, pick, pick.out.parent / "finetune", args.epochs)
            row = ctx.dir / f"{arch}-backward-matched-{pick.out.parent.name}"
            backward = ctx.prune(arch, row / "prune", pretrained, "--method", "backward",
                                 "--match-kept", str(pick.out / "pruned.pth"))
            backward_ft = ctx.finetune(arch, backward, row / "finetune", args.epochs)
            ctx.run([forward, backward, backward_ft])
            for method, prune, finetune in (("forward (greedy)", pick, forward),
                                            ("backward, same kept channels", backward,
                                             backward_ft)):
                p, ft = prune.summary() or {}, finetune.summary() or {}
                rows.append([arch, launch.macs(target), method, launch.row_name(prune),
                             launch.macs(p.get("macs")), launch.params(p.get("params")),
                             f"{p['loss_pruned']:.4f}" if p else "—",
                             f"{p['loss_dense']:.4f}" if p else "—",
                             launch.pct(ft.get("top1")), launch.pct(ft.get("top5")),
                             ft.get("epochs", "—"), "—"])
    table = launch.markdown(
        ["arch", "target MACs", "method", "run", "MACs", "params",
         "selection loss (train subset)", "dense loss", "top-1", "top-5", "fine-tune epochs",
         "paper top-1"], rows)
    ctx.write_table([("Table 5: forward selection vs backward elimination at equal size", table
                      + "\n\nThe paper's Table 5 values are not in the provided text of the paper "
                        "(Appendix 11 of arXiv:2003.01794); its column is left empty.")])


if __name__ == "__main__":
    launch.main(build)
