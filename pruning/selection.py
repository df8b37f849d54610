"""Layer-wise greedy forward selection (Algorithm 1 of Ye et al., 2020).

For each unit, from input to output: start from S = {} and repeat

    draw a fresh mini-batch D;  for every candidate k: l_k = loss of f_{S + {k}} on D;
    S <- S + {argmin_k l_k}

until the stop rule holds. Later units stay dense while a unit is selected; earlier units keep
their selection. By default every channel is a candidate (as in Algorithm 1); ``candidates=K``
scores a truly random K-subset instead.

Backward elimination (``pruning.baselines``) is the same loop in the other direction
(``search_unit`` with ``BACKWARD``).

By default each channel is selected at most once, so after N steps S = [N] and the dense layer
is reproduced exactly: the paper's loss-gap rule is then guaranteed to hold by the end of a
unit. ``replacement=True`` lets S be a multiset, as in the paper's two-layer theory (eq. (2));
a repeated channel gets a larger weight, but a unit capped at N selections may then end with
fewer than N distinct channels and a loss above the dense one, never meeting the epsilon rule
(seen on a trained MobileNetV2's first unit).

Randomness is keyed to the unit's position (candidate subsets) and to the number of batches drawn
so far (data), never to wall-clock state, so a run resumed after its last completed unit makes
exactly the choices an uninterrupted run makes.
"""

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from pruning.evaluators import CandidateEvaluator, require
from pruning.masks import Masks
from pruning.metrics import Batch
from pruning.stop import StopRule, require_finite
from pruning.units import Unit

StepLog = Callable[[Unit, int, int, float, float | None], None]


@dataclass(frozen=True)
class SelectionSettings:
    candidates: int | None = None  # K random candidates per step; None scores all
    replacement: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.candidates is not None and self.candidates < 1:
            raise ValueError(
                f"candidates must be >= 1 (or None for all), got {self.candidates}")


def unit_seed(seed: int, unit_index: int) -> int:
    """The generator seed of the unit at position ``unit_index`` (its random candidate subsets).

    ``seed * 1_000_003 + unit_index``: saved runs and tests depend on these exact draws, so the
    formula must not change (it is not ``data.seeding.mix_seed``).
    """
    return seed * 1_000_003 + unit_index


