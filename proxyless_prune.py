"""Prune a pretrained ProxylessNAS-Mobile by layer-wise greedy forward selection (Ye et al., 2020).

    python proxyless_prune.py --dataset imagenet --data-path /data/imagenet \
        --pretrained proxyless_mobile.pth --epsilon 0.05 --output-dir runs/proxyless_eps0.05

--pretrained takes the authors' checkpoint (mit-han-lab/proxylessnas, ``{'state_dict': ...}``) as
it is. Writes pruned.pth (slim weights + cfg) and summary.json to --output-dir; see
scripts/runner/prune_cli.py for every option and README.md for the settings behind the paper's
tables.
"""

import torchvision_compat  # noqa: F401
from scripts.runner.prune_cli import main

if __name__ == "__main__":
    main("proxylessnas_mobile")
