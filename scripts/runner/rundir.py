"""Run folders: one run per folder, a lock while it works, and an --overwrite that loses nothing.

A run folder (the scripts' ``--output-dir``, the pipeline's ``--out``) holds one run: hours or
days of work. Every script that writes one follows these rules (``RunDir``):

* **One kind per folder.** When a run starts writing, its folder records the run's kind
  (``prune``, ``fine-tune``, ``evaluate``, ``pipeline`` or ``launcher``) and family (the
  architecture name) in ``run.json``. A run of another kind refuses the folder, with or without
  ``--overwrite``, in one line naming the folder and what it holds; a run of the same kind but
  another family refuses it unless ``--overwrite``. A folder made before the record existed is
  read by its files: selection_state.pth, pruned.pth or masked.pth: a prune run; last.pth,
  best.pth, epoch_*.pth or metrics.jsonl: a fine-tune run; invocations.json: a pipeline; table.md:
  a launcher's; summary.json alone: an evaluation (its family from summary.json's ``arch``).
* **One run at a time.** While a run works in its folder it holds an exclusive lock on
  ``<folder>/.lock`` (which names its pid and host); a second run into the folder refuses in
  one line. The kernel drops the lock when the process ends, however it ends (SIGKILL, a crash),
  so ``--resume`` after a kill is never blocked. It is a POSIX lock (``fcntl.lockf``) rather than
  ``flock``: forked processes (DataLoader workers, which outlive a killed run by seconds) do not
  inherit it, and network file systems implement it. Under torchrun rank 0 takes the lock and
  applies these rules; the other ranks get its verdict (``distributed.on_main``) and stop with
  the same line. A file system without locks gets a warning and no lock.
* **Resume or refuse.** A run in progress (its progress file exists) is continued with
  ``--resume`` and refused otherwise; a finished run (its final file, no progress file) is
  reported and left as it is with ``--resume`` (``Finished``, exit status 0) and refused
  otherwise. Prune runs: progress ``selection_state.pth``, final ``pruned.pth``; fine-tune runs:
  progress ``last.pth`` (a finished training resumes to its last epoch and only rewrites the
  summary); evaluations: final ``summary.json``.
* **--overwrite is the last thing before the new run writes.** ``claim`` only notes it. The
  script then reads and checks every input (``--pretrained``, ``--match-kept``, ``--pruned``, the
  resumed state, the data) *into memory*, so an input inside the folder (``--match-kept
  OUT/pruned.pth --output-dir OUT``) is allowed: it is read before anything moves. A bad input
  ends the run there, with the old run untouched. Then ``begin`` moves the old run's files (the
  files this kind of run writes, ``KINDS``; nothing else, so a user's notes stay) into
  ``<folder>/.replaced/``, and ``commit`` deletes that once the new run has written its first
  checkpoint (prune: the state after its first unit, or pruned.pth; fine-tune: the first
  epoch's last.pth; an evaluation: its summary.json).
* **An --overwrite that stops early loses nothing.** Should the new run stop before its first
  checkpoint (a crash, Ctrl-C, SIGKILL), the old run is whole in ``<folder>/.replaced/``: the
  next run that claims the folder moves it back (dropping what the stopped run wrote) and says
  so, before it applies the rules above. By hand: delete the stopped run's files from the folder
  and move everything in ``.replaced/`` back up.

The pipeline's and the launchers' folders hold the run folders of their steps; ``foreign_file``
names a file in a step's folder that no run wrote (the pipeline's ``--overwrite`` refuses then).
"""

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.runner.arguments import UsageError
from scripts.runner.distributed import say

RECORD = "run.json"
LOCK = ".lock"
ASIDE = ".replaced"  # the old run, moved aside by --overwrite until the first checkpoint
DOOMED = ".replaced-deleting"  # ASIDE being deleted (renamed first: a crash cannot half-restore)
#: What a run folder holds besides its run's files and that --overwrite leaves in place
#: (``launch.json``: the launchers' record of a step's arguments).
KEPT = (LOCK, ASIDE, DOOMED, "launch.json")
BOOKKEEPING = (RECORD, *KEPT)
TEMPORARY = ".*.tmp*"  # an atomic write's temporary file, left by a SIGKILL


class Finished(Exception):
    """``--resume`` found a finished run: there is nothing to do."""


@dataclass(frozen=True)
class Kind:
    """What one kind of run writes in its folder: ``files`` (glob patterns; ``tb`` is
    TensorBoard's folder), its ``progress`` and ``final`` files, how a finished one is called
    (``finished``), and the files that tell it in a folder without ``run.json`` (``markers``)."""

    name: str
    files: tuple[str, ...]
    progress: str | None = None
    final: str | None = None
    finished: str = "a finished run"
    markers: tuple[str, ...] = ()


