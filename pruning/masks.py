"""Mixing weights of the units, applied to a full-width network by forward hooks.

For a unit with N channels and a selection S (a multiset: Algorithm 1 allows a channel to be
picked again), the subnetwork replaces the layer's sum_{j in [N]} sigma_j by

    f_S = (N / |S|) * sum_{j in S} sigma_j  =  sum_j w_j sigma_j,  w_j = N * count_j / |S|,

which is the paper's f_S = (1/|S|) sum_{j in S} sigma_j once the pretrained layer is read as
f = (1/N) sum_j N sigma_j. With S = [N] (every channel once) all w_j = 1: the dense network is
reproduced exactly. With S empty the unit contributes nothing.

A gated unit (``Unit.gates``, e.g. squeeze-excitation) also has its gates' inputs multiplied by
the 0/1 indicator w_j > 0, so a removed channel reads as zero wherever the slim network no longer
has it.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pruning.slim import fold, slim_model
from pruning.units import Unit


def mixing_weights(counts: torch.Tensor) -> torch.Tensor:
    """w_j = N * count_j / |S| (zero everywhere when nothing is selected yet).

    Computed on the counts' device without reading |S| back: no host sync on a GPU.
    """
    total = counts.sum().clamp(min=1).to(torch.float32)  # |S| = 0 only with all counts 0
    return counts.to(torch.float32) * (counts.numel() / total)


def _scale_channels(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * weights.to(dtype=x.dtype).view(shape)


class Masks:
    """Holds one weight vector per unit and keeps the hooks that apply it.

    Weights start at all ones (the dense network). ``set_counts`` installs a selection;
    ``remove`` takes the hooks off again. The weights live on the model's device, so a hook costs
    one multiply (a gate hook one comparison more).
    """

    def __init__(self, model: nn.Module, units: list[Unit]):
        self.units = {unit.name: unit for unit in units}
        device = next(model.parameters()).device
        self.weights = {u.name: torch.ones(u.size, device=device) for u in units}
        modules = dict(model.named_modules())
        self._handles = []
        for unit in units:
            site = modules[unit.site]
            if unit.side == "input":
                hook = self._input_hook(unit.name)
                self._handles.append(site.register_forward_pre_hook(hook))
            else:
                hook = self._output_hook(unit.name)
                self._handles.append(site.register_forward_hook(hook))
            for gate in unit.gates:
                hook = self._gate_hook(unit.name)
                self._handles.append(modules[gate].register_forward_pre_hook(hook))

    def _input_hook(self, name: str):
        def hook(module, args):
            return (_scale_channels(args[0], self.weights[name]), *args[1:])

        return hook

    def _gate_hook(self, name: str):
        def hook(module, args):
            kept = (self.weights[name] > 0).to(args[0].dtype)
            return (_scale_channels(args[0], kept), *args[1:])

        return hook

    def _output_hook(self, name: str):
        def hook(module, args, output):
            return _scale_channels(output, self.weights[name])

        return hook

    def set_counts(self, unit: str, counts: torch.Tensor) -> None:
        """Install the selection ``counts`` (on any device) as the unit's mixing weights."""
        self.set_weights(unit, mixing_weights(counts.to(self.weights[unit].device)))

    def set_weights(self, unit: str, weights: torch.Tensor) -> None:
        target = self.weights[unit]
        if weights.shape != target.shape:
            raise ValueError(f"unit {unit}: expected {target.numel()} weights, got {weights.shape}")
        target.copy_(weights.to(target.device))

    @contextmanager
    def folded(self, model: nn.Module) -> Iterator[None]:
        """Train ``model`` in the slim network's parametrization inside the block.

        A hook multiplying channel j by w_j = N c_j / |S| also multiplies the gradient of the
        weights that read channel j by w_j, so an SGD step moves their contribution w_j^2 times
        as far as the same step on the slim network, where w_j is folded into those weights
        (w_j = 96 for one kept channel of 96): with train-mode BatchNorm, one of the two causes
        of short fine-tunes between units wrecking the network (``--finetune-between``).
        Inside the block the multipliers are folded into each unit's site
        (``pruning.slim.fold``) and the masks only keep or drop channels (1 or 0); on exit they
        are divided out again and the masks restored. Dropped channels are left untouched.
        """
        scales, saved = {}, {}
        for name, unit in self.units.items():
            w = self.weights[name]
            scales[name] = torch.where(w > 0, w, torch.ones_like(w))
            saved[name] = w.clone()
            fold(model, unit, scales[name])
            w.copy_((saved[name] > 0).to(w.dtype))
        try:
            yield
        finally:
            for name, unit in self.units.items():
                fold(model, unit, 1 / scales[name])
                self.weights[name].copy_(saved[name])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def slim(self, model: nn.Module) -> tuple[nn.Module, dict[str, list[int]],
                                                dict[str, torch.Tensor]]:
        """Take the masks off ``model`` (the network they were installed on) and return its slim
        copy (``pruning.slim.slim_model``: dead channels removed, multipliers folded in), the kept
        channels per space, and a copy of the mixing weights the masks held (what a masked
        checkpoint stores). ``model`` is the plain full-width network again afterwards.
        """
        weights = {name: w.detach().clone() for name, w in self.weights.items()}
        self.remove()
        slim, kept = slim_model(model, list(self.units.values()), weights)
        return slim, kept, weights
