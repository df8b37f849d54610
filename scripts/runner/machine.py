"""What a run's numbers came from: the device, whether TF32 was in effect, the library versions.

Every summary.json stores ``runtime_record``, so a table built from the files can say which
device and precision produced each number (the precision policy itself is ``pruning.precision``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def tf32_in_effect(device: torch.device) -> bool:
    """Whether float32 convolutions outside the exact parts may run in TF32 on ``device``:
    a CUDA device of compute capability 8.0 or newer, cuDNN's flag on, and no
    ``NVIDIA_TF32_OVERRIDE=0`` in the environment (which disables TF32 below PyTorch)."""
    if device.type != "cuda" or os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return False
    return torch.backends.cudnn.allow_tf32 and torch.cuda.get_device_capability(device)[0] >= 8


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from ``/proc/cpuinfo`` where there is one
    (``platform`` often knows only "x86_64", and a CPU time means little without the model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def runtime_record(device: torch.device, candidates: str | None = None) -> dict[str, Any]:
    """The machine and precision facts a summary.json needs to say what produced its numbers.

    ``candidates`` is the candidate-loss precision of a prune run (None for training runs).
    ``tf32`` is whether the parts outside the exact ones could run in TF32, read when called.
    """
    record: dict[str, Any] = {
        "device_name": device_name(device),
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "tf32": tf32_in_effect(device),
        "exact_parts": "IEEE float32 (TF32 off)",
    }
    if candidates is not None:
        record["candidate_precision"] = candidates
    return record