class BatchStream:
    """Mini-batches from one persistent loader, moved to ``device`` and counted.

    ``drawn`` is the number of batches consumed since the start of the run (including those of a
    run being resumed), which is all a deterministic sampler needs to continue where it stopped.

    ``prefetch`` (default: on for a CUDA ``device``, off otherwise) takes the next batch from the
    loader as soon as the current one is handed out and starts its copy to the device, so the
    copy runs while the current step computes. On CUDA the copy is issued ``non_blocking`` on a
    side stream (from pinned memory when the loader pins, as the prune scripts' loader does on
    CUDA); the consumer's stream waits for it when the batch is handed out, and the batch is
    marked as used on that stream for the caching allocator. Elsewhere the "copy" is the plain
    ``.to(device)`` (a no-op on the CPU), so prefetching only reorders work; it is off by default
    there and kept for tests of the bookkeeping. The batch in flight is not counted in ``drawn``:
    a run resumed at ``start_batch = drawn`` draws it again, exactly as an uninterrupted run
    consumes it next.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, drawn: int = 0,
                 prefetch: bool | None = None):
        self._iterator = iter(loader)
        self.device = torch.device(device)
        self.drawn = drawn
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        # CUDA only (the guarded branch; unreachable on a CPU-only machine): the copy stream
        self._stream = (torch.cuda.Stream(self.device)
                        if self.prefetch and self.device.type == "cuda" else None)
        self._pending: Batch | None = None  # the next batch, already on its way to the device
        self._ahead: BaseException | None = None  # what drawing the next batch raised

    def __iter__(self) -> Iterator[Batch]:
        return self

    def _load(self) -> Batch:
        x, y = next(self._iterator)
        if self._stream is None:
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.cuda.stream(self._stream):
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __next__(self) -> Batch:
        if not self.prefetch:
            batch = self._load()
            self.drawn += 1
            return batch
        if self._pending is None:
            if self._ahead is not None:  # raised where an unprefetched stream raises it
                raise self._ahead
            self._pending = self._load()
        batch, self._pending = self._pending, None
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)  # before the next copy is queued behind it
            for t in batch:
                t.record_stream(current)
        self.drawn += 1
        try:
            self._pending = self._load()
        except Exception as error:  # the end of a finite loader, a bad file: for the next call
            self._ahead = error
        return batch


@dataclass(frozen=True)
class Direction:
    """Which way ``search_unit`` walks: forward selection grows S from {} by the candidate whose
    addition gives the lowest loss; backward elimination shrinks S from all N channels by the one
    whose removal gives the lowest loss. The loop is the same, with the sign of the step flipped.
    """

    name: str
    start: int  # every channel's count before the first step
    sign: int  # +1: a step adds the chosen channel; -1: it removes it
    scores: str  # the evaluator's method that scores the candidates
    what: str  # the chosen candidate's loss, in a NaN message


FORWARD = Direction("forward", 0, +1, "losses", "the best candidate's loss")
BACKWARD = Direction("backward", 1, -1, "removal_losses", "the best removal's loss")
BACKWARD_NEEDS = "greedy backward elimination (method='backward')"


def search_unit(
    unit: Unit,
    masks: Masks,
    evaluator: CandidateEvaluator,
    batches: Iterator[Batch],
    stop: StopRule,
    settings: SelectionSettings,
    unit_index: int,
    log_step: StepLog | None = None,
    direction: Direction = FORWARD,
) -> torch.Tensor:
    """Greedy search for one unit; returns the selection counts (length N, sum |S|).

    Forward (Algorithm 1): add the best candidate until ``stop.done`` holds, at most N steps.
    Backward: with a size target (``stop.target``) remove channels until only that many remain;
    with a quality rule (loss gap, top-1 tolerance) remove channels while the rule still holds
    after the removal, undoing the first removal that breaks it. ``settings.replacement`` only
    applies forward.
    """
    forward = direction is FORWARD
    if not forward:
        require(evaluator, direction.scores, BACKWARD_NEEDS)
    generator = torch.Generator().manual_seed(unit_seed(settings.seed, unit_index))
    counts = torch.full((unit.size,), direction.start, dtype=torch.long)
    masks.set_counts(unit.name, counts)
    stop.start(unit)
    target = None if forward else stop.target(unit)
    # forward: at most N selections, never more than the dense layer has; backward: keep one
    for step in range(unit.size if forward else unit.size - 1):
        if target is not None and int((counts > 0).sum()) <= target:
            break
        if forward and settings.replacement:
            pool = torch.arange(unit.size)
        else:
            pool = torch.nonzero(counts == 0 if forward else counts > 0).flatten()
        if settings.candidates is not None and settings.candidates < len(pool):
            pool = pool[torch.randperm(len(pool), generator=generator)[: settings.candidates]]
        losses = getattr(evaluator, direction.scores)(unit, counts, pool, next(batches))
        position = int(torch.argmin(losses))  # a NaN anywhere is the minimum
        require_finite(float(losses[position]),
                       f"unit {unit.name}, step {step + 1}: {direction.what}")
        chosen = int(pool[position])
        counts[chosen] += direction.sign
        masks.set_counts(unit.name, counts)
        # backward with a size target measures nothing: the target alone ends the unit
        holds = stop.done(unit, counts) if forward or target is None else False
        if not forward and target is None and not holds:  # the removal broke the rule: undo
            counts[chosen] -= direction.sign
            masks.set_counts(unit.name, counts)
            break
        if log_step is not None:
            log_step(unit, step, chosen, float(losses.min()), stop.last_loss)
        if forward and holds:
            break
    return counts


#: Algorithm 1's step loop for one unit (``search_unit`` forward)
select_unit = functools.partial(search_unit, direction=FORWARD)


def layer_by_layer(
    units: list[Unit],
    masks: Masks,
    evaluator: CandidateEvaluator,
    batches: Iterator[Batch],
    stop: StopRule,
    settings: SelectionSettings,
    completed: dict[str, torch.Tensor] | None = None,
    after_unit: Callable[[Unit, dict[str, torch.Tensor]], None] | None = None,
    log_step: StepLog | None = None,
    direction: Direction = FORWARD,
) -> dict[str, torch.Tensor]:
    """``search_unit`` in ``direction`` on every unit, input to output; the counts of all.

    ``completed`` holds the counts of units finished by an earlier, interrupted run: they are
    installed as they were and skipped. ``after_unit`` runs after each newly completed unit
    (checkpointing, an optional short fine-tune) with all counts so far. Backward needs an
    evaluator with ``removal_losses`` (checked here, before any work).
    """
    if direction is not FORWARD:
        require(evaluator, direction.scores, BACKWARD_NEEDS)
    counts = dict(completed or {})
    for name, c in counts.items():
        masks.set_counts(name, c)
    for index, unit in enumerate(units):
        if unit.name in counts:
            continue
        counts[unit.name] = search_unit(
            unit, masks, evaluator, batches, stop, settings, index, log_step, direction
        )
        if after_unit is not None:
            after_unit(unit, counts)
    return counts


#: Algorithm 1 over all units (``layer_by_layer`` forward)
greedy_forward_selection = functools.partial(layer_by_layer, direction=FORWARD)
