"""Table 1 of Ye et al. (2020): MobileNetV2, ResNet34, MobileNetV3-Small and ProxylessNAS-Mobile
pruned to the paper's MACs on ImageNet.

    python scripts/table1.py --data-path /data/imagenet --nproc-per-node 4
    python scripts/table1.py --smoke            # the same pipeline in miniature, CPU, minutes

The paper varies epsilon, the loss-gap stop rule, to reach each row's MACs but does not say
which epsilon gave which row. So this launcher

1. prunes at every epsilon of a sweep (``runs/table1/<arch>-greedy-eps<e>/prune``; the
   epsilon -> MACs map is the table's first section), and, for the paper's "Uniform" rows,
   prunes MobileNetV2, MobileNetV3-Small and ProxylessNAS-Mobile to a range of uniform channel
   fractions;
2. fine-tunes, with the paper's recipe, the pruned network nearest each row's MACs (as a
   fraction of the dense MACs: the paper's row over the paper's full model, so
   MobileNetV3-Small's 49M is 49/64 = 0.766 of this repository's 60.9M dense count and
   ProxylessNAS-Mobile's 232M is 232/324 = 0.716 of its 336M; the table prints both fractions),
   plus, with ``--baselines``, magnitude and random selections with the same kept channels per
   unit as that network (``--match-kept``);
3. writes ``runs/table1/table.md`` with the paper's numbers beside this repository's.

MobileNetV3-Small starts from torchvision's IMAGENET1K_V1 weights; ProxylessNAS-Mobile has none in
torchvision: give the authors' ``proxyless_mobile.pth`` as ``--proxylessnas-mobile-pretrained``
(or leave it out of ``--archs``).
"""

from __future__ import annotations

import launch
from launch import Context, Step

#: The paper's rows (Table 1): MACs, top-1, params (M; None where not given).
PAPER = {
    "mobilenet_v2": {
        "dense": (314e6, 72.0, 3.5),
        "greedy": [(258e6, 71.9, 3.2), (220e6, 71.6, 2.9), (201e6, 71.2, 2.7),
                   (170e6, 70.4, 2.3), (152e6, 69.7, 2.2), (138e6, 68.8, 2.0),
                   (107e6, 66.9, 1.9)],
        "uniform": [(220e6, 70.4, 2.9), (106e6, 65.4, None)],
    },
    "resnet34": {
        "dense": (3.68e9, 73.4, 21.8),
        "greedy": [(2.64e9, 73.5, 17.2), (2.07e9, 72.9, 14.7)],
        "uniform": [],
    },
    # the paper's 64M and 324M are not this repository's dense counts (60.9M and 336M): the rows
    # are matched as fractions of dense (launch.PAPER_DENSE_MACS)
    "mobilenet_v3_small": {
        "dense": (64e6, 67.5, 2.5),
        "greedy": [(49e6, 65.8, 2.0)],
        "uniform": [(47e6, 65.4, 2.0)],  # Howard et al.'s width multiplier 0.75
    },
    "proxylessnas_mobile": {
        "dense": (324e6, 74.6, 4.1),
        "greedy": [(232e6, 74.0, 3.4)],
        "uniform": [(240e6, 72.9, 3.6)],
    },
}
#: Uniform channel fractions of the hidden units bracketing each family's Uniform rows' MACs
#: (at 224 px a fraction f keeps about 0.07 + 0.93 f of the dense MACs in all three families).
UNIFORM_FRACTIONS = {"mobilenet_v2": (0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.65, 0.7),
                     "mobilenet_v3_small": (0.6, 0.65, 0.7, 0.75, 0.8),
                     "proxylessnas_mobile": (0.6, 0.65, 0.7, 0.75, 0.8)}
SMOKE_UNIFORM_FRACTIONS = {"mobilenet_v2": (0.3, 0.6), "mobilenet_v3_small": (0.7,),
                           "proxylessnas_mobile": (0.7,)}
