"""A run's progress callback and cancel token, as its stages use them.

``progress(stage, done, total)`` is called as a stage advances (``done == total``
when it ends); ``cancel`` is anything with ``is_set()`` (a :class:`threading.Event`),
looked at whenever a stage advances: once set, the stage raises :class:`Cancelled`
at the next step it reaches (a tile, a slab, a training step).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from matseg.errors import Cancelled, MatsegError

Progress = Callable[[str, int, int], None]


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


class Monitor:
    """Reports each stage's progress to ``progress`` and stops when ``cancel`` is set."""

    def __init__(self, progress: Progress | None = None, cancel: CancelToken | None = None):
        if progress is not None and not callable(progress):
            raise MatsegError(f"progress must be a function (stage, done, total), got {progress!r}")
        if cancel is not None and not callable(getattr(cancel, "is_set", None)):
            raise MatsegError(f"cancel must have is_set() (e.g. a threading.Event), got {cancel!r}")
        self.progress = progress
        self.cancel = cancel

    def check(self) -> None:
        """Raise :class:`Cancelled` if the cancel token is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def stage(self, name: str, total: int) -> Stage:
        """A stage of ``total`` steps, reported as started (0 done); a cancelled run stops here."""
        stage = Stage(self, name, total)
        stage.report()
        self.check()
        return stage


class Stage:
    """One stage's count of steps done; safe to advance from several threads."""

    def __init__(self, monitor: Monitor, name: str, total: int):
        self.monitor, self.name, self.total, self.done = monitor, name, total, 0
        self._lock = threading.Lock()

    def report(self) -> None:
        if self.monitor.progress is not None:
            self.monitor.progress(self.name, self.done, self.total)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more done; raises :class:`Cancelled` if the run was cancelled meanwhile."""
        with self._lock:
            self.done = min(self.total, self.done + steps)
            self.report()
        self.monitor.check()

    def finish(self) -> None:
        """Every step done (a stage that ends early, such as a resumed one, reports its total)."""
        with self._lock:
            if self.done != self.total:
                self.done = self.total
                self.report()