KINDS = {k.name: k for k in (
    Kind("prune", ("pruned.pth", "masked.pth", "summary.json", "selection_state.pth", "tb",
                   TEMPORARY), "selection_state.pth", "pruned.pth",
         markers=("selection_state.pth", "pruned.pth", "masked.pth")),
    Kind("fine-tune", ("last.pth", "best.pth", "epoch_*.pth", "metrics.jsonl", "summary.json",
                       "tb", TEMPORARY), "last.pth",
         markers=("last.pth", "best.pth", "epoch_*.pth", "metrics.jsonl")),
    Kind("pipeline", (), markers=("invocations.json",)),
    Kind("launcher", (), markers=("table.md",)),
    Kind("evaluate", ("summary.json", TEMPORARY), None, "summary.json", "an evaluation",
         markers=("summary.json",)),
)}
#: How messages call a run of each kind.
TITLES = {"prune": "a prune run", "fine-tune": "a fine-tune run", "evaluate": "an evaluation",
          "pipeline": "a pipeline run", "launcher": "a launcher's runs"}
#: Everything a prune, fine-tune or evaluation run may write (the pipeline's steps' folders).
RUN_FILES = tuple(dict.fromkeys(p for k in ("prune", "fine-tune", "evaluate")
                                for p in KINDS[k].files))

#: Locks this process holds, by real path: the descriptor, the number of holders, whether the
#: claim made the folder and the lock file, and whether the run began writing there.
_HELD: dict[str, dict] = {}


def matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(path.match(p) for p in patterns)


def recorded(path: Path, flag: str = "--output-dir") -> tuple[str | None, str | None]:
    """The kind and family of the run in ``path``: from ``run.json``, or inferred from its files
    (a folder of an older version); (None, None) for a folder of no run."""
    record = path / RECORD
    if record.exists():
        try:
            obj = json.loads(record.read_text())
            return str(obj["kind"]), obj.get("family")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{flag} {path}: {record} is damaged ({type(error).__name__}: "
                             f"{str(error)[:80]}); delete it and the folder's kind is read from "
                             "its files") from None
    kind = next((k.name for k in KINDS.values()
                 if any(next(path.glob(m), None) for m in k.markers)), None)
    family = None
    if kind is not None and (path / "summary.json").is_file():
        try:
            family = json.loads((path / "summary.json").read_text()).get("arch")
        except (OSError, ValueError, AttributeError):
            family = None
    return kind, family


def write_record(path: Path, kind: str, family: str | None) -> None:
    """``path/run.json``, atomically (a full disk is a ``WriteError``)."""
    from pruning.checkpoint import write_atomic  # torch: only when a run starts writing

    text = json.dumps({"kind": kind, "family": family}, indent=1) + "\n"
    write_atomic(path / RECORD, lambda f: f.write(text.encode()))


def foreign_file(folder: Path, patterns: tuple[str, ...] = RUN_FILES) -> Path | None:
    """A file in the run folder ``folder`` that no run wrote (neither ``patterns`` nor
    ``BOOKKEEPING``), or None."""
    for entry in sorted(folder.iterdir()):
        if entry.name in BOOKKEEPING or matches(entry, patterns):
            continue
        return first_file(entry)
    return None


