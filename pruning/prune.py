"""A prune run as one library call: select every unit, slim the network, verify it.

    result = prune(model, units, PruneConfig(epsilon=0.05), batches, eval_batches)
    result.model          # the slim network, checked against the masked one
    result.kept_counts    # {unit name: kept channels}

``PruneConfig`` holds what decides the selection (method, stop rule, evaluator, precision,
shortlist, candidates, replacement, seed); ``prune`` builds the evaluator and the stop rule from
it, runs the selection unit by unit (``pruning.selection.layer_by_layer``, forward or backward;
the fixed-size baselines of ``pruning.baselines``), and slims the network with
``pruning.verify.verify_slim``, which raises ``SlimMismatch`` when the slim network is not the
masked one. What a command line adds (progress bars, checkpoints after every unit, resume, a
short fine-tune between units, a torchrun partition) comes in through keyword arguments; nothing
here parses arguments or writes files (``scripts/runner/prune_cli.py`` does both over this module).
"""

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pruning.baselines import FIXED_SIZE_METHODS, fixed_size_counts
from pruning.distributed_select import CandidatePartition, RankZeroStop
from pruning.evaluators import CandidateEvaluator, PlainEvaluator, require
from pruning.fast_evaluators import FastEvaluator, default_samples_per_pass
from pruning.masks import Masks
from pruning.metrics import Batch, SubsetMeasure, loss_and_top1
from pruning.precision import CANDIDATE_PRECISIONS, exact_float32
from pruning.selection import (BACKWARD, BACKWARD_NEEDS, FORWARD, SelectionSettings, StepLog,
                               layer_by_layer)
from pruning.shortlist import ShortlistEvaluator
from pruning.verify import verify_slim
from pruning.stop import (LossGap, MatchKept, Measure, MaxFraction, StopRule, Top1Tolerance,
                          require_finite)
from pruning.units import Splitter, Unit

METHODS = ("greedy", "backward", *FIXED_SIZE_METHODS)
STOPS = ("loss_gap", "top1_tol", "fraction")
EVALUATORS = ("plain", "fast")
PROBE_IMAGES = 64  # the slim check's probe batch: the float64 reference is slow at 224 px

UnitHook = Callable[[Unit, dict[str, torch.Tensor]], None]
#: a setting named in a ``ConfigError``'s text: ``<field>`` or ``<field=value>``
_SETTING = re.compile(r"<(\w+)(?:=([^<>]*))?>")


class ConfigError(ValueError):
    """A ``PruneConfig`` that cannot run, worded once for every caller.

    ``text`` names settings as ``<field>`` or ``<field=value>`` and starts with the field at
    fault (``field``). ``str()`` spells them as the dataclass does (``PruneConfig.shortlist
    needs method='greedy' ...``); ``render`` takes another spelling, so that the prune scripts
    give the same check in their flags (``--shortlist needs --method greedy ...``) instead of
    keeping a copy of it.
    """

    def __init__(self, text: str):
        self.text = text
        self.field = _SETTING.match(text)[1]
        super().__init__("PruneConfig." + self.render(
            lambda name, value: name if value is None else f"{name}={value!r}"))

    def render(self, spell: Callable[[str, str | None], str]) -> str:
        """The message with each setting spelled by ``spell(field, value or None)``."""
        return _SETTING.sub(lambda m: spell(m[1], m[2]), self.text)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"<{name}> must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class PruneConfig:
    """What decides a prune run's selection; checked on construction (``ConfigError``, a
    ``ValueError`` naming the field; the prune scripts word the same check in their flags).

    * ``method``: ``greedy`` (forward selection, the paper), ``backward`` (greedy backward
      elimination), or a fixed-size baseline (``magnitude``, ``random``, ``uniform``; they need
      ``stop="fraction"`` or ``match_kept``).
    * the stop rule: ``stop="loss_gap"`` stops a unit once its loss on the evaluation batches is
      within ``epsilon`` of the dense loss (the paper); ``"top1_tol"`` once top-1 is at least
      ``(1 - top1_tol)`` x the unit's start; ``"fraction"`` keeps ``ceil(keep_fraction N)``
      channels. ``match_kept`` ({unit name: kept count}, e.g. another run's) overrides ``stop``.
    * ``evaluator``: ``plain`` (a full forward per candidate; any network) or ``fast`` (the same
      losses from a cached prefix; needs ``splits``); ``precision`` ``bf16`` computes the fast
      evaluator's candidate losses under bf16 autocast; ``samples_per_pass`` its batch of
      candidate samples (None: ``default_samples_per_pass`` of the model's device).
    * ``shortlist`` K (greedy, fast): evaluate exactly only the K best of the first-order
      ranking, after the first ``exact_steps`` steps of each unit.
    * ``candidates`` K: score a random K-subset per step (None: all); ``replacement``: a channel
      may be selected again; ``seed``: the candidate subsets and the random baseline.
    """

    method: str = "greedy"
    stop: str = "loss_gap"
    epsilon: float = 0.05
    top1_tol: float = 0.02
    keep_fraction: float = 1.0
    match_kept: Mapping[str, int] | None = None
    evaluator: str = "plain"
    precision: str = "fp32"
    shortlist: int | None = None
    exact_steps: int = 0
    candidates: int | None = None
    replacement: bool = False
    seed: int = 0
    samples_per_pass: int | None = None

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        _choice("stop", self.stop, STOPS)
        _choice("evaluator", self.evaluator, EVALUATORS)
        _choice("precision", self.precision, tuple(CANDIDATE_PRECISIONS))
        if not self.epsilon > 0:
            raise ConfigError(f"<epsilon> must be > 0, got {self.epsilon}")
        if not 0 <= self.top1_tol < 1:
            raise ConfigError(f"<top1_tol> must be in [0, 1), got {self.top1_tol}")
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"<keep_fraction> must be in (0, 1], got {self.keep_fraction}")
        if self.match_kept is not None and not all(
                isinstance(k, int) and k >= 0 for k in self.match_kept.values()):
            raise ConfigError("<match_kept>: every kept count must be an int >= 0")
        if (self.method in FIXED_SIZE_METHODS and self.stop != "fraction"
                and self.match_kept is None):
            raise ConfigError(f"<method={self.method}> keeps a given number of channels: set "
                              "<stop=fraction> (with <keep_fraction>) or <match_kept>")
        if self.shortlist is not None:
            if self.shortlist < 1:
                raise ConfigError(f"<shortlist> must be >= 1, got {self.shortlist}")
            if self.method != "greedy" or self.evaluator != "fast":
                raise ConfigError("<shortlist> needs <method=greedy> and <evaluator=fast>")
        if self.exact_steps < 0:
            raise ConfigError(f"<exact_steps> must be >= 0, got {self.exact_steps}")
        if self.exact_steps and self.shortlist is None:
            raise ConfigError("<exact_steps> needs <shortlist>")
        if self.precision == "bf16" and self.evaluator == "plain":
            raise ConfigError(f"<precision={self.precision}> needs <evaluator=fast> (the plain "
                              "evaluator is the float32 reference)")
        if self.candidates is not None and self.candidates < 1:
            raise ConfigError(f"<candidates> must be >= 1, got {self.candidates} (without it "
                              "every candidate is scored)")
        if self.samples_per_pass is not None and self.samples_per_pass < 1:
            raise ConfigError(f"<samples_per_pass> must be >= 1, got {self.samples_per_pass}")

    @property
    def settings(self) -> SelectionSettings:
        return SelectionSettings(self.candidates, self.replacement, self.seed)


@dataclass(frozen=True)
class Step:
    """One step of a unit's search: the channel chosen (added forward, removed backward), the
    best candidate's loss on the step's mini-batch, and the stop rule's loss (None if the rule
    measures nothing)."""

    unit: str
    step: int
    channel: int
    batch_loss: float
    stop_loss: float | None


