"""Shared test setup.

torchvision must import on the CPU-only torch (see torchvision_compat). The tests use tiny models,
where a second thread buys nothing and, on a loaded 2-core machine, can make a forward pass a
hundred times slower; one thread keeps them fast and their timing stable. The environment
variable is set before torch starts so subprocesses (scripts, torchrun) inherit it.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import torchvision_compat  # noqa: E402, F401

torch.set_num_threads(1)
