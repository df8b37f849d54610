"""What a run shows and records: one line per event, progress bars, TensorBoard, JSON files.

Under ``torchrun`` every rank computes the same run, so only rank 0 prints, draws bars and
writes; the other ranks get a ``RunLog`` whose methods do nothing. Tables and plots are built
from the JSON files (``summary.json``, ``metrics.jsonl``), TensorBoard is for watching a run.
"""

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm


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
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only when used

            self._writer = SummaryWriter(str(self.out / "tb"))
        self._writer.add_scalar(tag, value, step)

    def write_json(self, name: str, obj: Any) -> Path:
        """``out/name`` as indented JSON; a NaN or infinity is an error, never a silent value."""
        path = self.out / name
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj, indent=2, allow_nan=False))
        return path

    def append_jsonl(self, name: str, obj: Any) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / name).open("a") as f:
                f.write(json.dumps(obj, allow_nan=False) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