@dataclass
class PruneResult:
    """``counts``: each unit's selection counts; ``masks``: its mixing weights (N/|S| x counts);
    ``kept``: the kept channels per channel space; ``model``: the slim network;
    ``verification``: ``verify_slim``'s numbers; ``history``: the steps, in order (steps of
    units completed before a resume are not in it); ``dense`` / ``masked``: (loss, top-1) of the
    dense and the masked network on the evaluation batches; ``full_width``: the masked network's
    weights (with a fine-tune between units, not the dense ones)."""

    counts: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    kept: dict[str, list[int]]
    model: nn.Module
    verification: dict
    history: list[Step] = field(default_factory=list)
    dense: tuple[float, float] | None = None
    masked: tuple[float, float] | None = None
    full_width: dict | None = None

    @property
    def kept_counts(self) -> dict[str, int]:
        return {name: int((c > 0).sum()) for name, c in self.counts.items()}


def build_evaluator(config: PruneConfig, model: nn.Module, masks: Masks,
                    splits: Splitter | None = None, distributed: bool = False,
                    channels_last: bool | None = None) -> CandidateEvaluator:
    """``config.evaluator``, partitioned across torchrun ranks when ``distributed``, with the
    shortlist on top. ``channels_last`` (default: bf16 on a GPU) is the fast evaluator's layout.
    """
    if config.evaluator == "plain":
        evaluator = PlainEvaluator(model, masks)
    else:
        if splits is None:
            raise ValueError("PruneConfig.evaluator 'fast' needs splits (the network's cut, "
                             "e.g. models.splitter(arch, model)); use evaluator='plain'")
        device = next(model.parameters()).device
        if channels_last is None:
            channels_last = device.type == "cuda" and config.precision == "bf16"
        evaluator = FastEvaluator(model, splits,
                                  config.samples_per_pass or default_samples_per_pass(device),
                                  amp=CANDIDATE_PRECISIONS[config.precision],
                                  channels_last=channels_last)
    if distributed:
        evaluator = CandidatePartition(evaluator)
    if config.shortlist is not None:
        evaluator = ShortlistEvaluator(evaluator, config.shortlist, config.exact_steps)
    if config.method == "backward":
        require(evaluator, "removal_losses", BACKWARD_NEEDS)
    return evaluator


def build_stop(config: PruneConfig, dense_loss: float | None, measure: Measure | None,
               distributed: bool = False) -> StopRule:
    """The stop rule of ``config``; under torchrun rank 0's verdict holds for all ranks."""
    if config.match_kept is not None:
        return MatchKept(dict(config.match_kept))
    if config.stop == "fraction":
        return MaxFraction(config.keep_fraction)
    if config.stop == "loss_gap":
        stop = LossGap(config.epsilon, dense_loss, measure)
    else:
        stop = Top1Tolerance(config.top1_tol, measure)
    return RankZeroStop(stop) if distributed else stop


def select(config: PruneConfig, model: nn.Module, units: list[Unit], masks: Masks,
           evaluator: CandidateEvaluator | None, batches: Iterator[Batch], stop: StopRule,
           completed: dict[str, torch.Tensor] | None = None, after_unit: UnitHook | None = None,
           log_step: StepLog | None = None) -> dict[str, torch.Tensor]:
    """Per unit, the selection counts of ``config.method`` (Algorithm 1 for greedy), installed
    in ``masks``. The fixed-size baselines need no evaluator, data or hooks."""
    if config.method in FIXED_SIZE_METHODS:
        generator = torch.Generator().manual_seed(config.seed)
        counts = {u.name: fixed_size_counts(config.method, model, u, stop.target(u), generator)
                  for u in units}
        for name, c in counts.items():
            masks.set_counts(name, c)
        return counts
    direction = FORWARD if config.method == "greedy" else BACKWARD
    return layer_by_layer(units, masks, evaluator, batches, stop, config.settings, completed,
                          after_unit, log_step, direction)


def slim(model: nn.Module, units: list[Unit], masks: Masks,
         probe: torch.Tensor) -> tuple[nn.Module, dict, dict[str, torch.Tensor], dict]:
    """Take the masks off and slim: the slim network, its kept channels, the mixing weights and
    the verification (slim vs masked logits on ``probe``, both against a float64 reference, in
    IEEE float32); ``SlimMismatch`` when they differ."""
    weights = {name: w.detach().clone() for name, w in masks.weights.items()}
    masks.remove()
    with exact_float32():
        network, kept, verification = verify_slim(model, units, weights, probe)
    return network, kept, weights, verification


