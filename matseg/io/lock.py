"""One writer per output: a lock file beside the output store.

The lock records the writer's host and process id. A second run refuses while
that process is alive; a lock left by a run that died (kill -9, node failure)
on this host is recognised as stale and taken over, so it never blocks forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from matseg.errors import MatsegError


def lock_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.parent / f".{out.name}.matseg-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class OutputLock:
    """``with OutputLock(out): ...`` holds the lock for the duration of a run."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.path = lock_path(output)
        self.held = False

    def __enter__(self) -> OutputLock:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            except OSError as err:
                raise MatsegError(f"cannot write output {self.output}: {err.strerror}") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            self.held = True
            return self
        raise MatsegError(f"cannot lock output {self.output}: {self.path} keeps reappearing")

    def _refuse_or_clear(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            self.path.unlink(missing_ok=True)  # stale: its run died
            return
        where = f"pid {pid} on {host}" if host else "an unknown process"
        raise MatsegError(
            f"output {self.output} is being written by another matseg run ({where}); wait for it, "
            f"or delete {self.path} if that run is dead"
        )

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
