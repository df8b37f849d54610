"""Argument types shared by the prune and fine-tune command lines."""

import argparse
import math


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
