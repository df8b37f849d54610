"""Derive independent integer seeds from tuples of integers.

Several parts of the data package need a random stream that is a pure function of a few
integers: one synthetic image per ``(seed, split, index)``, one shuffle per ``(seed, pass)``.
Seeding a generator with ``seed + index`` would make neighbouring streams overlap (seed 0 image
1 == seed 1 image 0), so the integers are mixed with splitmix64 instead. The result depends only
on the inputs, not on Python's per-process hash randomisation, so it is the same in every
DataLoader worker, every rank and every run. ``seed_everything`` seeds the global generators
the scripts start from.
"""

import random

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Return a 63-bit seed that depends on every value and on their order.

    Suitable for ``torch.Generator().manual_seed``. Negative values are accepted (taken modulo
    2**64).
    """
    state = 0x2545F4914F6CDD1D
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy takes only 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
