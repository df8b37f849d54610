"""Argument checks shared by the prune and fine-tune command lines."""

import argparse
import math
import os
from pathlib import Path


def finite_float(text: str) -> float:
    """A float argument that must be a finite number: ``--lr inf`` once trained to NaN weights
    and exited 0. argparse names the flag in its error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_output_dir(out: Path) -> None:
    """``--output-dir`` must be a folder that can be written, checked before any work
    (``ValueError`` otherwise)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out}: exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output-dir {out}: {existing} is not writable")
