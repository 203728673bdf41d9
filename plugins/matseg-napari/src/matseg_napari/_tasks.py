"""Run a matseg library call in a napari thread worker: progress, cancel, and a closed dock.

The panels call matseg's public functions (:func:`matseg.segment`,
:func:`matseg.finetune_from_corrections`) directly. Those take a ``progress``
callback and a ``cancel`` token: the callback may be called from any of dask's
threads, so it only queues ``(stage, done, total)``; the worker's generator
hands the latest of them to the GUI thread. Cancel sets the token; matseg stops
at the next tile boundary, keeps what is finished and raises
:class:`matseg.Cancelled`.
"""

from __future__ import annotations

import functools
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import matseg

POLL_S = 0.1  # how often the worker looks for news while the call runs


def in_panel_words(message: str, controls: dict[str, str], phrases: dict[str, str] | None = None) -> str:
    """A matseg message as a panel says it: ``phrases`` (the command line's words -> the
    panel's) are replaced, then the options it names (``--x``) become the panel's controls
    (``controls``: option -> the control's label), "pass --flag" becoming "tick 'flag'".
    Options the panel has no control for stay as they are."""
    for words, instead in (phrases or {}).items():
        message = message.replace(words, instead)

    def control(match: re.Match) -> str:
        label = controls.get(match.group(2))
        if label is None:
            return match.group(0)
        return f"tick '{label}'" if match.group(1) else f"'{label}'"

    return re.sub(r"(pass )?(--[a-z][a-z-]*)", control, message)


def wrapping(*labels) -> None:
    """Word-wrap magicgui ``labels`` and keep each as tall as its text at its width, whatever is
    said in it later. magicgui gives a label the height of its size hint, worked out for a width
    wider than the dock's: a long message (an audit of a dozen lines) was cut off at the bottom.
    magicgui's Label emits no ``changed``, so the height is fitted whenever the label is painted
    or resized (a new text repaints it); Qt's height-for-width policy would do it too, but it
    let the dock's layout narrow the dock below its contents, cutting them off at the right."""
    for label in labels:
        native = label.native  # a QLabel
        native.setWordWrap(True)
        native.installEventFilter(_fit_height_filter()(native))  # owned by the label


@functools.cache
def _fit_height_filter():
    """The event filter class, made once, when Qt is first needed (this module imports no Qt at
    its top)."""
    from qtpy.QtCore import QEvent, QObject, QRect, Qt

    class FitHeight(QObject):
        """Keeps its parent QLabel's minimum height at what its text needs at its width."""

        def eventFilter(self, native, event) -> bool:  # noqa: N802 (Qt's name)
            if event.type() in (QEvent.Type.Paint, QEvent.Type.Resize):
                width = max(native.contentsRect().width(), 50)
                box = native.fontMetrics().boundingRect(
                    QRect(0, 0, width, 100_000), Qt.TextFlag.TextWordWrap, native.text()
                )
                margins = native.height() - native.contentsRect().height()
                needed = box.height() + margins
                if native.minimumHeight() != needed:
                    native.setMinimumHeight(needed)  # a layout pass follows, then a repaint
            return False

    return FitHeight


@dataclass
class TaskResult:
    """How a task ended: its value, a user-facing error (bad input) or a cancel."""

    value: Any = None
    error: str | None = None
    cancelled: bool = False


class Task:
    """One call ``function(*args, progress=..., cancel=..., **kwargs)``; :meth:`steps` runs it."""

    def __init__(self, function: Callable, *args, **kwargs):
        self.function, self.args, self.kwargs = function, args, kwargs
        self.token = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.token.is_set()

    def cancel(self) -> None:
        self.token.set()

    def steps(self) -> Iterator[tuple[str, int, int]]:
        """Run the call, yielding its latest progress; return a :class:`TaskResult`."""
        updates: queue.Queue = queue.Queue()

        def progress(stage: str, done: int, total: int) -> None:
            updates.put((stage, int(done), int(total)))

        with ThreadPoolExecutor(1, thread_name_prefix="matseg-task") as pool:
            future = pool.submit(
                self.function, *self.args, progress=progress, cancel=self.token, **self.kwargs
            )
            while True:
                finished = future.done()
                latest = None
                try:
                    latest = updates.get(timeout=0 if finished else POLL_S)
                    while True:  # many tiles can finish between two looks: show the last
                        latest = updates.get_nowait()
                except queue.Empty:
                    pass
                if latest is not None:
                    yield latest
                if finished:
                    break
        try:
            return TaskResult(value=future.result())
        except matseg.Cancelled:
            return TaskResult(cancelled=True)
        except matseg.MatsegError as err:
            return TaskResult(error=str(err))


