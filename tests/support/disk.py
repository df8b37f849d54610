"""Filling a disk, for the tests of a full disk (tests/e2e/test_run_folders.py), in the test
process or in a worker it starts."""

from pathlib import Path


def fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
