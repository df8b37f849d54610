"""Faster candidate evaluators: the same losses as ``PlainEvaluator``, for a fraction of the work.

At each step of Algorithm 1 (Ye et al., 2020) the loss l_k of the network with f_{S+{k}} is
needed for every candidate k of the unit being selected. ``PlainEvaluator`` runs the whole
network once per candidate. Three observations make most of that work redundant:

1. **Cached prefix.** Everything before the unit's block is independent of k; it is computed
   once per step (``PrefixCachedEvaluator``, and the two below).
2. **Additive candidates.** The mixture enters the network linearly. With counts c (|S| = sum c)
   and a linear consumer W (projection conv, conv2; no bias on its input side), the consumer
   output with k added is

       W (w' * h) = (N / (|S| + 1)) * (A + W[:, k] h_k),   A = sum_j c_j W[:, j] h_j,

   because the mask weights are w'_j = N (c_j + [j = k]) / (|S| + 1) (``pruning.masks``). A and
   h are computed once per step; each candidate costs one rank-one update (``FastEvaluator``).
   A block-output unit (mask on the projection BN's output) is the same with W = identity:
   its masked output is (N / (|S| + 1)) * (c * h + e_k h_k).
   This holds exactly for the units a family declares additive (``Unit.additive``). A gated
   unit (squeeze-excitation, ``Unit.gates``) is not: adding k changes every channel's gate. For
   it the prefix and h are still computed once per step and h's spatial mean is pooled once; each
   candidate's gate is recomputed from the pooled vector with its removed channels zeroed (a few
   small matrix products), and the consumer runs on the c*B re-gated samples of a chunk.
3. **Candidates batched.** Eval-mode BatchNorm treats samples independently, so the updated
   consumer outputs of many candidates are stacked along the batch and the rest of the network
   (the ``tail``) runs once per chunk, optionally under bf16 autocast and channels_last (GPU).

Where to cut the network is architecture knowledge: it comes in as a ``UnitSplit`` per unit
(declared by each family in ``models/``; the contract is in ``pruning.units``), so this module
stays model-agnostic. ``FastEvaluator`` also gives the first-order (Frank-Wolfe) score of every
candidate from one backward pass, which ``pruning.shortlist`` uses to evaluate only the most
promising candidates exactly. The loop over a step's candidates is
``pruning.evaluators.TrialEvaluator``'s; each evaluator here says only how a chunk is scored.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pruning.evaluators import TrialEvaluator, Trials, masked_trials
from pruning.masks import Masks, mixing_weights
from pruning.metrics import Batch
from pruning.precision import exact
from pruning.units import Splitter, Unit, UnitSplit

Tensor = torch.Tensor


def stacked_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each of the c stacked B-sample copies in ``logits`` (c*B rows),
    as float64 on the logits' device (callers read all of a step's losses back at once)."""
    copies = logits.shape[0] // y.shape[0]
    per_sample = F.cross_entropy(logits.float(), y.repeat(copies), reduction="none")
    return per_sample.view(copies, y.shape[0]).mean(1).double()


class PrefixCachedEvaluator(TrialEvaluator):
    """Speed-up 1 alone: the block's input once per step, then the plain network from there.

    Each candidate still runs its whole block and everything after it through the ``Masks``
    hooks, like ``PlainEvaluator``; only the prefix is shared. Kept as the first rung of the
    benchmark's ladder and as a hook-only reference for the split's ``prefix``/``rest``.
    """

    def __init__(self, model: nn.Module, masks: Masks, splits: Splitter):
        self.model, self.masks, self.splits = model, masks, splits

    def trials(self, unit: Unit, counts: Tensor, sign: int,
               batch: Batch) -> AbstractContextManager[Trials]:
        x, y = batch
        split = self.splits(unit)
        z = split.prefix(x)
        return masked_trials(self.masks, unit, counts.to(x.device, copy=True), sign,
                             lambda: stacked_losses(split.rest(z), y))


@dataclass
class _Step:
    """What one greedy step shares across candidates: the residual input and the channels h."""

    split: UnitSplit
    skip: Tensor
    h: Tensor
    y: Tensor
    pooled: Tensor | None  # h's spatial mean (B, N, 1, 1), for a gated unit only


