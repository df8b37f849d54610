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

import torch
from torch import nn

from pruning.units import Unit, spaces_of


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
