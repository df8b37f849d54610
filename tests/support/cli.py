"""Running the repository's scripts in tests: as a process (``run_script``; ``start_script`` to
kill or interrupt it; ``Background`` to read its result later) or in this process
(``run_main``), and the tiny prune run most command-line tests start from.

Every process started here inherits the test process's environment, which holds
``OMP_NUM_THREADS=1`` (tests/conftest.py): on a loaded 2-core machine a second thread makes a
tiny network's forward pass many times slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tests.support import ROOT

#: A prune run small enough for a test: 160 synthetic images, candidate subsets of 3, the CPU.
TINY = ["--dataset", "synthetic", "--synthetic-images", "160", "--eval-images", "40",
        "--batch-size", "16", "--eval-batch-size", "40", "--workers", "0", "--no-progress",
        "--candidates", "3", "--device", "cpu"]


def tiny(out: Path, *extra: str) -> list[str]:
    """``TINY`` into the run folder ``out``, with ``extra`` after it."""
    return [*TINY, "--output-dir", str(out), *extra]


def command(script: str | Path, *args: Any, torchrun: int | None = None) -> list[str]:
    """The command line that runs ``script`` (relative to the repository root, or absolute)
    with ``args``: ``python script ...``, or under ``torchrun`` with that many processes."""
    path = str(ROOT / script)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable])
    return [*launcher, path, *map(str, args)]


def environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """This process's environment with ``env`` set over it (None: inherited as it is)."""
    return None if env is None else {**os.environ, **env}


def tail(result: subprocess.CompletedProcess, chars: int = 3000) -> str:
    """A failure message: the command, its exit status, the ends of its stdout and stderr."""
    def end(text: str | None) -> str:
        text = text or ""
        return text if len(text) <= chars else "..." + text[-chars:]

    line = " ".join(result.args) if isinstance(result.args, list) else str(result.args)
    return (f"$ {line}\nexit status {result.returncode}\n--- stdout\n{end(result.stdout)}\n"
            f"--- stderr\n{end(result.stderr)}")


def run_script(script: str | Path, *args: Any, expect: int | None = 0, cwd: Path = ROOT,
               env: Mapping[str, str] | None = None, timeout: float = 600,
               torchrun: int | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` as a process to its end and return it, output as text.

    ``script``: a path relative to the repository root (``"mobile2_prune.py"``,
    ``"scripts/table1.py"``) or an absolute one (a worker written into ``tmp_path``);
    ``expect``: the exit status it must end with (None: any, for the test to judge); ``env``:
    variables set over this process's environment (e.g. ``PYTHONPATH`` for a worker outside the
    repository); ``torchrun``: the number of processes to start it under
    ``torch.distributed.run --standalone``. A wrong exit status fails the test with the command
    and the ends of its stdout and stderr.
    """
    result = subprocess.run(command(script, *args, torchrun=torchrun), cwd=cwd,
                            env=environment(env), capture_output=True, text=True,
                            timeout=timeout)
    if expect is not None:
        assert result.returncode == expect, tail(result)
    return result


def start_script(script: str | Path, *args: Any, cwd: Path = ROOT,
                 env: Mapping[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """``script`` started as a process and left running (to kill or interrupt it); ``popen``:
    the rest of ``subprocess.Popen``'s arguments (``stdout``, ``stderr``, ``text``, ...)."""
    return subprocess.Popen(command(script, *args), cwd=cwd, env=environment(env), **popen)


class Background:
    """``script`` with ``args`` started as a process now, its output going to two files in
    ``folder``; ``result()`` waits for its end. For a long run that tests read later: started
    early, it runs on the second core beside the tests, which use one (see tests/e2e/conftest.py).
    """

    def __init__(self, script: str | Path, *args: Any, folder: Path,
                 env: Mapping[str, str] | None = None):
        self.args, self.folder = command(script, *args), folder
        self.stdout, self.stderr = folder / "stdout.txt", folder / "stderr.txt"
        self.started = time.perf_counter()
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=environment(env),
                                            stdout=out, stderr=err)
        self.seconds: float | None = None  # from the start to the end of the process

    def result(self, expect: int | None = 0, timeout: float = 600) -> subprocess.CompletedProcess:
        """The ended process (waiting for it at most ``timeout`` seconds more), as
        ``run_script`` returns it; ``expect`` as there."""
        code = self.process.wait(timeout=timeout)
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        result = subprocess.CompletedProcess(self.args, code, self.stdout.read_text(),
                                             self.stderr.read_text())
        if expect is not None:
            assert code == expect, tail(result)
        return result

    def stop(self) -> None:
        """Kill the process if it still runs (the tests that wanted it were not run)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Exit(NamedTuple):
    """How a script's ``main`` ended in this process: its exit status and what it printed."""

    code: int
    out: str
    err: str


def run_main(capsys, main: Callable[..., Any], *main_args: Any,
             argv: list[Any] | None = None) -> Exit:
    """``main(*main_args)`` in this process, as the script would run it: with ``sys.argv`` set
    to ``["script", *argv]`` where ``argv`` is given; a ``SystemExit`` is its exit status (a
    return value of ``main`` that is an int, too). ``capsys``: the test's fixture."""
    saved = sys.argv
    if argv is not None:
        sys.argv = ["script", *map(str, argv)]
    capsys.readouterr()
    try:
        returned = main(*main_args)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):  # sys.exit("message"): printed to stderr
            print(exit_.code, file=sys.stderr)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return Exit(code, out, err)
