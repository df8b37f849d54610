"""Slim = masked, checked: the slim network must compute the masked network's function.

Folding the multipliers into weights (``pruning.slim``) is exact in real arithmetic only when every
unit is declared right: each module that reads a unit's channels is in its channel space or its
gates. A wrong declaration gives a slim network that silently differs from the one selection
scored, so ``verify_slim`` compares both in float64, where rounding cannot hide it, and raises
``SlimMismatch`` naming the unit.
"""

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from pruning.masks import Masks
from pruning.slim import slim_model
from pruning.units import Unit

T = TypeVar("T")


@torch.no_grad()
def float64_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` computed in float64; the model is returned to float32 (losslessly)."""
    model.double()
    try:
        return model(x.double())
    finally:
        model.float()


#: Slimming is exact when the slim network and the masked network, both computed in float64
#: (``verify_slim``), agree to this fraction of the largest |logit|. float64 rounding stays below
#: 1e-12 even where pruned residual streams carry activations far larger than the logits; a unit
#: declared wrongly (a squeeze-excitation gate left out, a reader missing from its channel space)
#: is off by 1e-6 to 1e-1 of the logits, even on a randomly initialized network.
SLIM_TOLERANCE = 1e-8


class SlimMismatch(Exception):
    """The slim network computes another function than the masked one it was made from."""


def slim_verification(slim_logits: torch.Tensor, masked_logits: torch.Tensor,
                      reference: torch.Tensor) -> dict[str, float]:
    """How far the slim network's float32 logits are from the masked network's.

    Folding the multipliers w_j = N c_j / |S| into weights is exact in real arithmetic, so any
    difference is float32 rounding. Its size relative to the logits depends on the network: a
    pruned residual stream whose multipliers compound can carry activations a thousand times the
    logits, and then the masked network itself is off from its float64 value by more than 1e-4
    of the largest logit. So both are also compared with the masked network in float64
    (``reference``): slimming is exact up to rounding when the slim error is of the order of the
    masked network's own. Whether it is exact at all is ``verify_slim``'s float64 check.
    """
    return {
        "max_abs_diff_slim_vs_masked": (slim_logits - masked_logits).abs().max().item(),
        "max_rel_diff_slim_vs_masked": ((slim_logits - masked_logits).abs().max()
                                        / masked_logits.abs().max().clamp(min=1e-30)).item(),
        "slim_error_vs_float64": (slim_logits.double() - reference).abs().max().item(),
        "masked_error_vs_float64": (masked_logits.double() - reference).abs().max().item(),
    }


@torch.no_grad()
def verify_slim(model: nn.Module, units: list[Unit], weights: dict[str, torch.Tensor],
                x: torch.Tensor) -> tuple[nn.Module, dict[str, list[int]], dict[str, float | bool]]:
    """``slim_model``, checked: the slim network, its kept channels and its verification on the
    probe batch ``x``.

    The float32 numbers are ``slim_verification``'s. The check itself slims a float64 copy of
    ``model`` and compares it with the masked network in float64 on ``x``
    (``slim_vs_masked_float64``, relative to the largest |logit|): free of float32 rounding, it
    measures the declaration, not the arithmetic. Beyond ``SLIM_TOLERANCE`` it raises
    ``SlimMismatch`` naming the first unit whose selection alone already breaks it.
    ``model`` carries no hooks; call this in IEEE float32 (``pruning.precision.exact_float32``).
    """
    slim, kept = slim_model(model, units, weights)
    masked_logits, reference = _masked_logits(model, units, weights, x)
    verification: dict[str, float | bool] = dict(
        slim_verification(slim(x), masked_logits, reference))
    model64 = copy.deepcopy(model).double()
    error = _float64_error(model64, units, weights, x.double())
    verification.update(slim_vs_masked_float64=error, slim_tolerance=SLIM_TOLERANCE,
                        slim_exact=bool(error <= SLIM_TOLERANCE))
    if not verification["slim_exact"]:
        culprit = next((u.name for u in units if _float64_error(
            model64, units, _alone(units, weights, u), x.double()) > SLIM_TOLERANCE), None)
        where = (f"unit {culprit!r} is declared wrongly (a module that reads its channels is "
                 f"missing from its gates or its channel space)" if culprit else
                 "no unit alone explains it (check the shared channel spaces)")
        raise SlimMismatch(f"the slim network is not the masked one: in float64 they differ by "
                           f"{error:.1e} of the largest logit (tolerance {SLIM_TOLERANCE:.0e}); "
                           f"{where}")
    return slim, kept, verification


def _alone(units: list[Unit], weights: dict[str, torch.Tensor],
           unit: Unit) -> dict[str, torch.Tensor]:
    """``unit``'s selection with every other unit dense."""
    return {u.name: weights[u.name] if u is unit else torch.ones_like(weights[u.name])
            for u in units}


def _under_masks(model: nn.Module, units: list[Unit], weights: dict[str, torch.Tensor],
                 run: Callable[[], T]) -> T:
    """``run()`` with the mixing weights ``weights`` installed on ``model``, hooks removed after."""
    masks = Masks(model, units)
    try:
        for name, w in weights.items():
            masks.set_weights(name, w)
        return run()
    finally:
        masks.remove()


def _masked_logits(model: nn.Module, units: list[Unit], weights: dict[str, torch.Tensor],
                   x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked network's logits on ``x`` in ``model``'s dtype and in float64."""
    return _under_masks(model, units, weights, lambda: (model(x), float64_logits(model, x)))


def _float64_error(model64: nn.Module, units: list[Unit], weights: dict[str, torch.Tensor],
                   x64: torch.Tensor) -> float:
    """max |slim - masked| / max |masked| with both networks in float64 (``model64``)."""
    masked = _under_masks(model64, units, weights, lambda: model64(x64))
    slim, _ = slim_model(model64, units, weights)
    return ((slim(x64) - masked).abs().max() / masked.abs().max().clamp(min=1e-300)).item()
