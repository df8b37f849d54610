"""MACs and parameters with ptflops, the way the paper counts "FLOPs".

The paper's FLOPs are ptflops multiply-accumulates with its ``pytorch`` (module hook) backend:
its ResNet34 3.68G is exactly that count. ptflops' default backend has changed between releases
and the ``aten`` backend gives different numbers, so the backend is always named explicitly.
Counting happens on a copy of the unwrapped, uncompiled model in eval mode, so the caller's
model is untouched.
"""

import copy

import torchvision_compat  # noqa: F401  (ptflops imports torchvision)
from ptflops import get_model_complexity_info
from torch import nn

BACKEND = "pytorch"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def macs_and_params(model: nn.Module, image_size: int = 224) -> tuple[int, int]:
    """(MACs, parameters) for one 3 x image_size x image_size input."""
    counted = copy.deepcopy(unwrap(model)).cpu().eval()
    macs, params = get_model_complexity_info(
        counted, (3, image_size, image_size), as_strings=False,
        print_per_layer_stat=False, verbose=False, backend=BACKEND,
    )
    return int(macs), int(params)
