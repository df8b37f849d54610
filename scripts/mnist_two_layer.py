"""Wolfe et al. (2023), Figure 1: two-layer networks on binarised MNIST, pruned by greedy forward
selection after 0-8K pre-training iterations, on class-balanced sub-datasets of 1K-50K images.

    python scripts/mnist_two_layer.py --data-path /data/mnist --device cuda     # the paper's grid
    python scripts/mnist_two_layer.py --data-path /data/mnist --quick           # seconds, on a CPU

MNIST is read from --data-path in torchvision's layout (``MNIST/raw/train-images-idx3-ubyte``
and ``train-labels-idx1-ubyte``, optionally ``.gz``, or the same files directly in the folder);
nothing is downloaded. Writes ``mnist_two_layer.json`` (every cell: N, sub-dataset size,
iteration, trial, pruned and dense accuracy) and ``mnist_two_layer.png`` (one heat map per N with
the red line) to --out. See ``scripts/two_layer/mnist.py`` for the experiment and for how the
paper's open points were read. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import DataError, load_mnist  # noqa: E402
from scripts.runner.arguments import (  # noqa: E402
    ArgumentParser,
    device,
    output_folder,
    positive_int,
    seed_below,
)
from scripts.two_layer.mnist import MnistSettings, quick_mnist_settings, run  # noqa: E402

#: The experiment seeds its generators with seed * 1_000_003 + N * 101 + trial
#: (``scripts.two_layer.mnist``), which must stay within torch's 64 bits.
MAX_MNIST_SEED = (2**63 - 1) // 1_000_003 - 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="mnist_two_layer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", type=Path, required=True,
                   help="folder with MNIST's IDX files (MNIST/raw/ inside it, or directly)")
    p.add_argument("--quick", action="store_true",
                   help="N in {40, 80}, sub-datasets of 100-300 images, 60 iterations")
    p.add_argument("--out", type=output_folder, default="runs/mnist_two_layer",
                   help="output folder (default: runs/mnist_two_layer)")
    p.add_argument("--device", type=device,
                   default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device for training and selection (default: cuda when available, "
                        "else cpu)")
    p.add_argument("--seed", type=seed_below(MAX_MNIST_SEED, " (seed x 1000003 + ... seeds "
                                             "torch's 64-bit generators)"), default=0,
                   help="seeds the initial networks, sub-datasets and mini-batch order "
                        "(default: 0)")
    p.add_argument("--trials", type=positive_int, default=None,
                   help=f"trials to average (default {MnistSettings.trials}, "
                        f"{quick_mnist_settings().trials} with --quick)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = quick_mnist_settings() if args.quick else MnistSettings()
    if args.trials is not None:
        s = replace(s, trials=args.trials)
    try:
        images, labels = load_mnist(args.data_path, "train")
        result = run(s, images, labels, args.out, args.device, args.seed,
                     progress=not args.no_progress)
    except DataError as e:
        print(f"mnist_two_layer.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for N in result["hidden"]:
        info = result["summary"][str(N)]
        print(f"N={N}: best pruned accuracy on {result['sizes'][-1]} images "
              f"{info['target_accuracy']:.4f}; red line (first iteration reaching it, per size "
              f"{result['sizes']}): {info['red_line']}")
    print(f"wrote {args.out}/mnist_two_layer.json and mnist_two_layer.png in "
          f"{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