def prune(
    model: nn.Module,
    units: list[Unit],
    config: PruneConfig,
    batches: Iterator[Batch],
    eval_batches: list[Batch],
    splits: Splitter | None = None,
    *,
    masks: Masks | None = None,
    dense: tuple[float, float] | None = None,
    measure: Measure | None = None,
    stop: StopRule | None = None,
    evaluator: CandidateEvaluator | None = None,
    distributed: bool = False,
    completed: dict[str, torch.Tensor] | None = None,
    on_step: StepLog | None = None,
    after_unit: UnitHook | None = None,
    finetune: UnitHook | None = None,
    checkpoint: UnitHook | None = None,
    on_selected: Callable[[dict[str, torch.Tensor]], None] | None = None,
    probe: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``model`` (eval mode, on its device) unit by unit, input to output, and slim it.

    ``batches``: an iterator of (x, y) mini-batches, one drawn per step; ``eval_batches``: the
    fixed list the stop rule measures; ``splits``: the network's cut for the fast evaluator and
    the stop rule's cached block inputs (``models.splitter``). After the call ``model`` carries
    no masks; its weights are those of the masked network (changed only by ``finetune``).

    Keyword arguments a command line or a benchmark needs (all optional):

    * ``masks``, ``dense``, ``measure``, ``stop``: ready-made pieces (default: built here from
      ``config``; ``dense`` is measured on ``eval_batches``); ``evaluator``: a ready-made
      candidate evaluator in place of ``build_evaluator``'s (the benchmarks pass one wrapped to
      time or record its calls; ``config``'s evaluator fields are then not read);
      ``distributed``: under torchrun, partition each step's candidates across the ranks and
      take rank 0's stop verdict.
    * ``completed``: counts of units not to search, installed as given and skipped (those an
      interrupted run finished; a benchmark's units left out, as dense counts).
    * ``on_step(unit, step, channel, batch_loss, stop_loss)`` after every step.
    * after every newly completed unit, in this order, each with (unit, counts so far):
      ``after_unit`` (progress), ``finetune`` (e.g. a few SGD steps on the masked network),
      ``checkpoint`` (save what a resume needs).
    * ``on_selected(counts)`` once the selection is done, before slimming.
    * ``probe``: the slim check's input (default: the first 64 images of ``eval_batches``).
    """
    masks = masks if masks is not None else Masks(model, units)
    if dense is None:
        dense = loss_and_top1(model, eval_batches)
        require_finite(dense[0], "the dense network's loss on the evaluation batches")
    if stop is None:
        if measure is None and config.match_kept is None and config.stop != "fraction":
            measure = SubsetMeasure(model, eval_batches, splits)
        stop = build_stop(config, dense[0], measure, distributed)
    history: list[Step] = []

    def log_step(unit: Unit, step: int, channel: int, batch_loss: float,
                 stop_loss: float | None) -> None:
        history.append(Step(unit.name, step, channel, batch_loss, stop_loss))
        if on_step is not None:
            on_step(unit, step, channel, batch_loss, stop_loss)

    def unit_done(unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        for hook in (after_unit, finetune, checkpoint):
            if hook is not None:
                hook(unit, counts)

    if evaluator is None and config.method not in FIXED_SIZE_METHODS:
        evaluator = build_evaluator(config, model, masks, splits, distributed)
    counts = select(config, model, units, masks, evaluator, batches, stop, completed, unit_done,
                    log_step)
    if on_selected is not None:
        on_selected(counts)
    masked = loss_and_top1(model, eval_batches)
    full_width = {k: v.detach().clone() for k, v in model.state_dict().items()}
    probe = eval_batches[0][0][:PROBE_IMAGES] if probe is None else probe
    network, kept, weights, verification = slim(model, units, masks, probe)
    return PruneResult(counts, weights, kept, network, verification, history, dense, masked,
                       full_width)
