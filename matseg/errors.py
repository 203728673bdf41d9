"""The one exception type that reaches users as a clear message (exit code 2)."""


class MatsegError(Exception):
    """Bad input or usage: what was wrong, with which value, and what to do.

    The CLI prints it as one line and exits with code 2; no file is changed.
    """
