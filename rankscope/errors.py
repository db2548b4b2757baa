"""The one exception rankscope raises for what the user got wrong, shown as a single line.

Every problem caused by the user's input (a missing file, a corrupt checkpoint, a bad option)
raises :class:`RankscopeError` with a one-line message naming the file, tensor or option at
fault.  The CLI prints it as ``Error: <message>`` and exits with status 2.
"""


class RankscopeError(Exception):
    """A problem with the user's input, reported as a single line without a traceback."""