class CloseWatch:
    """Whether a magicgui widget's Qt object is gone (its dock was closed); cancels a task then.

    The slot connected to ``destroyed`` references neither the widget nor the panel and
    is kept alive here until the signal has come: a closure over the widget (a lambda
    calling one of its methods) is in a reference cycle with it and can be collected
    while Qt is still calling it, a segmentation fault under PyQt (silx-kit/silx#4605).
    """

    _waiting: set[CloseWatch] = set()  # watches whose widget still exists

    def __init__(self, widget):
        self.closed = False
        self.task: Task | None = None  # cancelled when the widget goes
        CloseWatch._waiting.add(self)
        widget.native.destroyed.connect(self._destroyed)
        # napari closes a dock by un-parenting its widget; while a task runs, the worker's
        # slots keep the panel (and so its Qt object) alive: being un-parented is the close
        self._unparented = _unparent_filter(self, docked=widget.native.parent() is not None)
        widget.native.installEventFilter(self._unparented)

    def _destroyed(self, *_) -> None:
        self.closed = True
        CloseWatch._waiting.discard(self)
        if self.task is not None:
            self.task.cancel()


def _unparent_filter(watch: CloseWatch, docked: bool):
    """A Qt event filter that tells ``watch`` when its widget, once docked, loses its parent."""
    from qtpy.QtCore import QEvent, QObject

    class Unparented(QObject):
        def __init__(self):
            super().__init__()
            self.docked = docked

        def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
            if event.type() == QEvent.ParentChange:
                if obj.parent() is not None:
                    self.docked = True
                elif self.docked and not watch.closed:
                    watch._destroyed()
            return False

    return Unparented()


class TaskPanel:
    """One matseg task at a time, in a worker thread, for a magicgui Container.

    Mixed into a panel that has ``run_button``, ``cancel_button``, ``progress``
    and ``status`` widgets: starting, progress, cancelling, closing and the
    common ends of a task (closed, cancelled, failed) are handled here once.
    """

    worker = None
    _task: Task | None = None
    _watch: CloseWatch | None = None
    # the command-line options matseg's messages name, by the label of this panel's control
    controls: dict[str, str] = {}
    phrases: dict[str, str] = {}  # and whole phrases, by what the panel says instead

    def in_words(self, message: str) -> str:
        return in_panel_words(message, self.controls, self.phrases)

    def say(self, message: str) -> None:
        """Show matseg's message in the status line, in the panel's words."""
        self.status.value = self.in_words(message)

    def watch_close(self, docked=None) -> None:
        """Cancel a running task when the panel's dock is closed: ``docked`` is the widget
        napari docks (the panel itself by default; the container holding it when it is one
        part of a dock: napari un-parents the outermost widget, never the panel inside)."""
        self._watch = CloseWatch(docked if docked is not None else self)

    @property
    def closed(self) -> bool:
        return self._watch is not None and self._watch.closed

    def start_task(self, task: Task, on_finished: Callable[[TaskResult], None], status: str) -> None:
        """Run ``task``; ``on_finished(result)`` is called in the GUI thread at the end."""
        from napari.qt.threading import create_worker

        self._task = task
        if self._watch is not None:
            self._watch.task = task
        self.worker = create_worker(task.steps, _start_thread=False)
        self.worker.yielded.connect(self._show_progress)
        self.worker.returned.connect(on_finished)
        self.worker.errored.connect(self._failed)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.status.value = status
        self.worker.start()

    def cancel(self, *_) -> None:
        if self._task is not None:
            if not self.closed:
                self.status.value = "cancelling..."
            self._task.cancel()

    def _show_progress(self, update: tuple[str, int, int]) -> None:
        if self.closed:
            return
        stage, done, total = update
        self.progress.value = int(round(100 * done / max(total, 1)))
        if not self._task.cancelled:
            self.status.value = f"{stage}: {done:,} of {total:,}"

    def _failed(self, error: Exception) -> None:
        if self.closed:
            return
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.status.value = f"failed: {type(error).__name__}: {error}"

    def task_succeeded(self, result: TaskResult, cancelled: str = "cancelled") -> bool:
        """The common end of a task: False, with the status said, unless it ended well."""
        if self.closed:
            return False
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if result.cancelled:
            self.status.value = cancelled
            return False
        if result.error is not None:
            self.say(result.error)
            return False
        self.progress.value = 100
        return True
