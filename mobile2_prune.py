"""Prune a pretrained MobileNetV2 by layer-wise greedy forward selection (Ye et al., ICML 2020).

    python mobile2_prune.py --dataset imagenet --data-path /data/imagenet --pretrained ... \
        --epsilon 0.05 --output-dir runs/mobile2_eps0.05

Writes pruned.pth (slim weights + cfg) and summary.json to --output-dir; see
scripts/runner/prune_cli.py for every option and README.md for the settings behind the paper's
tables.
"""

import torchvision_compat  # noqa: F401
from scripts.runner.prune_cli import main

if __name__ == "__main__":
    main("mobilenet_v2")