BASELINES = ("magnitude", "random")
#: The families whose rows get the baselines by default with --smoke (the paper's two main ones;
#: the newer families' rows alone keep the smoke short: their baselines take the same code path).
SMOKE_BASELINE_ARCHS = ("mobilenet_v2", "resnet34")


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", choices=tuple(PAPER), default=list(PAPER),
                   help="the networks to run (default: all four); MAC targets are the paper's "
                        "fractions of its dense counts, e.g. MobileNetV3-Small 49/64 and "
                        "ProxylessNAS-Mobile 232/324 of this repository's dense MACs")
    launch.add_arch_options(p, tuple(PAPER))
    p.add_argument("--baselines", nargs="*", choices=BASELINES, default=None,
                   help="also fine-tune these selections at each row's kept channels "
                        "(default: none; with --smoke: all, for MobileNetV2 and ResNet34)")
    p.add_argument("--epochs", type=launch.positive_int,
                   help="fine-tune epochs (default: the paper's 150)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context("table1", args)
    baselines = {arch: args.baselines if args.baselines is not None else (
        list(BASELINES) if ctx.smoke and arch in SMOKE_BASELINE_ARCHS else [])
        for arch in args.archs}
    sections: list[tuple[str, str]] = []
    sweep_rows, rows = [], []
    # every family's weights first: weights missing for one (ProxylessNAS-Mobile has none in
    # torchvision) are refused before the other families' runs, not hours into them
    weights = {arch: ctx.dense(arch, launch.arch_option(args, arch, "pretrained"))
               for arch in args.archs}
    for arch in args.archs:
        pretrained = weights[arch]
        dense_eval = ctx.evaluate(arch, pretrained, ctx.dir / f"{arch}-dense")
        ctx.run([dense_eval])
        epsilons = launch.sweep_epsilons(ctx, args, arch)
        swept = launch.sweep(ctx, arch, epsilons, pretrained)
        sweep_rows += [(arch, f"greedy, epsilon {e:g}", s) for e, s in zip(epsilons, swept)]
        uniform = []
        if PAPER[arch]["uniform"]:
            fractions = (SMOKE_UNIFORM_FRACTIONS if ctx.smoke else UNIFORM_FRACTIONS)[arch]
            uniform = [ctx.prune(arch, ctx.dir / f"{arch}-uniform-keep{f:g}" / "prune",
                                 pretrained, "--method", "uniform", "--stop", "fraction",
                                 "--keep-fraction", f"{f:g}") for f in fractions]
            ctx.run(uniform)
            sweep_rows += [(arch, f"uniform, keep {f:g}", s) for f, s in zip(fractions, uniform)]
        rows.append(("Full model", arch, PAPER[arch]["dense"], dense_eval))
        rows += fine_tune_rows(ctx, arch, pretrained, "greedy", swept, baselines[arch],
                               args.epochs)
        rows += fine_tune_rows(ctx, arch, pretrained, "uniform", uniform, [], args.epochs)
    sections.append(("Epsilon sweep: epsilon -> MACs (selection only, before fine-tuning)",
                     launch.sweep_table(sweep_rows)))
    sections.append(("Table 1: top-1 after fine-tuning (ImageNet val in full runs)",
                     table(rows) + NOTE))
    ctx.write_table(sections)


def fine_tune_rows(ctx: Context, arch: str, pretrained: str, method: str, pruned: list[Step],
                   baselines: list[str], epochs: int | None) -> list[tuple]:
    """Fine-tune the pruned run nearest each of the paper's ``method`` rows, and the baselines
    at its kept channels (once per pruned run, however many rows it is nearest); returns the
    table rows (label, arch, paper row, fine-tune step)."""
    label = "Ours (greedy)" if method == "greedy" else "Uniform"
    rows, seen = [], set()
    for target in PAPER[arch][method]:
        fraction = target[0] / launch.PAPER_DENSE_MACS[arch]
        pick = launch.nearest(pruned, fraction)
        if pick is None:
            ctx.note(f"{arch} {launch.macs(target[0])} ({fraction:.3f} of the dense MACs): "
                     f"fine-tune the {method} run nearest this fraction once the runs above "
                     "exist")
            rows.append((label, arch, target, None))
            continue
        row = pick.out.parent
        finetune = ctx.finetune(arch, pick, row / "finetune", epochs)
        ctx.run([finetune])
        rows.append((label, arch, target, finetune))
        for base in baselines if pick not in seen else []:
            base_dir = row.with_name(f"{row.name}-{base}-matched")
            prune = ctx.prune(arch, base_dir / "prune", pretrained, "--method", base,
                              "--match-kept", str(pick.out / "pruned.pth"))
            finetune = ctx.finetune(arch, prune, base_dir / "finetune", epochs)
            ctx.run([prune, finetune])
            rows.append((f"{base} (same kept channels)", arch, target, finetune))
        seen.add(pick)
    return rows


NOTE = ("\n\nRows are matched to the paper's by MACs as a fraction of the dense network's "
        "(\"paper of dense\": the paper's MACs over its full model, 314M MobileNetV2, 3.68G "
        "ResNet34, 64M MobileNetV3-Small, 324M ProxylessNAS-Mobile). This repository counts "
        "60.9M for the dense MobileNetV3-Small (no ptflops setting gives 64M) and 336M for "
        "ProxylessNAS-Mobile, so those targets are 49/64 = 0.766 and 232/324 = 0.716 of the "
        "dense count, not 49M and 232M. The paper's Uniform rows are width multipliers trained "
        "from scratch (MobileNetV2: Sandler et al.; MobileNetV3-Small x0.75: Howard et al., "
        "which this repository counts at 42.7M, 0.70 of dense; ProxylessNAS-Mobile: Cai et al.); "
        "here Uniform keeps the same fraction of every pruned unit and is fine-tuned like the "
        "other rows.")


def table(rows: list[tuple]) -> str:
    out = []
    for label, arch, (paper_macs, paper_top1, paper_params), step in rows:
        ft = (step.summary() if step is not None else None) or {}
        run = launch.row_name(step)
        target = paper_macs / launch.PAPER_DENSE_MACS[arch]
        frac = f"{ft['macs'] / ft['dense_macs']:.3f}" if ft else "—"
        out.append([arch, label, launch.macs(paper_macs), f"{target:.3f}", paper_top1,
                    "—" if paper_params is None else f"{paper_params}M", run,
                    launch.macs(ft.get("macs")), frac, launch.params(ft.get("params")),
                    launch.pct(ft.get("top1")), launch.pct(ft.get("top5")),
                    ft.get("epochs", "—")])
    return launch.markdown(
        ["arch", "method", "paper MACs", "paper of dense", "paper top-1", "paper params", "run",
         "MACs", "of dense", "params", "top-1", "top-5", "fine-tune epochs"], out)


if __name__ == "__main__":
    launch.main(build)