def first_file(path: Path) -> Path:
    """``path``, or the first file under it (to name in a message)."""
    if path.is_dir() and not path.is_symlink():
        for entry in sorted(path.rglob("*")):
            if not entry.is_dir():
                return entry
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunDir:
    """The run folder ``path`` of a run of ``kind`` (a key of ``KINDS``) and ``family`` (the
    architecture name, or None); ``flag`` names the folder's argument in messages.

    A script calls, on rank 0 (``distributed.on_main``): ``claim`` before reading its inputs,
    ``begin`` once they are all read (just before its first write), ``commit`` after each
    checkpoint (only the first one does anything), and ``release`` when it ends.
    """

    def __init__(self, path: Path, kind: str, family: str | None = None,
                 flag: str = "--output-dir"):
        self.path, self.kind, self.family, self.flag = Path(path), KINDS[kind], family, flag
        self.replace = False
        self._held = False

    # -- the steps of a run ----------------------------------------------------------------

    def claim(self, resume: bool, overwrite: bool) -> Path | None:
        """Lock the folder, put back what an interrupted --overwrite moved aside, check its kind
        and apply the policy: the progress file to resume from, or None for a run from the
        start (``UsageError`` or ``Finished`` where the rules say so; the lock is then
        released). Nothing is removed here, even with ``overwrite``: ``begin`` does that."""
        self.lock()
        try:
            self.recover()
            self.check_kind(overwrite)
            return self.policy(resume, overwrite)
        except BaseException:
            self.release()
            raise

    def policy(self, resume: bool, overwrite: bool) -> Path | None:
        out, kind, flag = self.path, self.kind, self.flag
        if overwrite:
            self.replace = True
            return None
        if kind.progress and (out / kind.progress).exists():
            if resume:
                return out / kind.progress
            raise UsageError(f"{flag} {out} holds a run in progress ({kind.progress}); pass "
                             f"--resume to continue it, --overwrite to replace it, or choose "
                             f"another {flag}")
        if kind.final and (out / kind.final).exists():
            if resume:
                raise Finished(f"--resume: {out} holds {kind.finished} ({kind.final}); nothing "
                               "to do")
            raise UsageError(f"{flag} {out} holds {kind.finished} ({kind.final}); choose "
                             f"another {flag} or pass --overwrite to replace it")
        if resume:
            say(f"--resume: no {kind.progress or kind.final} in {out}, starting from the "
                "beginning")
        return None

    def check_kind(self, overwrite: bool) -> None:
        """Refuse a folder that holds a run of another kind, or of another family (unless
        ``overwrite``)."""
        kind, family = recorded(self.path, self.flag)
        if kind is None:
            return
        of = f" of {family}" if family else ""
        if kind != self.kind.name:
            this = "this " + TITLES[self.kind.name].split(" ", 1)[1]
            raise UsageError(f"{self.flag} {self.path} holds {TITLES.get(kind, kind)}{of}; give "
                             f"{this} its own {self.flag}")
        if family and self.family and family != self.family and not overwrite:
            raise UsageError(f"{self.flag} {self.path} holds {TITLES.get(kind, kind)}{of}; this "
                             f"run is of {self.family}: choose another {self.flag}, or pass "
                             "--overwrite to replace it")

    def begin(self) -> None:
        """Every input is read: with --overwrite move the old run's files aside (into
        ``.replaced/``), then record this run's kind and family."""
        if self.replace:
            entries = {p: None for pattern in (*self.kind.files, RECORD)
                       for p in self.path.glob(pattern) if p.name not in KEPT}
            if entries:
                aside = self.path / ASIDE
                aside.mkdir()
                for entry in entries:
                    os.rename(entry, aside / entry.name)
                say(f"--overwrite: moved the previous run's files to {aside}; they are deleted "
                    "once this run writes its first checkpoint")
            self.replace = False
        held = _HELD.get(os.path.realpath(self.path))
        if held is not None:
            held["wrote"] = True
        write_record(self.path, self.kind.name, self.family)

    def commit(self) -> None:
        """A checkpoint of the new run is on the disk: delete the run --overwrite replaced."""
        aside = self.path / ASIDE
        if aside.exists():
            doomed = self.path / DOOMED
            os.rename(aside, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def recover(self) -> None:
        """Finish what an --overwrite left: a deletion (``commit``) that was cut short, or an
        old run still aside because the new one stopped before its first checkpoint (then the
        old run is moved back and the stopped run's files are dropped)."""
        doomed, aside = self.path / DOOMED, self.path / ASIDE
        if doomed.exists():
            shutil.rmtree(doomed, ignore_errors=True)
        if not aside.is_dir():
            return
        kind, _ = recorded(aside, self.flag)
        kind = KINDS.get(kind or self.kind.name, self.kind)
        if any((self.path / m).exists() for m in (kind.progress, kind.final) if m):
            self.commit()  # the new run did write a checkpoint: it is the run of this folder
            return
        for pattern in (*kind.files, RECORD):
            for entry in self.path.glob(pattern):
                if entry.name not in KEPT:
                    _remove(entry)
        for entry in aside.iterdir():
            if (self.path / entry.name).exists():
                _remove(self.path / entry.name)
            os.rename(entry, self.path / entry.name)
        aside.rmdir()
        say(f"{self.path}: an --overwrite stopped before its first checkpoint; restored the run "
            f"it had moved to {aside}")

    # -- the lock ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder's lock (creating the folder), or refuse in one line if another
        process holds it. Re-entrant within a process (a POSIX lock is the process's: closing
        any descriptor of the file would drop it, so the file is opened once)."""
        if self._held:
            return
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(self.path)
            if key in _HELD:
                _HELD[key]["holders"] += 1
                self._held = True
                return
            new_lock = not (self.path / LOCK).exists()
            fd = self._take_lock()
        except OSError as error:
            raise UsageError(f"{self.flag} {self.path}: cannot take its lock "
                             f"({error.strerror or error})") from None
        if fd is not None:
            stamp = f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n"
            os.ftruncate(fd, 0)
            os.write(fd, stamp.encode())
        _HELD[key] = {"fd": fd, "holders": 1, "folder": created, "lock": new_lock, "wrote": False}
        self._held = True

    def _take_lock(self) -> int | None:
        path = self.path / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        say(f"warning: {self.path}: the file system takes no locks "
                            f"({error.strerror}); a second run into it will not be noticed")
                        return None
                    raise
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UsageError(f"{self.flag} {self.path}: another run is working there "
                                 f"({holder}); wait for it to end, or choose another "
                                 f"{self.flag}") from None
            try:  # a run that released the lock may have removed the file since we opened it
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        """Drop the lock (the last holder in this process closes it). A run that wrote nothing
        (refused, or a bad input) leaves no trace: the lock file and the folder it created go."""
        if not self._held:
            return
        self._held = False
        key = os.path.realpath(self.path)
        held = _HELD.get(key)
        if held is None:
            return
        held["holders"] -= 1
        if held["holders"] > 0:
            return
        del _HELD[key]
        try:  # still holding the lock; a run that opened the file meanwhile retries (_take_lock)
            if held["lock"] and not held["wrote"]:
                (self.path / LOCK).unlink()
                if held["folder"]:
                    self.path.rmdir()  # only if empty
        except OSError:
            pass
        if held["fd"] is not None:
            os.close(held["fd"])
