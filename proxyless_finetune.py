"""Fine-tune a pruned ProxylessNAS-Mobile, re-train it from scratch, or train a dense one
(Ye et al., 2020).

    python proxyless_finetune.py --dataset imagenet --data-path /data/imagenet \
        --pruned runs/proxyless_eps0.05/pruned.pth --output-dir runs/proxyless_eps0.05_ft
    torchrun --nproc_per_node=4 proxyless_finetune.py ...   # same options, global --batch-size

Defaults are the paper's recipe (Section 4.1): SGD, Nesterov momentum 0.9, weight decay 5e-5,
cosine learning rate from 0.01, 150 epochs, global batch 512. See scripts/runner/finetune_cli.py
for every option and the checkpoint format, README.md for the commands behind the paper's tables.
"""

import torchvision_compat  # noqa: F401
from scripts.runner.finetune_cli import main

if __name__ == "__main__":
    main("proxylessnas_mobile")
