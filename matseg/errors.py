"""The one exception type that reaches users as a clear message (exit code 2)."""


class MatsegError(Exception):
    """Bad input or usage: what was wrong, with which value, and what to do.

    The CLI prints it as one line and exits with code 2; no file is changed.
    """


class Cancelled(Exception):
    """A run stopped because its cancel token was set (``cancel.is_set()``).

    A segment run keeps its finished tiles and resumes when called again; one
    that had finished none leaves no output behind.
    """
