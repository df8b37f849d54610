"""Fine-tune a pruned ResNet34, re-train it from scratch, or train a dense one (Ye et al., 2020).

    python resnet34_finetune.py --dataset imagenet --data-path /data/imagenet \
        --pruned runs/resnet34_eps0.05/pruned.pth --output-dir runs/resnet34_eps0.05_ft
    torchrun --nproc_per_node=4 resnet34_finetune.py ...   # same options, global --batch-size

Defaults are the paper's recipe (Section 4.1): SGD, Nesterov momentum 0.9, weight decay 5e-5,
constant learning rate 2.5e-4, 150 epochs, global batch 512. See scripts/runner/finetune_cli.py for
every option and the checkpoint format, README.md for the commands behind the paper's tables.
"""

import torchvision_compat  # noqa: F401
from scripts.runner.finetune_cli import main

if __name__ == "__main__":
    main("resnet34")