class FastEvaluator(TrialEvaluator):
    """Speed-ups 1-3: cached prefix, additive candidate updates, candidates batched.

    ``samples_per_pass`` bounds the samples of one tail forward: floor(samples_per_pass / B)
    candidates (at least one) are stacked per pass; it is the memory knob. ``amp`` (e.g.
    ``torch.bfloat16``, the prune scripts' ``--precision bf16``) runs the candidates' losses
    under autocast; without it they are IEEE float32 (TF32 off, ``pruning.precision``), as are
    the linear scores always. ``channels_last`` converts the model once and feeds it
    channels-last tensors (for GPUs). Without ``amp`` the losses equal ``PlainEvaluator``'s up
    to float32 rounding. The unit's mask is left as it was: the candidates' weights are applied
    here, never installed in ``Masks``.
    """

    def __init__(self, model: nn.Module, splits: Splitter, samples_per_pass: int = 256,
                 amp: torch.dtype | None = None, channels_last: bool = False):
        if samples_per_pass < 1:
            raise ValueError(f"samples_per_pass must be >= 1, got {samples_per_pass}")
        self.model, self.splits = model, splits
        self.samples_per_pass = samples_per_pass
        self.amp, self.channels_last = amp, channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, self.amp) if self.amp is not None else nullcontext()

    def _layout(self, t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _prepare(self, unit: Unit, batch: Batch) -> _Step:
        x, y = batch
        self.model.eval()
        split = self.splits(unit)
        h, skip = split.hidden(split.prefix(self._layout(x)))
        if split.consumer is not None and split.consumer.groups != 1:
            raise ValueError(f"unit {unit.name!r}: the consumer must be a dense conv")
        if h.shape[1] != unit.size:
            raise ValueError(f"unit {unit.name!r}: split gives {h.shape[1]} channels, "
                             f"expected {unit.size}")
        if unit.additive != (split.gate is None):
            raise ValueError(f"unit {unit.name!r}: a gated unit's split must give its gate, an "
                             f"additive unit's none (gates {unit.gates}, split gate "
                             f"{'given' if split.gate else 'None'})")
        if split.gate is not None and split.consumer is None:
            raise ValueError(f"unit {unit.name!r}: a gated unit needs a consumer conv")
        pooled = h.mean((2, 3), keepdim=True) if split.gate is not None else None
        return _Step(split, skip, h, y, pooled)

    def _mix(self, step: _Step, weights: Tensor) -> Tensor:
        """The consumer's output without bias for mixing weights ``weights`` (length N)."""
        if step.pooled is not None:
            return self._gated_mix(step, weights.unsqueeze(0))
        mixed = step.h * weights.to(step.h.dtype).view(1, -1, 1, 1)
        conv = step.split.consumer
        if conv is None:
            return mixed
        return F.conv2d(mixed, conv.weight, None, conv.stride, conv.padding, conv.dilation)

    def _with_bias(self, step: _Step, out: Tensor) -> Tensor:
        conv = step.split.consumer
        if conv is None or conv.bias is None:
            return out
        return out + conv.bias.to(out.dtype).view(1, -1, 1, 1)

    def _gated_mix(self, step: _Step, weights: Tensor,
                   kept: Tensor | None = None) -> Tensor:
        """Consumer outputs without bias of a gated unit for c weight vectors ``weights`` (c, N):
        (c*B) rows, candidate-major. Each candidate's gate reads the pooled channels with its
        removed ones zeroed, as the masks' gate hook makes the plain network do; ``kept`` (c, N)
        overrides that 0/1 indicator (the linear scores differentiate through it)."""
        h, conv = step.h, step.split.consumer
        weights = weights.to(h.dtype)
        kept = (weights > 0).to(h.dtype) if kept is None else kept.to(h.dtype)
        pooled = (step.pooled.unsqueeze(0) * kept[:, None, :, None, None]).flatten(0, 1)
        scale = step.split.gate(pooled).unflatten(0, (len(weights), h.shape[0]))
        mixed = (h.unsqueeze(0) * (scale * weights[:, None, :, None, None])).flatten(0, 1)
        return F.conv2d(mixed, conv.weight.to(mixed.dtype), None, conv.stride, conv.padding,
                        conv.dilation)

    def _gated_candidates(self, step: _Step, counts: Tensor, sign: int, ks: Tensor) -> Tensor:
        """Consumer outputs without bias for ``counts + sign * e_k``, each k in ``ks``."""
        trial = counts.to(step.h.device, torch.float32).repeat(len(ks), 1)
        trial[torch.arange(len(ks), device=trial.device), ks] += sign
        total = trial[0].sum().clamp(min=1)  # the same |S| +- 1 for every candidate
        return self._gated_mix(step, trial * (trial.shape[1] / total))

    def _contributions(self, step: _Step, base: Tensor, scale: float, sign: int,
                       ks: Tensor) -> Tensor:
        """scale * (base + sign * contribution of channel k) for each k in ``ks``.

        Returns the len(ks) consumer outputs stacked along the batch (len(ks) * B rows). For a
        1x1 consumer the contribution is the outer product W[:, k] h_k; for a larger kernel,
        channel k alone through the conv (one grouped conv for the whole chunk); with no
        consumer, h_k placed in channel k.
        """
        c, h, conv = len(ks), step.h, step.split.consumer
        picked = h.index_select(1, ks)  # (B, c, H, W)
        if conv is None:
            out = base.unsqueeze(0).repeat(c, 1, 1, 1, 1)
            rows = torch.arange(c, device=h.device)
            out[rows, :, ks] += sign * picked.transpose(0, 1)
            return (out * scale).flatten(0, 1)
        weight = conv.weight.index_select(1, ks).to(base.dtype)  # (Cout, c, kh, kw)
        pointwise = (conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                     and conv.padding == (0, 0))
        if pointwise:
            columns = weight.flatten(1).t() * (sign * scale)  # (c, Cout)
            out = torch.addcmul((base * scale).unsqueeze(0),
                                columns[:, None, :, None, None],
                                picked.transpose(0, 1)[:, :, None])
            return out.flatten(0, 1)
        grouped = weight.transpose(0, 1).reshape(-1, 1, *weight.shape[2:]) * sign
        single = F.conv2d(picked, grouped, None, conv.stride, conv.padding, conv.dilation, c)
        single = single.unflatten(1, (c, -1)) + base.unsqueeze(1)  # (B, c, Cout, H', W')
        return (single * scale).transpose(0, 1).flatten(0, 1)

    @contextmanager
    def trials(self, unit: Unit, counts: Tensor, sign: int, batch: Batch) -> Iterator[Trials]:
        """The additive (or re-gated) update of each chunk's candidates, then one tail forward
        for the chunk, under ``amp`` autocast when set (IEEE float32 otherwise, the base
        class's ``exact``). Backward elimination is the same update with the sign of the
        contribution and |S| - 1 in the scale."""
        device = batch[0].device
        with self._autocast(device):
            step = self._prepare(unit, batch)
            if step.pooled is not None:
                def consumer(ks: Tensor) -> Tensor:
                    return self._gated_candidates(step, counts, sign, ks)
            else:
                base = self._mix(step, counts.to(device, torch.float32))
                total = int(counts.sum()) + sign
                scale = unit.size / total if total > 0 else 0.0  # nothing left: the unit gives 0

                def consumer(ks: Tensor) -> Tensor:
                    return self._contributions(step, base, scale, sign, ks)

            def chunk_losses(ks: Tensor) -> Tensor:
                out = self._with_bias(step, consumer(ks))
                return stacked_losses(step.split.tail(step.skip, self._layout(out)), step.y)

            yield chunk_losses, max(1, self.samples_per_pass // step.y.shape[0])

    @exact
    def linear_scores(self, unit: Unit, counts: Tensor, candidates: Tensor,
                      batch: Batch) -> Tensor:
        """d loss / d w_k at the current weights, for each candidate k: the Frank-Wolfe score.

        With u(w) = sum_j w_j W[:, j] h_j the unit's output, <grad_u loss, W[:, k] h_k> =
        d loss / d w_k; it ranks the candidates exactly as the linear objective
        <grad loss(u_{k-1}), q> of the proof of Lemma 1 (Wolfe et al., 2023) ranks the vertices
        q_k = N W[:, k] h_k, so its argmin is the Frank-Wolfe vertex. One forward and one
        backward of the tail, at the batch's own size, always in IEEE float32: bf16 gradients
        rank close candidates poorly, and this pass is cheap next to the candidates' forwards.

        A gated unit's candidate also opens its own gate (kept_k: 0 -> 1 when c_k = 0), which
        moves every channel's gate. The score is then the first-order change of the loss along
        the candidate's whole move, divided by the step N / (|S| + 1) that w_k takes:
        d loss / d w_k + ((|S| + 1) / N) * d loss / d kept_k * [c_k = 0], with the 0/1 gate
        relaxed to a multiplier of the pooled channels. Without gates it is d loss / d w_k.
        """
        device = batch[0].device
        with torch.no_grad():
            step = self._prepare(unit, batch)
        selected = int(counts.sum())  # counts are on the CPU: no device read
        counts = counts.to(device)
        weights = mixing_weights(counts).requires_grad_(True)
        if step.pooled is None:
            out = self._with_bias(step, self._mix(step, weights))
            logits = step.split.tail(step.skip, self._layout(out))
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), step.y), weights)
            return grad.detach().double().cpu()[candidates]
        kept = (counts > 0).to(torch.float32).requires_grad_(True)
        out = self._with_bias(step, self._gated_mix(step, weights.unsqueeze(0),
                                                    kept.unsqueeze(0)))
        logits = step.split.tail(step.skip, self._layout(out))
        grad_w, grad_kept = torch.autograd.grad(F.cross_entropy(logits.float(), step.y),
                                                (weights, kept))
        opening = (counts == 0).to(grad_kept.dtype) * ((selected + 1) / unit.size)
        return (grad_w + opening * grad_kept).detach().double().cpu()[candidates]


def default_samples_per_pass(device: torch.device) -> int:
    """Samples per tail forward: a few thousand fill a GPU; on CPU larger passes gain little."""
    return 4096 if device.type == "cuda" else 256
