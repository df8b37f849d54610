"""How every command-line script ends: one line on stderr and a status that says why.

    0    done, or ``--resume`` found a finished run (``Finished``)
    1    a loss or a weight became NaN or infinite (``NonFiniteLoss``), or the slim network is
         not the masked one it was made from (``SlimMismatch``: a unit declared wrongly), or
         a file could not be written (``WriteError``: a full disk; what was saved is intact);
         under torchrun, the other ranks when one of them stopped
    2    bad input: an argument, a data file, a checkpoint, weights that cannot be fetched
    130  interrupted (Ctrl-C): the run keeps what its last checkpoint saved

No traceback for any of these: they are the user's to act on, and the message says how.
"""

import sys
from collections.abc import Callable
from typing import Any

from data import DataError
from pruning.checkpoint import WriteError
from pruning.stop import NonFiniteLoss
from pruning.verify import SlimMismatch
from scripts.runner import distributed
from scripts.runner.rundir import Finished


def run_command(run: Callable[[], Any], *, on_nonfinite: str, on_interrupt: str,
                bad_input: tuple[type[BaseException], ...] = (),
                on_mismatch: str = "nothing was written") -> None:
    """Call ``run`` and end the process as the table above says; ``on_nonfinite``,
    ``on_mismatch`` and ``on_interrupt`` tell the user what was kept and how to go on;
    ``bad_input`` adds error types that also mean status 2
    (``models.weights.PretrainedDownloadError``)."""
    try:
        run()
    except Finished as done:
        distributed.say(str(done))
    except NonFiniteLoss as error:
        _exit(1, f"error: {error}; {on_nonfinite}")
    except SlimMismatch as error:
        _exit(1, f"error: {error}; {on_mismatch}")
    except WriteError as error:
        _exit(1, f"error: {error}")
    except KeyboardInterrupt:
        _exit(130, f"interrupted: {on_interrupt}")
    except (ValueError, FileNotFoundError, DataError, *bad_input) as error:
        _exit(2, f"error: {error}")  # UsageError and CheckpointError are ValueErrors
    except RuntimeError as error:
        if not distributed.peer_stopped(error):
            raise
        _exit(1, f"error: rank {distributed.world_from_env().rank}: another rank of this job "
                 "stopped (its message above says why); stopping too")
    finally:
        distributed.cleanup()


def _exit(status: int, text: str) -> None:
    print(text, file=sys.stderr, flush=True)
    sys.exit(status)
