"""Mixing weights of the units, applied to a full-width network by forward hooks.

For a unit with N channels and a selection S (a multiset: Algorithm 1 allows a channel to be
picked again), the subnetwork replaces the layer's sum_{j in [N]} sigma_j by

    f_S = (N / |S|) * sum_{j in S} sigma_j  =  sum_j w_j sigma_j,  w_j = N * count_j / |S|,

which is the paper's f_S = (1/|S|) sum_{j in S} sigma_j once the pretrained layer is read as
f = (1/N) sum_j N sigma_j. With S = [N] (every channel once) all w_j = 1: the dense network is
reproduced exactly. With S empty the unit contributes nothing.
"""

import torch
from torch import nn

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
    one multiply.
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

    def _input_hook(self, name: str):
        def hook(module, args):
            return (_scale_channels(args[0], self.weights[name]), *args[1:])

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

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
