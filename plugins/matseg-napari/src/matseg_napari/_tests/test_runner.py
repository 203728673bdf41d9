"""A panel's command when its widget goes: cancelled, by a watch that does not keep the widget."""

from __future__ import annotations

import gc
import sys
import threading
import weakref

from magicgui.widgets import Container

from matseg_napari._runner import CloseWatch, CommandRun


def test_a_destroyed_widget_cancels_its_command_and_is_not_kept_alive(qtbot):
    widget = Container()
    watch = CloseWatch(widget)
    run = CommandRun([sys.executable, "-c", "import time; time.sleep(120)"])
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (list(run.steps()), finished.set()), daemon=True)
    thread.start()
    qtbot.waitUntil(lambda: run.process is not None, timeout=10_000)
    watch.run = run
    alive = weakref.ref(widget)
    # closing a napari dock un-parents its widget; the widget's Qt object then goes with
    # the Python object, in a garbage collection (where a closure slot would be collected too)
    del widget
    gc.collect()
    qtbot.waitUntil(lambda: watch.closed, timeout=10_000)
    assert alive() is None  # the watch holds no reference to the widget
    assert finished.wait(15) and run.cancelled
    assert run.process.returncode != 0  # interrupted, not finished
    assert watch not in CloseWatch._waiting
