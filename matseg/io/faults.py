"""Fault points: a testing hook, never a user setting.

``MATSEG_FAULT=NAME`` kills the process with SIGKILL (as ``kill -9`` or a job's
time limit would) when it reaches the point ``NAME``; ``NAME:N`` at the N-th
time it does. The fault-injection tests use it to stop a run exactly inside a
window too short to hit by timing (the creation of an output store). Points:
``after-lock``, ``after-create`` (a new store built, not yet renamed into
place), ``after-rename``, ``after-trash`` (an old output moved aside, not yet
deleted), ``after-tile`` (a tile's record written).
"""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here if ``$MATSEG_FAULT`` names this point (testing only)."""
    wanted = os.environ.get("MATSEG_FAULT")
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= (int(count) if count.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
