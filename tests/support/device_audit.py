"""Catch GPU-only device mistakes on a CPU-only machine: run the code on the ``meta`` device.

CI has no GPU, and code that mixes devices only fails where there are two: a tensor created
on the CPU inside a loop over CUDA data (the first H100 run crashed in ``evaluate`` on
``torch.tensor(y.numel())``), a CPU generator's indices used on CUDA tensors, or a per-candidate
``.item()`` that makes the GPU wait. ``meta`` is a second device every PyTorch build has: its
tensors carry shapes and dtypes but no data, so a model and a batch moved there run every
operation of a forward, backward or optimizer step without computing anything.

``DeviceAudit`` is a dispatch mode around such a run. It

* raises ``MixedDevices`` for any operation whose tensor arguments sit on more than one device
  (stricter than CUDA, which lets 0-dim CPU tensors through some operations but not others),
  including a ``copy_`` between devices, which is a hidden host-to-device transfer;
* counts the reads from the device to the host (``.item()``, ``.tolist()``, ``.cpu()``, ``int``
  of a tensor): each is a host sync on a GPU. A meta tensor has no value to read, so the read
  returns ones and the code goes on; the tests then assert that the number of reads does not
  grow with the number of batches or candidates;
* counts the explicit moves from the host to the device (``.to(device)``).
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
META = torch.device("meta")


class MixedDevices(RuntimeError):
    """An operation got tensors on different devices."""


class DeviceAudit(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []  # device -> host
        self.uploads = 0  # host -> device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device for t in tensors}
        if func is aten._local_scalar_dense.default and devices == {META}:
            self.reads.append("item")
            return False if args[0].dtype == torch.bool else 1
        if func is aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device") or args[0].device
            if source == META and target.type == "cpu":
                self.reads.append("to cpu")
                dtype = kwargs.get("dtype") or args[0].dtype
                return torch.ones(args[0].shape, dtype=dtype)
            if source.type == "cpu" and target == META:
                self.uploads += 1
        if len(devices) > 1:
            raise MixedDevices(f"{func} got tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)
