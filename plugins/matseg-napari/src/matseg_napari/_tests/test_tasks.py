"""A matseg call in a worker: progress reaches the GUI, cancel stops it, a closed dock cancels it."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from magicgui.widgets import Container

import matseg
from matseg_napari._tasks import CloseWatch, Task


def tiles(n, *, progress, cancel, fail_at=None):
    """A stand-in for a matseg call: reports each of ``n`` tiles, honours the cancel token."""
    for done in range(1, n + 1):
        if cancel.is_set():
            raise matseg.Cancelled("cancelled")
        if done == fail_at:
            raise matseg.MatsegError("input not found: scan.zarr")
        progress("cheap pass", done, n)
    return {"tiles": n}


def run(task: Task):
    """Drain a task's generator as a napari worker does: its yields, then its return value."""
    steps, generator = [], task.steps()
    while True:
        try:
            steps.append(next(generator))
        except StopIteration as end:
            return steps, end.value


def test_progress_is_reported_and_the_value_returned():
    steps, result = run(Task(tiles, 50))
    assert result.value == {"tiles": 50} and not result.cancelled and result.error is None
    assert steps and steps[-1] == ("cheap pass", 50, 50)
    assert [done for _, done, _ in steps] == sorted(done for _, done, _ in steps)


def test_a_bad_input_is_a_message_not_a_crash():
    _, result = run(Task(tiles, 10, fail_at=3))
    assert result.error == "input not found: scan.zarr" and result.value is None


def test_cancel_stops_the_call_at_its_next_step():
    started = threading.Event()

    def slow(*, progress, cancel):
        started.set()
        for done in range(10_000):
            if cancel.wait(0.01):
                raise matseg.Cancelled("cancelled")
            progress("candidates", done, 10_000)
        return "finished"

    task = Task(slow)
    threading.Timer(0.2, task.cancel).start()
    _, result = run(task)
    assert started.is_set() and result.cancelled and result.value is None


def test_an_unexpected_error_reaches_the_worker():
    def broken(*, progress, cancel):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run(Task(broken))


def test_a_destroyed_widget_cancels_its_task_and_is_not_kept_alive(qtbot):
    widget = Container()
    watch = CloseWatch(widget)
    task = Task(tiles, 1)
    watch.task = task
    alive = weakref.ref(widget)
    # closing a napari dock un-parents its widget; the widget's Qt object then goes with
    # the Python object, in a garbage collection (where a closure slot would be collected too)
    del widget
    gc.collect()
    qtbot.waitUntil(lambda: watch.closed, timeout=10_000)
    assert alive() is None  # the watch holds no reference to the widget
    assert task.cancelled
    assert watch not in CloseWatch._waiting


def test_closing_the_dock_cancels_a_running_task(qtbot, make_napari_viewer):
    """napari closes a dock by un-parenting its widget; a running task's worker keeps the panel
    alive, so the widget is not destroyed then: being un-parented cancels the task."""
    viewer = make_napari_viewer()
    widget = Container()
    dock = viewer.window.add_dock_widget(widget, name="matseg test")
    watch = CloseWatch(widget)
    task = Task(tiles, 1)
    watch.task = task
    assert not watch.closed
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: watch.closed, timeout=10_000)
    assert task.cancelled
