"""Which float format each part of a run computes in, and the record of it in summary.json.

On Ampere and later NVIDIA GPUs PyTorch runs float32 convolutions in TF32 by default (cuDNN's
``allow_tf32``): a 10-bit mantissa instead of float32's 23. Measured on an H100, that moved the
slim-vs-masked check of a pruned MobileNetV2 from 2.4e-05 to 3.8e-02. So the policy is:

* **exact parts run in IEEE float32** (``exact_float32``): the plain evaluator, the float32
  candidate losses (``--precision fp32``) and backward elimination's removals, the first-order
  (Frank-Wolfe) scores, the stop rule's measurement and the slim-vs-masked verification. TF32 is
  switched off around each of them and restored afterwards, whatever the process had set.
* **candidate losses** of the fast evaluator run in ``--precision`` (``CANDIDATE_PRECISIONS``):
  bf16 autocast or IEEE float32.
* **training** (fine-tuning, and the optional short fine-tune between units) may use TF32 for
  speed; the fine-tune scripts' ``--tf32/--no-tf32`` sets it (``set_tf32``).

The record of these choices in every summary.json is ``scripts.runner.machine.runtime_record``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

#: --precision of the candidate losses -> the autocast dtype (None: IEEE float32).
CANDIDATE_PRECISIONS: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp32": None}

Fn = TypeVar("Fn", bound=Callable[..., Any])


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_flags(matmul: bool, conv: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv


@contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 matmuls and convolutions inside the block (TF32 off), the flags restored
    after. Costs nothing on a CPU, where the flags have no effect."""
    saved = _flags()
    _set_flags(False, False)
    try:
        yield
    finally:
        _set_flags(*saved)


def exact(fn: Fn) -> Fn:
    """Decorator: ``fn`` runs under ``exact_float32``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exact_float32():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def set_tf32(allowed: bool) -> None:
    """Allow or forbid TF32 for float32 matmuls and convolutions from now on (training)."""
    _set_flags(allowed, allowed)
