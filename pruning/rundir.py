"""One policy for a script's run folder: refuse, resume or overwrite, never lose a user's run.

A run folder holds one run. Starting a run where one exists would replace hours of work, so:

* a run in progress (its progress file exists) is continued with ``--resume`` and refused
  otherwise;
* a finished run (its final file exists, the progress file does not) is reported and left as it
  is with ``--resume`` (``Finished``, exit status 0) and refused otherwise;
* ``--overwrite`` removes what a run of this kind wrote (its own files, nothing else) first.

The prune scripts' progress file is ``selection_state.pth`` and their final file ``pruned.pth``;
the fine-tune scripts' progress file is ``last.pth`` (a finished training resumes to its last
epoch and only rewrites the summary); an evaluation's final file is ``summary.json``.
"""

import shutil
from collections.abc import Sequence
from pathlib import Path

from pruning.arguments import UsageError
from pruning.distributed import say


class Finished(Exception):
    """``--resume`` found a finished run: there is nothing to do."""


class RunDir:
    """The run folder ``path`` of one kind of run.

    ``files``: glob patterns of everything this kind of run writes (``tb`` for TensorBoard);
    ``progress``: the file a run in progress keeps and ``--resume`` reads, or None;
    ``final``: the file a finished run leaves, or None; ``finished``: what it is called in
    messages.
    """

    def __init__(self, path: Path, files: Sequence[str], progress: str | None,
                 final: str | None, finished: str = "a finished run"):
        self.path, self.files, self.progress, self.final = path, tuple(files), progress, final
        self.finished = finished

    def start(self, resume: bool, overwrite: bool) -> Path | None:
        """Apply the policy before any work: the progress file to resume from, or None for a
        run from the start (``UsageError`` or ``Finished`` where the policy says so)."""
        out = self.path
        if overwrite:
            self.remove()
            return None
        if self.progress and (out / self.progress).exists():
            if resume:
                return out / self.progress
            raise UsageError(f"--output-dir {out} holds a run in progress ({self.progress}); "
                             "pass --resume to continue it, --overwrite to replace it, or "
                             "choose another --output-dir")
        if self.final and (out / self.final).exists():
            if resume:
                raise Finished(f"--resume: {out} holds {self.finished} ({self.final}); nothing "
                               "to do")
            raise UsageError(f"--output-dir {out} holds {self.finished} ({self.final}); choose "
                             "another --output-dir or pass --overwrite to replace it")
        if resume:
            say(f"--resume: no {self.progress or self.final} in {out}, starting from the "
                "beginning")
        return None

    def refuse(self, other: "RunDir", what: str) -> None:
        """Refuse to start here when ``other``'s kind of run is in the folder (e.g. an
        evaluation where a training run is): ``what`` names the run found."""
        marker = other.progress or other.final
        if marker and (self.path / marker).exists():
            raise UsageError(f"--output-dir {self.path} holds {what} ({marker}); give this run "
                             "its own --output-dir")

    def remove(self) -> None:
        """``--overwrite``: delete what this kind of run wrote in the folder (nothing else)."""
        for pattern in self.files:
            for path in self.path.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
