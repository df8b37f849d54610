"""Two-layer experiments of greedy forward selection, on a CPU in about a minute.

This is the quick start of the project: the command line of `scripts.two_layer`, which
reproduces on synthetic data the two-layer theory of Ye et al. (2020) (greedy forward selection
reaches loss O(1/n^2) in the subnetwork size n, random subsets O(1/n)) and of Wolfe et al.
(2023) (Lemma 1, the pre-training sweep of Figure 1, the distributed selection of Algorithm 3).
See that package's docstring for what each module holds.

`make demo` writes the three figures and toy_rates.json to runs/demo (git-ignored). The
committed copies in fig/ are produced by hand with `python toy_two_layer.py --out fig`; since
toy_rates.json records wall-clock timings, commit them only when the results change.
`--quick` is for the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch

from scripts.runner.arguments import MAX_SEED, ArgumentParser, output_folder, positive_int, seed
from scripts.two_layer.experiments import run
from scripts.two_layer.settings import Settings, quick_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=output_folder, default="runs/demo",
                   help="output folder (fig/ holds the committed copies)")
    p.add_argument("--quick", action="store_true",
                   help="small pre-training sweep and 2 seeds by default (for the tests)")
    p.add_argument("--seed", type=seed, default=0, help="first seed")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="number of seeds seed, seed+1, ... (default 5, or 2 with --quick)")
    p.add_argument("--workers", type=positive_int, default=Settings.workers,
                   help="processes V for the distributed selection (Algorithm 3) check")
    args = p.parse_args(argv)
    if args.workers > Settings.N:
        p.error(f"--workers must be at most N = {Settings.N}, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.seed + args.seeds - 1 > MAX_SEED:
        p.error(f"argument --seed: --seed {args.seed} with --seeds {args.seeds} goes past the "
                "largest seed, 2**63-1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = replace(quick_settings() if args.quick else Settings(), workers=args.workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give on a shared CPU
    try:
        result = run(s, list(range(args.seed, args.seed + args.seeds)), args.out)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps({k: result[k] for k in ("slopes", "slopes_std", "distributed")}, indent=1))
    print(f"wrote {args.out}/toyrate.png, forward_vs_backward.png, pretraining.png, "
          f"toy_rates.json in {result['seconds']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
