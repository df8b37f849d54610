"""The one exception type the data package raises for bad input.

Scripts catch it and print the message instead of a traceback: a wrong ``--data-path`` is a user
error, not a bug. It subclasses ``ValueError`` so generic callers that already catch bad values
keep working. Messages start with the offending argument and its value, e.g.
``--data-path /x: folder does not exist``.
"""

import re

# How a DataLoader re-raises an exception from a worker (torch._utils.ExceptionWrapper.reraise):
# the same type, constructed from "Caught DataError in DataLoader worker process 0.\nOriginal "
# followed by the worker's whole formatted traceback, whose last entry is the original message.
_WRAPPED = re.compile(r"Caught DataError (in [^\n]*?)\.\nOriginal Traceback")
_ORIGINAL = re.compile(r"^(?:[\w.]+\.)?DataError: ", re.MULTILINE)


class DataError(ValueError):
    """Bad data configuration: missing or empty folders, unknown names, impossible sizes,
    unreadable or unsafe files.

    Why the constructor rewrites worker messages: a DataError raised while a DataLoader worker
    reads an item reaches the main process as a new DataError whose message is the worker's
    traceback, which a script would print in full. The message is cut back to the original one,
    with where it was raised appended; the full text stays in ``worker_traceback``.
    """

    def __init__(self, message: str = "") -> None:
        self.worker_traceback: str | None = None
        wrapped = _WRAPPED.match(message) if isinstance(message, str) else None
        originals = list(_ORIGINAL.finditer(message)) if wrapped else []
        if originals:
            self.worker_traceback = message
            message = f"{message[originals[-1].end():].rstrip()} ({wrapped.group(1)})"
        super().__init__(message)
