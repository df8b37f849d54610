"""The one exception type the data package raises for bad input.

Scripts catch it and print the message instead of a traceback: a wrong ``--data-path`` is a user
error, not a bug. It subclasses ``ValueError`` so generic callers that already catch bad values
keep working. Messages start with the offending argument and its value, e.g.
``--data-path /x: folder does not exist``.
"""


class DataError(ValueError):
    """Bad data configuration: missing or empty folders, unknown names, impossible sizes."""
