"""What a run shows and records: one line per event, progress bars, TensorBoard, JSON files.

Under ``torchrun`` every rank computes the same run, so only rank 0 prints, draws bars and
writes; the other ranks get a ``RunLog`` whose methods do nothing. Tables and plots are built
from the JSON files (``summary.json``, ``metrics.jsonl``), TensorBoard is for watching a run.
JSON files are written atomically (the old file or the new one, never half of one: a launcher
takes a step whose summary.json exists as done); a write that fails (a full disk) is a
``pruning.checkpoint.WriteError`` naming the file, for TensorBoard's files too.
"""

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pruning.checkpoint import is_write_failure, write_atomic, write_error
from pruning.units import Unit

TB_KEPT = "the checkpoints are intact"


class RunLog:
    """Rank 0's messages, bars, scalars and files for the run folder ``out``."""

    def __init__(self, out: Path, is_main: bool, progress: bool = True):
        self.out, self.is_main, self.progress = out, is_main, progress
        self._writer = None

    def say(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def bar(self, desc: str, total: int | None = None, iterable: Any = None) -> tqdm:
        """A tqdm bar (disabled off rank 0 and with --no-progress); ``total=None`` when the
        end is not known in advance (a unit ends when the stop rule says so)."""
        return tqdm(iterable, total=total, desc=desc, leave=False,
                    disable=not (self.is_main and self.progress))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A TensorBoard scalar in ``out/tb`` (the writer is opened at the first one)."""
        if not self.is_main:
            return
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter  # slow to import: when used

                _quiet_tensorboard_thread()
                self._writer = SummaryWriter(str(self.out / "tb"))
            self._writer.add_scalar(tag, value, step)
        except Exception as error:
            if is_write_failure(error):
                raise write_error(self.out / "tb", error, False, TB_KEPT) from None
            raise

    def write_json(self, name: str, obj: Any) -> Path:
        """``out/name`` as indented JSON; a NaN or infinity is an error, never a silent value."""
        path = self.out / name
        if self.is_main:
            text = json.dumps(obj, indent=2, allow_nan=False)
            write_atomic(path, lambda f: f.write(text.encode()))
        return path

    def append_jsonl(self, name: str, obj: Any) -> None:
        """One line at the end of ``out/name``; a crash while writing it leaves at most a torn
        last line, which ``--resume`` drops (``finetune_cli.keep_metrics_up_to``)."""
        if self.is_main:
            path = self.out / name
            line = json.dumps(obj, allow_nan=False) + "\n"
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(line)
            except OSError as error:
                raise write_error(path, error, existed=path.exists()) from None

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception as error:
                if is_write_failure(error):
                    raise write_error(self.out / "tb", error, False, TB_KEPT) from None
                raise


class SelectionLog:
    """What a selection shows while it runs: the ``on_step`` and ``after_unit`` hooks of
    ``pruning.prune.prune``. Per step, the selection's loss as a TensorBoard scalar and the
    unit's bar, with the gap to the dense loss on the evaluation subset when the stop rule
    measured it; per unit, the kept fraction and one line with the unit's measurement
    (``measure(unit) -> (loss, top-1)``). The prune script and ``bench_whole`` share it, so the
    benchmark's logging costs what a run's does. ``target(unit)`` is the bar's total, where the
    stop rule fixes one; ``step`` counts the steps a resumed run has already made."""

    def __init__(self, log: RunLog, dense: tuple[float, float],
                 measure: Callable[[Unit], tuple[float, float]],
                 target: Callable[[Unit], int | None] = lambda unit: None, step: int = 0):
        self.log, self.dense, self.measure, self.target = log, dense, measure, target
        self.step, self.bar = step, None

    def start_unit(self, unit: Unit) -> None:
        """The unit's bar, opened when its selection starts so that its rate is right."""
        self.bar = self.log.bar(unit.name, total=self.target(unit))

    def on_step(self, unit: Unit, step: int, best: int, batch_loss: float,
                eval_loss: float | None) -> None:
        if self.bar is None:
            self.start_unit(unit)
        self.step += 1
        self.log.scalar("select/batch_loss", batch_loss, self.step)
        self.bar.update(1)
        if eval_loss is not None:
            self.log.scalar("select/eval_loss_gap", eval_loss - self.dense[0], self.step)
            self.bar.set_postfix(gap=f"{eval_loss - self.dense[0]:.4f}")

    def after_unit(self, unit: Unit, counts: dict[str, torch.Tensor]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        kept = int((counts[unit.name] > 0).sum())
        self.log.scalar("select/kept_fraction", kept / unit.size, len(counts))
        loss, top1 = self.measure(unit)
        self.log.say(f"{unit.name}: kept {kept}/{unit.size}, loss {loss:.4f} "
                     f"(dense {self.dense[0]:.4f}), top-1 {100 * top1:.2f}%")


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes its event files from a thread, whose failure (a full disk) Python
    prints as a traceback; the writer re-raises it in the run's thread at the next scalar,
    where it becomes a ``WriteError``. This keeps the thread's copy of it quiet."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread"
                and isinstance(args.exc_value, Exception) and is_write_failure(args.exc_value)):
            previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook

