"""One writer per output: a lock file beside the output store.

The lock is the kernel's (``flock`` on the lock file), so it is held exactly as
long as its process lives: a run that dies (kill -9, a job's time limit, a node
lost) releases it with its last breath, and of any number of runs racing for one
output exactly one gets it, stale lock file or not. The file records the
holder's host and process id for the message a refused run prints. On network
file systems ``flock`` is as good as the mount's locking (NFSv4: yes; Lustre:
mount with ``flock``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from matseg.errors import MatsegError
from matseg.io.faults import fault_point


def lock_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.parent / f".{out.name}.matseg-lock"


class OutputLock:
    """``with OutputLock(out): ...`` holds the lock for the duration of a run."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.path = lock_path(output)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> OutputLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MatsegError(f"cannot write output {self.output}: {err.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise MatsegError(f"cannot write output {self.output}: {err.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(holder) from None
                raise MatsegError(
                    f"cannot lock output {self.output}: {err.strerror} (the file system of "
                    f"{self.path.parent} does not support file locks)"
                ) from None
            # a holder that finished unlinks the file before unlocking: if we locked that
            # unlinked file, the lock is on nothing anyone else sees; open the new one
            try:
                current = os.stat(self.path)
                here = os.fstat(fd)
                same = (current.st_dev, current.st_ino) == (here.st_dev, here.st_ino)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self.fd = fd
            fault_point("after-lock")
            return self

    def _busy(self, holder: dict) -> MatsegError:
        host, pid = holder.get("host"), holder.get("pid")
        where = f"pid {pid} on {host}" if host else "a process that is starting"
        return MatsegError(
            f"output {self.output} is being written by another matseg run ({where}); wait for it "
            "to finish (a run that died releases the lock by itself)"
        )

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: see __enter__
        os.close(self.fd)  # releases the lock
        self.fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
