"""gRDA: generalized regularized dual averaging (Chao et al., 2020, "Directional Pruning of Deep
Neural Networks", NeurIPS).

The optimizer (the paper's gRDA equation)::

    w_{n+1} = S_{g(n, lr)}( w_0 - lr * sum_{k=0}^{n} grad f(w_k; Z_{k+1}) ),
    g(n, lr) = c * lr^{1/2} * (n * lr)^mu,
    S_t(x)   = sign(x) * max(|x| - t, 0)           (soft-thresholding, elementwise).

Each parameter keeps one accumulator ``a_{n+1} = w_0 - lr * sum_{k<=n} grad_k`` (the dual
average) and the weight is recomputed from it every step, ``w_{n+1} = S_{g(n, lr)}(a_{n+1})``.
Thresholded weights become *exact* zeros while their accumulator keeps moving, so a coordinate
can come back.
The paper's theorem (gRDA asymptotically performs directional pruning) needs ``c > 0`` and
``mu in (0.5, 1)``; ``c = 0`` is plain dual averaging, i.e. exactly SGD.

Conventions of this implementation (read these before comparing with other code):

* **Step index.** ``state["step"]`` counts the gradients accumulated into the parameter so far.
  The update that consumes the m-th gradient is the paper's ``n = m - 1``, so the first step uses
  ``g(0, lr) = 0`` (for ``mu > 0``): the first step is a plain SGD step, exactly as the paper's
  formula with ``sum_{k=0}^{0}`` says. The authors' PyTorch code (github.com/donlan2710/
  gRDA-Optimizer, ``grda_pytorch.py`` and ``ResNet50-ImageNet/grda_pytorch.py``) increments
  ``iter_num`` to 1 *before* the first update and thresholds at ``c*lr^{1/2+mu}*iter_num^mu``,
  i.e. at ``g(n + 1, lr)``: one step ahead of the paper. The relative difference
  ``((n+1)/n)^mu - 1`` vanishes after a few hundred steps; we follow the paper.
* **Counters are per parameter** (as in the authors' code): a parameter whose ``.grad`` is
  ``None`` in a step is skipped and its counter does not advance. ``w_0`` is captured lazily, at
  the first step that sees a gradient for the parameter (load pretrained weights before that).
* **Learning-rate schedules.** The closed form assumes a constant lr. With a schedule the
  accumulator is always ``a_{n+1} = w_0 - sum_k lr_k * grad_k`` (lr_k = the group's lr at step k).
  For the threshold two rules are available per param group (``threshold_mode``); both equal
  ``g(n, lr)`` when lr is constant:

  - ``"cumulative"`` (default; what the authors' current code does): the threshold is the sum of
    per-step increments at the lr of that step,
    ``tau_n = g(0, lr_0) + sum_{j=1}^{n} [g(j, lr_j) - g(j-1, lr_j)]``. This is the dual-averaging
    analogue of accumulating ``lr_k * grad_k``: both the gradient part and the l1 part are sums of
    per-step contributions. ``tau_n`` never decreases, so pruned weights stay pruned when the lr
    decays.
  - ``"current"``: ``tau_n = g(n, lr_n)``, the closed form evaluated at the current lr. When the lr
    decays (step decay, cosine to 0) this threshold collapses by ``lr^{1/2+mu}`` while the
    accumulator does not shrink, so pruned weights come back; with lr -> 0 the final model is
    dense. Provided for comparison only.

* **Which parameters are thresholded** is the caller's choice: each param group has
  ``threshold: bool``. ``threshold=False`` means dual averaging without threshold, i.e. SGD
  (bitwise equal to ``torch.optim.SGD`` without momentum or weight decay). The authors threshold
  every parameter, BN and biases included; :func:`grda_param_groups` defaults to thresholding
  only conv and linear weights (``threshold_bn_and_bias=True`` reproduces the authors).
* There is no momentum and no weight decay (the l1 threshold is the regularizer), as in the
  authors' code. Defaults ``lr=0.01, c=0.0, mu=0.7`` are the authors'. Their advice (as recorded
  in the project tracker): ``mu`` in {0.501, 0.51, 0.55} and ``0 < c <= 0.005``; their README's
  example uses ``c=0.005, mu=0.51``. A warning is issued if ``c > 0`` and ``mu`` is
  outside ``(0.5, 1)`` (the theorem's range). ``mu = 0`` gives the constant threshold
  ``c * lr^{1/2}`` from the first step on (``0**0 == 1``).
* gRDA owns the weight values: each step overwrites ``p`` with ``S(a)``, so in-place edits of a
  parameter between steps (masking, loading new weights) are lost unless the optimizer state is
  reset too. ``state_dict()``/``load_state_dict()`` carry the accumulators and counters, so
  saving both model and optimizer resumes exactly.

:func:`sparsity_report` returns the unstructured sparsity (fraction of exact zeros) per thresholded
layer and in total, as a JSON-serializable dict for ``summary.json``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from numbers import Real
from typing import Any

import torch
from torch import nn

__all__ = ["gRDA", "grda_param_groups", "grda_threshold", "soft_threshold", "sparsity_report"]

THRESHOLD_MODES = ("cumulative", "current")

# Modules whose ``weight`` is thresholded by default: conv and linear layers (and subclasses,
# e.g. LazyLinear, the QAT modules).
_PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def grda_threshold(n: int, lr: float, c: float, mu: float) -> float:
    """``g(n, lr) = c * lr^{1/2} * (n * lr)^mu`` (paper's gRDA equation); ``n = 0`` at step 1."""
    return c * math.sqrt(lr) * (n * lr) ** mu


def soft_threshold(x: torch.Tensor, tau: float) -> torch.Tensor:
    """``S_tau(x) = sign(x) * max(|x| - tau, 0)``, elementwise, as a new tensor."""
    return torch.sign(x) * torch.clamp(x.abs() - tau, min=0)


def _check_group(group: dict[str, Any], warn: bool = True) -> None:
    """Raise ``ValueError`` naming the offending hyperparameter; warn outside the theorem's mu."""
    lr, c, mu = group["lr"], group["c"], group["mu"]
    for name, value in (("lr", lr), ("c", c), ("mu", mu)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"Invalid {name}: {value!r} (expected a finite real number)")
    if not lr > 0:
        raise ValueError(f"Invalid lr: {lr!r} (expected lr > 0)")
    if c < 0:
        raise ValueError(f"Invalid c: {c!r} (expected c >= 0; c = 0 is plain SGD)")
    if mu < 0:
        raise ValueError(f"Invalid mu: {mu!r} (expected mu >= 0)")
    if not isinstance(group["threshold"], bool):
        raise ValueError(f"Invalid threshold: {group['threshold']!r} (expected True or False)")
    if group["threshold_mode"] not in THRESHOLD_MODES:
        raise ValueError(
            f"Invalid threshold_mode: {group['threshold_mode']!r} "
            f"(expected one of {THRESHOLD_MODES})"
        )
    if warn and c > 0 and not 0.5 < mu < 1:
        warnings.warn(
            f"gRDA with c={c} > 0 and mu={mu} outside (0.5, 1): the directional-pruning theorem "
            "(Chao et al., 2020) assumes mu in (0.5, 1); the authors advise mu in "
            "{0.501, 0.51, 0.55} and 0 < c <= 0.005.",
            UserWarning,
            stacklevel=3,
        )


class gRDA(torch.optim.Optimizer):  # lower-case g: the authors' class name
    """Generalized regularized dual averaging, ``w_{n+1} = S_{g(n,lr)}(w_0 - lr * sum_k grad_k)``.

    Args:
        params: parameters or param groups. A group may override ``lr``, ``c``, ``mu``,
            ``threshold`` and ``threshold_mode``; see :func:`grda_param_groups`.
        lr: learning rate ``gamma`` (> 0).
        c: threshold scale (>= 0); ``c = 0`` is exactly SGD. Authors' advice: ``0 < c <= 0.005``.
        mu: threshold growth exponent (>= 0); the theorem needs ``mu in (0.5, 1)``.
        threshold: soft-threshold the group's parameters (``False``: plain dual averaging = SGD).
        threshold_mode: ``"cumulative"`` (default) or ``"current"``; how the threshold follows a
            learning-rate schedule (identical for a constant lr), see the module docstring.

    State per parameter: ``accumulator`` (``w_0 - sum_k lr_k grad_k``, same dtype/device as the
    parameter), ``step`` (int, gradients accumulated so far; the latest update used the paper's
    ``n = step - 1``) and ``g`` (float, the threshold of the latest update; computed also for
    ``threshold=False`` groups, where it is not applied).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        c: float = 0.0,
        mu: float = 0.7,
        threshold: bool = True,
        threshold_mode: str = "cumulative",
    ) -> None:
        defaults = dict(lr=lr, c=c, mu=mu, threshold=threshold, threshold_mode=threshold_mode)
        _check_group(defaults, warn=False)  # each group is checked (and warned) when added
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after validating its hyperparameters (missing ones take the defaults)."""
        _check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("threshold", True)
            group.setdefault("threshold_mode", "cumulative")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One gRDA step for every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            if not lr >= 0:  # a scheduler may anneal to exactly 0, never below
                raise ValueError(f"Invalid lr: {lr!r} at step time (expected lr >= 0)")
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("gRDA does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("gRDA does not support complex parameters")

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["g"] = 0.0
                n = state["step"]  # the paper's n for this update
                acc: torch.Tensor = state["accumulator"]
                acc.add_(grad, alpha=-lr)

                if group["threshold_mode"] == "current" or n == 0:
                    g = grda_threshold(n, lr, c, mu)
                else:  # cumulative: add this step's increment g(n, lr_n) - g(n-1, lr_n)
                    g = state["g"] + grda_threshold(n, lr, c, mu) - grda_threshold(n - 1, lr, c, mu)
                state["g"] = g
                state["step"] = n + 1

                if group["threshold"] and g > 0:
                    p.copy_(soft_threshold(acc, g))
                else:
                    p.copy_(acc)
        return loss


def _split_parameters(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(conv/linear weights, everything else: biases, BN/norm affine params, ...), named."""
    prunable: set[int] = set()
    for module in model.modules():
        if isinstance(module, _PRUNABLE_MODULES) and isinstance(module.weight, nn.Parameter):
            prunable.add(id(module.weight))
    weights: list[tuple[str, nn.Parameter]] = []
    others: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():  # shared parameters appear once
        (weights if id(p) in prunable else others).append((name, p))
    return weights, others


def grda_param_groups(
    model: nn.Module, threshold_bn_and_bias: bool = False
) -> list[dict[str, Any]]:
    """Two param groups for :class:`gRDA`: conv/linear weights (thresholded), and the rest.

    The rest (biases, BatchNorm/other norm affine parameters, any other parameter) is not
    thresholded unless ``threshold_bn_and_bias=True``, which reproduces the authors' code (every
    parameter thresholded). Both groups are always returned (either may be empty); extra keys
    (``lr``, ``c``, ...) can be added to a group before passing the list to :class:`gRDA`.
    """
    weights, others = _split_parameters(model)
    return [
        {"params": [p for _, p in weights], "threshold": True},
        {"params": [p for _, p in others], "threshold": bool(threshold_bn_and_bias)},
    ]


def _count(tensors: Iterable[torch.Tensor]) -> dict[str, int | float]:
    numel = zeros = 0
    for t in tensors:
        numel += t.numel()
        zeros += int((t.detach() == 0).sum().item())
    return {"numel": numel, "zeros": zeros, "sparsity": zeros / numel if numel else 0.0}


def sparsity_report(model: nn.Module, optimizer: gRDA | None = None) -> dict[str, Any]:
    """Unstructured sparsity (fraction of exact zeros), JSON-serializable, for ``summary.json``.

    Reported layers: the parameters of ``optimizer``'s groups with ``threshold=True`` when an
    optimizer is given, otherwise the default selection of :func:`grda_param_groups` (conv and
    linear weights). Returns::

        {"layers": {param_name: {"numel": int, "zeros": int, "sparsity": float}, ...},
         "total": {...},            # over the reported layers
         "all_parameters": {...}}   # over every model parameter, BN and biases included
    """
    named = list(model.named_parameters())
    if optimizer is None:
        selected, _ = _split_parameters(model)
    else:
        ids = {id(p) for g in optimizer.param_groups if g["threshold"] for p in g["params"]}
        selected = [(name, p) for name, p in named if id(p) in ids]
    return {
        "layers": {name: _count([p]) for name, p in selected},
        "total": _count(p for _, p in selected),
        "all_parameters": _count(p for _, p in named),
    }
