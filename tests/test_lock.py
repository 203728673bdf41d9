"""One writer per output: a second run refuses; a dead run's lock does not block; races have one winner."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from matseg.io.lock import lock_path

from .conftest import run
from .test_bad_input import snapshot

# holds the lock of argv[1], says so on stdout, then sleeps
HOLDER = (
    "import sys, time\n"
    "from matseg.io.lock import OutputLock\n"
    "with OutputLock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)
# tries the lock of argv[1] at the instant argv[2] (time.time()); prints 'won' (and holds the
# lock until its stdin closes, so every racer tries while it is held) or 'lost'
RACER = (
    "import sys, time\n"
    "from matseg.errors import MatsegError\n"
    "from matseg.io.lock import OutputLock\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
    "try:\n"
    "    with OutputLock(sys.argv[1]):\n"
    "        print('won', flush=True)\n"
    "        sys.stdin.read()\n"
    "except MatsegError:\n"
    "    print('lost', flush=True)\n"
)


def race(out, racers: int = 3, delay: float = 1.5) -> list[str]:
    """``racers`` processes try the lock of ``out`` at one instant; what each says, sorted."""
    start = time.time() + delay  # after every racer has imported matseg
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(out), str(start)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(racers)
    ]
    results = sorted(p.stdout.readline().strip() for p in procs)
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)
    return results


def _stale(path) -> None:
    """A lock file as a run killed with -9 leaves it: a dead process's record."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))


def test_second_writer_refuses_while_the_first_lives(tmp_path, small_sample, random_weights, capsys):
    out = tmp_path / "out.zarr"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"
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
    _stale(lock_path(out))
    args = ["segment", small_sample, "-o", out, "--weights", random_weights, "--model", "cheap", "--quiet"]
    assert run(args) == 0, capsys.readouterr().err
    assert out.exists() and not lock_path(out).exists()


def test_processes_racing_for_a_stale_lock_have_exactly_one_winner(tmp_path):
    out = tmp_path / "out.zarr"
    for attempt in range(2):
        _stale(lock_path(out))
        results = race(out)
        assert results == ["lost", "lost", "won"], (attempt, results)
        assert not lock_path(out).exists()
