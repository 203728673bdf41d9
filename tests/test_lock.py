"""One writer per output: a second run refuses; a dead run's lock does not block."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from matseg.io.lock import lock_path

from .conftest import run
from .test_bad_input import snapshot


def _hold(path, pid):
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": 0}))


def test_second_writer_refuses_while_the_first_lives(tmp_path, small_sample, random_weights, capsys):
    out = tmp_path / "out.zarr"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _hold(lock_path(out), writer.pid)
        before = snapshot(tmp_path)
        args = ["segment", small_sample, "-o", out, "--weights", random_weights, "--quiet"]
        assert run([*args, "--model", "cheap"]) == 2
        err = capsys.readouterr().err
        assert "being written by another matseg run" in err and str(writer.pid) in err
        assert len(err.strip().splitlines()) == 1
        assert snapshot(tmp_path) == before and not out.exists()
    finally:
        writer.kill()
        writer.wait()


def test_lock_of_a_dead_run_is_taken_over_and_released(tmp_path, small_sample, random_weights, capsys):
    out = tmp_path / "out.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _hold(lock_path(out), dead.pid)  # as a run killed with -9 leaves it
    args = ["segment", small_sample, "-o", out, "--weights", random_weights, "--model", "cheap", "--quiet"]
    assert run(args) == 0, capsys.readouterr().err
    assert out.exists() and not lock_path(out).exists()
