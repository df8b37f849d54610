"""Table 3 of Ye et al. (2020): MobileNetV2 x1.0, x0.75 and x0.5 pruned to about the same MACs.

    python scripts/table3.py --data-path /data/imagenet --nproc-per-node 4 \
        --pretrained 1.0=mobilenetv2_1.0-0c6065bc.pth \
        --pretrained 0.75=mobilenetv2_0.75-dace9791.pth \
        --pretrained 0.5=mobilenetv2_0.5-eaa6f9ad.pth
    python scripts/table3.py --smoke

The paper prunes each width to about 96M MACs (30% of the full MobileNetV2's 320M) and finds
that pruning the larger network gives the better small one. As in Table 1 the epsilon of each
row is unknown, so every width is pruned at a sweep of epsilons and the run nearest 30% of the
width-1.0 network's MACs is fine-tuned (``runs/table3/w<width>-greedy-eps<e>/``).
"""

from __future__ import annotations

import argparse

import launch
from launch import Context

ARCH = "mobilenet_v2"
WIDTHS = (1.0, 0.75, 0.5)
#: The paper's columns: original MACs, pruned MACs, top-1; the target is 96M / 320M.
PAPER = {1.0: (320e6, 96e6, 66.2), 0.75: (220e6, 96e6, 65.6), 0.5: (108e6, 97e6, 64.9)}
TARGET = 96e6 / 320e6
#: Sweeps bracketing 30% of the x1.0 MACs: a narrower network needs a smaller epsilon.
EPSILONS = {1.0: (0.05, 0.07, 0.1, 0.15, 0.2), 0.75: (0.02, 0.03, 0.05, 0.07, 0.1),
            0.5: (0.005, 0.01, 0.02, 0.03)}
SMOKE_EPSILONS = {1.0: (1.0,), 0.75: (1.0,), 0.5: (1.0,)}


def width_value(text: str) -> tuple[float, str]:
    """``WIDTH=VALUE`` with WIDTH one of 1.0, 0.75, 0.5."""
    width, sep, value = text.partition("=")
    try:
        w = float(width)
    except ValueError:
        w = None
    if not sep or w not in WIDTHS or not value:
        raise argparse.ArgumentTypeError(f"expected WIDTH=VALUE with WIDTH in {WIDTHS}, "
                                         f"got {text!r}")
    return w, value


def width_epsilons(text: str) -> tuple[float, tuple[float, ...]]:
    """``WIDTH=E1,E2``."""
    width, value = width_value(text)
    return width, launch.epsilon_list(value)


def parse_args(argv: list[str] | None = None):
    p = launch.parser(__doc__.split("\n")[0])
    p.add_argument("--pretrained", type=width_value, action="append", default=[],
                   metavar="WIDTH=WEIGHTS",
                   help="weights of each width (torchvision has x1.0 only: IMAGENET1K_V1, the "
                        "default for 1.0); without --smoke 0.75 and 0.5 are required")
    p.add_argument("--epsilons", type=width_epsilons, action="append", default=[],
                   metavar="WIDTH=E1,E2", help="a width's sweep (default: "
                   + "; ".join(f"{w}={','.join(map(str, e))}" for w, e in EPSILONS.items()) + ")")
    p.add_argument("--epochs", type=launch.positive_int,
                   help="fine-tune epochs (default: the paper's 150)")
    return p.parse_args(argv)


def build(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = Context("table3", args)
    given = dict(args.pretrained)
    sweeps = {**(SMOKE_EPSILONS if ctx.smoke else EPSILONS), **dict(args.epsilons)}
    swept, reference = {}, None
    for width in WIDTHS:
        pretrained = ctx.dense(ARCH, given.get(width), width)
        swept[width] = [ctx.prune(ARCH, ctx.dir / f"w{width}-greedy-eps{e:g}" / "prune",
                                  pretrained, "--epsilon", f"{e:g}", width=width)
                        for e in sweeps[width]]
        ctx.run(swept[width])
        if width == 1.0:
            reference = next((s.summary()["dense_macs"] for s in swept[width] if s.summary()),
                             None)
    rows, sweep_rows = [], []
    for width in WIDTHS:
        sweep_rows += [(f"x{width}", f"greedy, epsilon {e:g}", s)
                       for e, s in zip(sweeps[width], swept[width])]
        paper = PAPER[width]
        cells = [f"x{width}", launch.macs(paper[0]), launch.macs(paper[1]), paper[2]]
        pick = None
        if reference is not None:
            pick = min((s for s in swept[width] if s.summary()), default=None,
                       key=lambda s: abs(s.summary()["macs"] / reference - TARGET))
        if pick is None:
            ctx.note(f"x{width}: fine-tune the run nearest {TARGET:.0%} of the x1.0 MACs once "
                     "the sweeps above exist")
            rows.append([*cells] + ["—"] * 8)
            continue
        finetune = ctx.finetune(ARCH, pick, pick.out.parent / "finetune", args.epochs)
        ctx.run([finetune])
        ft = finetune.summary() or {}
        rows.append([*cells, launch.macs(pick.summary()["dense_macs"]), launch.row_name(pick),
                     launch.macs(ft.get("macs")),
                     f"{ft['macs'] / reference:.3f}" if ft else "—",
                     launch.params(ft.get("params")), launch.pct(ft.get("top1")),
                     launch.pct(ft.get("top5")), ft.get("epochs", "—")])
    table = launch.markdown(
        ["width", "paper original MACs", "paper pruned MACs", "paper top-1", "dense MACs", "run",
         "MACs", "of x1.0 dense", "params", "top-1", "top-5", "fine-tune epochs"], rows)
    ctx.write_table([
        ("Epsilon sweeps: epsilon -> MACs (selection only)", launch.sweep_table(sweep_rows)),
        ("Table 3: pruned from wider networks to the same MACs", table
         + f"\n\nEach width's row is its run nearest {TARGET:.0%} of the x1.0 network's MACs "
           "(the paper's 96M of 320M)."),
    ])


if __name__ == "__main__":
    launch.main(build)
