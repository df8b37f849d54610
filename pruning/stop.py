"""When to stop adding channels to a unit.

* ``LossGap`` -- the paper's rule (Section 4.1): stop "when the gap between the current loss and
  the loss of the original pretrained model is smaller than epsilon". Both losses are measured on
  the same fixed evaluation subset.
* ``Top1Tolerance`` -- the released code's rule: stop when top-1 on that subset reaches
  (1 - tol) times the top-1 the network had when this unit's selection started.
* ``MaxFraction`` -- stop once a fraction of the unit's channels is kept: a fixed-size budget.
* ``MatchKept`` -- stop at the kept count of another run, to compare methods at equal sizes.

Every rule is also capped by the selector at N selections per unit (N = unit width), so a unit
never ends up with more selections than the dense layer has channels.
"""

import math
from collections.abc import Callable

import torch

from pruning.units import Unit

# current (loss, top1) on the evaluation subset while ``unit`` is being selected
Measure = Callable[[Unit], tuple[float, float]]


class NonFiniteLoss(ValueError):
    """A loss became NaN or infinite: selection stops rather than continue on a broken network
    (a NaN loss gap never meets epsilon, so every later unit would keep all its channels)."""


def require_finite_parameters(model: torch.nn.Module, what: str) -> None:
    """``NonFiniteLoss`` naming the first parameter or buffer of ``model`` that holds a NaN or
    an infinity (one reduction per tensor: cheap next to an epoch or a selection)."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteLoss(f"{what}: {name} holds {bad} NaN or infinite values")


def require_finite(loss: float, what: str) -> float:
    """``loss``, or ``NonFiniteLoss("<what> is nan")``."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"{what} is {loss}")
    return loss


class StopRule:
    """Interface: ``start`` is called before a unit's first step, ``done`` after every step.

    ``last_loss`` is the loss the last ``done`` measured (None if it measures nothing).
    """

    def start(self, unit: Unit) -> None:
        pass

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        raise NotImplementedError

    def target(self, unit: Unit) -> int | None:
        """The number of distinct channels the unit is to keep, or None: no fixed size, the
        size is decided by the measurement (``done``). Fixed-size rules (``MaxFraction``,
        ``MatchKept``) override it; backward elimination and the fixed-size baselines
        (``pruning.baselines``) use it."""
        return None

    last_loss: float | None = None


class LossGap(StopRule):
    def __init__(self, epsilon: float, dense_loss: float, measure: Measure):
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon, self.dense_loss, self.measure = epsilon, dense_loss, measure

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        self.last_loss, _ = self.measure(unit)
        require_finite(self.last_loss, f"unit {unit.name}: the loss on the evaluation subset")
        return self.last_loss - self.dense_loss < self.epsilon


class Top1Tolerance(StopRule):
    def __init__(self, tol: float, measure: Measure):
        if not 0 <= tol < 1:
            raise ValueError(f"top1_tol must be in [0, 1), got {tol}")
        self.tol, self.measure = tol, measure
        self.reference = 0.0

    def start(self, unit: Unit) -> None:
        _, self.reference = self.measure(unit)

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        self.last_loss, top1 = self.measure(unit)
        require_finite(self.last_loss, f"unit {unit.name}: the loss on the evaluation subset")
        return top1 >= (1 - self.tol) * self.reference


class MaxFraction(StopRule):
    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def target(self, unit: Unit) -> int:
        return math.ceil(self.fraction * unit.size)

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        return int((counts > 0).sum()) >= self.target(unit)


class MatchKept(StopRule):
    """Stop at the number of channels another run kept in the same unit (equal-size baselines)."""

    def __init__(self, kept: dict[str, int]):
        self.kept = kept

    def target(self, unit: Unit) -> int:
        return self.kept[unit.name]

    def done(self, unit: Unit, counts: torch.Tensor) -> bool:
        return int((counts > 0).sum()) >= self.target(unit)
