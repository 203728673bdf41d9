"""Run a ``matseg`` command in a child process, report its progress, cancel it for real.

The widget runs ``matseg segment`` and ``matseg train`` as the user would on the
command line (``python -m matseg.cli ...``), in a napari thread worker: the
viewer never freezes, progress comes from the command's own progress output,
and Cancel interrupts the process (SIGINT, so matseg removes what it had
started writing), then kills it if it does not stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

PERCENT = re.compile(rb"(\d+)% Completed")
STEP = re.compile(rb"step (\d+)/(\d+)")
KILL_AFTER_S = 10.0


def matseg_command(*args: str) -> list[str]:
    """The command line of ``matseg ARGS`` with this interpreter (the plugin's matseg)."""
    return [sys.executable, "-m", "matseg.cli", *map(str, args)]


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    cancelled: bool

    @property
    def error(self) -> str:
        """The command's own one-line error (``matseg: error: ...``), or its last stderr line."""
        lines = [ln.strip() for ln in self.stderr.replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("matseg: error:") or "Error" in ln]
        return (errors or lines or [f"exit code {self.returncode}"])[-1]


class CommandRun:
    """One run of a matseg command; :meth:`steps` runs it, :meth:`cancel` stops it."""

    def __init__(self, args: list[str]):
        self.args = args
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self._lock = threading.Lock()

    def steps(self) -> Iterator[float]:
        """Start the command and yield its progress (0..1) until it exits; return a CommandResult."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with tempfile.TemporaryFile() as stdout:
            with self._lock:
                if self.cancelled:
                    return CommandResult(130, "", "cancelled before start", True)
                self.process = subprocess.Popen(
                    self.args, stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
                )
            stderr = bytearray()
            while True:
                data = self.process.stderr.read1(4096)
                if not data:
                    break
                stderr += data
                fraction = _last_fraction(bytes(stderr[-512:]))
                if fraction is not None:
                    yield fraction
            returncode = self.process.wait()
            stdout.seek(0)
            out = stdout.read().decode(errors="replace")
        return CommandResult(returncode, out, stderr.decode(errors="replace"), self.cancelled)

    def cancel(self) -> None:
        """Interrupt the command (it cleans up), and kill it if it is still alive after a while."""
        with self._lock:
            self.cancelled = True
            process = self.process
        if process is None or process.poll() is not None:
            return
        if os.name == "posix":
            process.send_signal(signal.SIGINT)
        else:
            process.terminate()
        timer = threading.Timer(KILL_AFTER_S, lambda: process.poll() is None and process.kill())
        timer.daemon = True
        timer.start()


def _last_fraction(text: bytes) -> float | None:
    """The latest progress in a command's stderr: dask's ``45% Completed`` or ``step 30/100``."""
    percents = PERCENT.findall(text)
    steps = STEP.findall(text)
    candidates = []
    if percents:
        candidates.append((text.rfind(percents[-1] + b"% Completed"), int(percents[-1]) / 100))
    if steps:
        done, total = steps[-1]
        candidates.append((text.rfind(b"step " + done + b"/" + total), int(done) / max(int(total), 1)))
    return max(candidates)[1] if candidates else None


class CloseWatch:
    """Whether a magicgui widget's Qt object is gone (its dock was closed); cancels a command then.

    The slot connected to ``destroyed`` references neither the widget nor the panel and
    is kept alive here until the signal has come: a closure over the widget (a lambda
    calling one of its methods) is in a reference cycle with it and can be collected
    while Qt is still calling it, a segmentation fault under PyQt (silx-kit/silx#4605).
    """

    _waiting: set[CloseWatch] = set()  # watches whose widget still exists

    def __init__(self, widget):
        self.closed = False
        self.run: CommandRun | None = None  # cancelled when the widget goes
        CloseWatch._waiting.add(self)
        widget.native.destroyed.connect(self._destroyed)

    def _destroyed(self, *_) -> None:
        self.closed = True
        CloseWatch._waiting.discard(self)
        if self.run is not None:
            self.run.cancel()


class CommandPanel:
    """One matseg command at a time, in a worker thread, for a magicgui Container.

    Mixed into a panel that has ``run_button``, ``cancel_button``, ``progress``
    and ``status`` widgets: starting, progress, cancelling, closing and the
    common ends of a run (closed, cancelled, failed) are handled here once.
    """

    worker = None
    _run: CommandRun | None = None
    _watch: CloseWatch | None = None

    def watch_close(self) -> None:
        """Cancel a running command when the panel's dock is closed."""
        self._watch = CloseWatch(self)

    @property
    def closed(self) -> bool:
        return self._watch is not None and self._watch.closed

    def start_command(self, args: list[str], on_finished, status: str) -> None:
        """Run ``matseg *args``; ``on_finished(result)`` is called in the GUI thread at the end."""
        from napari.qt.threading import create_worker

        self._run = CommandRun(matseg_command(*args))
        if self._watch is not None:
            self._watch.run = self._run
        self.worker = create_worker(self._run.steps, _start_thread=False)
        self.worker.yielded.connect(self._show_progress)
        self.worker.returned.connect(on_finished)
        self.worker.errored.connect(self._failed)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.status.value = status
        self.worker.start()

    def cancel(self, *_) -> None:
        if self._run is not None:
            if not self.closed:
                self.status.value = "cancelling..."
            self._run.cancel()

    def _show_progress(self, fraction: float) -> None:
        if not self.closed:
            self.progress.value = int(round(100 * fraction))

    def _failed(self, error: Exception) -> None:
        if self.closed:
            return
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.status.value = f"failed: {error}"

    def command_succeeded(self, result: CommandResult, cancelled: str = "cancelled") -> bool:
        """The common end of a run: False, with the status said, unless it ended well."""
        if self.closed:
            return False
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if result.cancelled:
            self.status.value = cancelled
            return False
        if result.returncode != 0:
            self.status.value = result.error.removeprefix("matseg: error: ")
            return False
        self.progress.value = 100
        return True
