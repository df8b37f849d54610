"""How fast the slim network runs next to the dense one: measured forward time, not MACs.

MACs (``pruning.flops``) say how much arithmetic a pruned network saves; whether that buys time
depends on the device, the batch and the layer shapes (a depthwise convolution with fewer channels
is not always proportionally faster). So every prune run times both networks' forward passes on
its own device and records them in ``summary.json`` under ``latency``.

How the time is taken, and why:

* **eval mode, ``torch.no_grad()``**: inference, as the network would be deployed; BatchNorm uses
  its running statistics and no autograd graph is recorded.
* **warm-up calls first**: the first calls pay for one-off work (memory allocation, oneDNN / cuDNN
  algorithm selection, lazy initialization) that a running service does not pay per request.
* **the median of repeated calls**: robust to the occasional slow call caused by another process
  on a shared machine; the two networks' calls alternate, so a slow period hits both.
* **bounded by time**: a ResNet34 forward of 128 images at 224 px takes seconds on a CPU, and
  the measurement must not dominate a prune run. Per batch size, the warm-up stops early once it
  has taken ``budget_s / 4``; the timed calls stop at ``max_repeats``, or once ``budget_s``
  seconds are spent and ``min_repeats`` are done, and in any case at ``3 * budget_s`` (after at
  least one call each). ``repeats`` in the record says how many there were.
* **synchronization on CUDA**: kernels run asynchronously, so ``torch.cuda.synchronize`` is called
  before the clock starts and before it is read, and only when the device is CUDA.
* **the precision it ran in is recorded**: float32 weights and inputs, no autocast; on an
  Ampere-or-newer GPU float32 convolutions may run in TF32 (``tf32``), as they do in training.
  The device name and the CPU thread count are recorded too: a CPU time means little without
  them.

Times are wall-clock milliseconds per forward call (``*_ms``) for the whole batch; ``speedup`` is
dense time / slim time, the number to quote (absolute CPU times vary with load, the ratio far
less).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scripts.runner.machine import device_name, tf32_in_effect


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    model(x)
    _synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def measure_latency(dense: nn.Module, slim: nn.Module, image_size: int,
                    batch_sizes: Sequence[int], device: torch.device | str, *,
                    warmup: int = 2, min_repeats: int = 3, max_repeats: int = 10,
                    budget_s: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Forward time of ``dense`` and ``slim`` on random ``(b, 3, image_size, image_size)``
    float32 inputs for each ``b`` in ``batch_sizes``; see the module docstring.

    Returns ``{"device", "device_name", "threads", "precision", "tf32", "mode", "warmup",
    "budget_s", "batches": {"<b>": {"dense_ms", "slim_ms", "speedup", "repeats"}}}``; the times
    are medians over ``repeats`` alternating calls. Both models are left in the mode they came in.
    """
    device = torch.device(device)
    modes = [(m, m.training) for m in (dense, slim)]
    for model, _ in modes:
        model.eval()
    generator = torch.Generator().manual_seed(seed)
    batches: dict[str, dict[str, Any]] = {}
    try:
        for batch in dict.fromkeys(int(b) for b in batch_sizes):  # unique, in order
            x = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
            warm = 0.0
            for _ in range(warmup):
                warm += sum(_timed_call(model, x, device) for model, _ in modes)
                if warm >= budget_s / 4:
                    break
            times: dict[str, list[float]] = {"dense": [], "slim": []}
            spent = 0.0
            while True:
                for name, model in (("dense", dense), ("slim", slim)):
                    seconds = _timed_call(model, x, device)
                    times[name].append(seconds)
                    spent += seconds
                repeats = len(times["dense"])
                if (repeats >= max_repeats or spent >= 3 * budget_s
                        or (spent >= budget_s and repeats >= min_repeats)):
                    break
            dense_s, slim_s = (statistics.median(times[k]) for k in ("dense", "slim"))
            batches[str(batch)] = {"dense_ms": 1e3 * dense_s, "slim_ms": 1e3 * slim_s,
                                   "speedup": dense_s / slim_s, "repeats": len(times["dense"])}
    finally:
        for model, training in modes:
            model.train(training)
    return {
        "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "precision": "float32, no autocast",
        "tf32": tf32_in_effect(device), "mode": "eval, no_grad", "warmup": warmup,
        "budget_s": budget_s, "batches": batches,
    }
