"""Physical channel removal: the masked network rewritten as a smaller ordinary network.

After selection every unit has a weight vector w (``pruning.masks``); channels with w_j = 0 are
dead. ``slim_model`` returns a copy of the network in which

* every channel space keeps only the union of the channels its units selected (a residual
  stream keeps a channel while any block of the stage writes to it);
* every producing conv/BatchNorm and consuming conv/Linear is replaced by an ordinary
  ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` with fewer channels;
* the multipliers w_j are folded into weights: into the consuming layer's input columns for an
  input-side unit, into the BatchNorm affine (or conv rows) for an output-side unit. A channel kept
  in a shared space but not selected by one block gets w_j = 0 there, which zeroes that block's
  contribution exactly.

The result has no hooks and no masks, so ptflops counts what a deployment would run.
``slice_to_cfg`` applies the same slicing without folding, to rebuild the shapes of a saved slim
model from its cfg before its state_dict is loaded.
"""

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from pruning.units import Unit, spaces_of

T = TypeVar("T")


def kept_channels(units: list[Unit], weights: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """For each channel space, the sorted channels that some unit in it gives non-zero weight."""
    kept: dict[str, set[int]] = {}
    for unit in units:
        alive = torch.nonzero(weights[unit.name] != 0).flatten().tolist()
        kept.setdefault(unit.space.name, set()).update(alive)
    for name, channels in kept.items():
        if not channels:
            raise ValueError(f"channel space {name!r} would keep no channel")
    return {name: sorted(channels) for name, channels in kept.items()}


def _sliced_conv(conv: nn.Conv2d, out_idx, in_idx) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise:
        raise ValueError("only dense and depthwise convolutions can be sliced")
    if depthwise:
        idx = out_idx if out_idx is not None else in_idx
        out_idx = in_idx = idx
    out_idx = torch.arange(conv.out_channels) if out_idx is None else out_idx
    in_idx = torch.arange(conv.in_channels) if in_idx is None else in_idx
    groups = len(out_idx) if depthwise else 1
    new = nn.Conv2d(
        len(in_idx), len(out_idx), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        groups, conv.bias is not None, conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    weight = conv.weight[out_idx] if depthwise else conv.weight[out_idx][:, in_idx]
    new.weight.data.copy_(weight)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias[out_idx])
    return new


def _sliced_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
        device=bn.weight.device, dtype=bn.weight.dtype,
    )
    if bn.affine:
        new.weight.data.copy_(bn.weight[idx])
        new.bias.data.copy_(bn.bias[idx])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[idx])
        new.running_var.copy_(bn.running_var[idx])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _sliced_linear(linear: nn.Linear, in_idx) -> nn.Linear:
    new = nn.Linear(
        len(in_idx), linear.out_features, linear.bias is not None,
        device=linear.weight.device, dtype=linear.weight.dtype,
    )
    new.weight.data.copy_(linear.weight[:, in_idx])
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias)
    return new


def _slice_in_place(model: nn.Module, units: list[Unit], kept: dict[str, list[int]]) -> None:
    out_index: dict[str, torch.Tensor] = {}
    in_index: dict[str, torch.Tensor] = {}
    for space in spaces_of(units).values():
        if space.name not in kept:
            raise ValueError(f"cfg has no kept channels for channel space {space.name!r}")
        idx = torch.tensor(kept[space.name], dtype=torch.long)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= space.size:
            raise ValueError(
                f"cfg channels for {space.name!r} do not fit its {space.size} channels")
        for name in space.producers:
            out_index[name] = idx
        for name in space.consumers:
            in_index[name] = idx
    modules = dict(model.named_modules())
    for name in sorted(set(out_index) | set(in_index)):
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            new = _sliced_conv(module, out_index.get(name), in_index.get(name))
        elif isinstance(module, nn.BatchNorm2d):
            new = _sliced_bn(module, out_index[name])
        elif isinstance(module, nn.Linear):
            new = _sliced_linear(module, in_index[name])
        else:
            raise TypeError(f"cannot slice module {name!r} of type {type(module).__name__}")
        new.train(module.training)
        model.set_submodule(name, new)


@torch.no_grad()
def fold(model: nn.Module, unit: Unit, w: torch.Tensor) -> None:
    """Multiply the unit's channels by w inside the weights of its site (the consuming layer's
    input columns for an input-side unit, the BatchNorm affine or conv rows for an output-side
    one); ``w`` has one entry per channel the site has (of a sliced site: per kept channel)."""
    site = model.get_submodule(unit.site)
    w = w.to(site.weight.device, site.weight.dtype)
    if unit.side == "input":
        if isinstance(site, nn.Conv2d) and site.groups == 1:
            site.weight.mul_(w.view(1, -1, 1, 1))
        elif isinstance(site, nn.Linear):
            site.weight.mul_(w.view(1, -1))
        else:
            raise TypeError(f"unit {unit.name}: cannot fold input weights into {type(site)}")
    elif isinstance(site, nn.BatchNorm2d):
        site.weight.mul_(w)
        site.bias.mul_(w)
    elif isinstance(site, nn.Conv2d):
        site.weight.mul_(w.view(-1, 1, 1, 1))
        if site.bias is not None:
            site.bias.mul_(w)
    else:
        raise TypeError(f"unit {unit.name}: cannot fold output weights into {type(site)}")


@torch.no_grad()
def slim_model(
    model: nn.Module, units: list[Unit], weights: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, list[int]]]:
    """A hook-free copy of ``model`` with dead channels removed and multipliers folded in.

    ``model`` must carry no mask hooks (take them off with ``Masks.remove`` or pass a clean
    copy). Returns the slim model and the kept channels per space (the cfg's core).
    """
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        raise ValueError("slim_model needs a model without hooks: call Masks.remove() first")
    kept = kept_channels(units, weights)
    slim = copy.deepcopy(model)
    _slice_in_place(slim, units, kept)
    for unit in units:
        idx = torch.tensor(kept[unit.space.name], dtype=torch.long)
        fold(slim, unit, weights[unit.name].detach().cpu()[idx])
    return slim, kept


def slice_to_cfg(model: nn.Module, units: list[Unit], kept: dict[str, list[int]]) -> nn.Module:
    """Give a freshly built full-width model the shapes of a saved slim model (in place)."""
    with torch.no_grad():
        _slice_in_place(model, units, kept)
    return model


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
    from pruning.masks import Masks  # pruning.masks imports this module

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
