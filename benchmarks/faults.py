"""Fault injection at scale: kill -9 at random instants, then the same command; and lock races.

    python benchmarks/faults.py --kills 50 --races 100 --out docs/faults.json

Kills: each run of ``matseg segment`` (a small volume, the bundled weights, the cheap
net alone or the selector) is killed with SIGKILL, either at a random instant of a
clean run's duration or at a named fault point (``MATSEG_FAULT``: the lock taken, a
new store built but not yet renamed into place, renamed, the n-th tile recorded, an
old output moved aside by --overwrite). The same command is then run again, without
--overwrite, and its labels compared with an uninterrupted run's. Races: a stale lock
file (its holder dead), then several processes try the output's lock at one instant;
each winner holds it until every racer has answered, so two winners would be two
holders at once. Runs are forked from this process (no interpreter start-up each).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

FAULT_POINTS = ["after-lock", "after-create", "after-rename", "after-tile:1", "after-tile:5", "after-trash"]


def _child(args: list[str], fault: str | None) -> int:
    """Fork a child running the matseg CLI; return its pid."""
    pid = os.fork()
    if pid == 0:
        if fault:
            os.environ["MATSEG_FAULT"] = fault
        else:
            os.environ.pop("MATSEG_FAULT", None)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from matseg.cli import main

        try:
            main(args)
        except SystemExit as done:
            os._exit(done.code or 0)
        os._exit(0)
    return pid


def _run(args, fault=None, kill_after: float | None = None) -> tuple[int, float]:
    """Run the CLI in a child; kill it after ``kill_after`` s; return (status, seconds)."""
    started = time.perf_counter()
    pid = _child(args, fault)
    if kill_after is not None:
        deadline = started + kill_after
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _code(status), time.perf_counter() - started
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _code(status), time.perf_counter() - started


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _labels(out: Path) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")["labels/phases/0"][:]


def _left(out: Path) -> str:
    if not out.exists():
        return "nothing"
    try:
        return str(zarr.open_group(str(out), mode="r").attrs["matseg"].get("status"))
    except Exception:
        return "unreadable"


def kills(folder: Path, n: int, rng: np.random.Generator) -> dict:
    volume = folder / "vol.zarr"
    data = rng.normal(100, 20, (8, 128, 128)).astype(np.float32)
    zarr.create_array(str(volume), shape=data.shape, chunks=(2, 64, 64), dtype=data.dtype)[:] = data
    modes = {"cheap": ["--model", "cheap"], "auto": ["--max-expensive-fraction", "0.5"]}
    common = ["--tile", "2,64,64", "--workers", "1", "--quiet"]
    clean, seconds = {}, {}
    _run(["segment", str(volume), "-o", str(folder / "warm-up.zarr"), *modes["auto"], *common])
    for mode, extra in modes.items():
        out = folder / f"clean-{mode}.zarr"
        code, seconds[mode] = _run(["segment", str(volume), "-o", str(out), *extra, *common])
        assert code == 0, code
        clean[mode] = _labels(out)
    results, i = [], 0
    while sum(r["killed"] for r in results) < n:  # a run that finished before its instant is not a kill
        mode = list(modes)[i % 2]
        out = folder / f"kill-{i}.zarr"
        args = ["segment", str(volume), "-o", str(out), *modes[mode], *common]
        fault, instant = None, None
        if i % 5 == 0:  # a fifth at named fault points (the store-creation window among them)
            fault = FAULT_POINTS[(i // 5) % len(FAULT_POINTS)]
        else:
            instant = float(rng.uniform(0, seconds[mode]))
        if fault == "after-trash":  # --overwrite of a finished output, killed while deleting it
            assert _run(args)[0] == 0
            code, _ = _run([*args, "--overwrite"], fault=fault)
        else:
            code, _ = _run(args, fault=fault, kill_after=instant)
        left = _left(out)
        rerun, _ = _run(args)
        identical = rerun == 0 and np.array_equal(_labels(out), clean[mode])
        leftovers = sorted(p.name for p in folder.glob(f".{out.name}.matseg-*"))
        results.append(
            {
                "mode": mode,
                "fault": fault,
                "instant_s": instant,
                "killed": code == -signal.SIGKILL,
                "left": left,
                "rerun_exit": rerun,
                "identical": bool(identical),
                "leftovers": leftovers,
            }
        )
        print(json.dumps(results[-1]), flush=True)
        i += 1
    killed = [r for r in results if r["killed"]]
    return {
        "kills": len(killed),
        "finished_before_their_instant": len(results) - len(killed),
        "identical_after_rerun": sum(r["identical"] for r in killed),
        "all_runs_identical": all(r["identical"] for r in results),
        "left": {s: sum(r["left"] == s for r in killed) for s in sorted({r["left"] for r in killed})},
        "at_fault_points": sum(r["fault"] is not None for r in killed),
        "leftover_siblings": sum(bool(r["leftovers"]) for r in results),
        "clean_run_s": seconds,
        "runs": results,
    }


def _racer(out: str, barrier, answers, release) -> None:
    from matseg.errors import MatsegError
    from matseg.io.lock import OutputLock

    barrier.wait()
    try:
        with OutputLock(out):
            answers.put("won")
            release.wait()
    except MatsegError:
        answers.put("lost")


def races(folder: Path, n: int, racers: int) -> dict:
    from matseg.io.lock import lock_path

    ctx = mp.get_context("fork")
    out = folder / "raced.zarr"
    winners = []
    for _ in range(n):
        dead = ctx.Process(target=lambda: None)
        dead.start()
        dead.join()
        lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
        barrier, answers, release = ctx.Barrier(racers), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(target=_racer, args=(str(out), barrier, answers, release)) for _ in range(racers)
        ]
        for p in procs:
            p.start()
        said = [answers.get(timeout=60) for _ in procs]
        release.set()
        for p in procs:
            p.join()
        winners.append(said.count("won"))
    return {
        "races": n,
        "racers": racers,
        "exactly_one_holder": sum(w == 1 for w in winners),
        "two_or_more_holders": sum(w > 1 for w in winners),
        "no_holder": sum(w == 0 for w in winners),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--races", type=int, default=100)
    parser.add_argument("--racers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"races": races(folder, options.races, options.racers)}
        print(json.dumps(result["races"]), flush=True)
        result["kills"] = kills(folder, options.kills, np.random.default_rng(options.seed))
    summary = {k: v for k, v in result["kills"].items() if k != "runs"}
    print(json.dumps({"races": result["races"], "kills": summary}, indent=2))
    if options.out:
        options.out.write_text(json.dumps(result, indent=2) + "\n")
    done = result["kills"]
    kills_ok = done["identical_after_rerun"] == options.kills and done["all_runs_identical"]
    sys.exit(0 if kills_ok and not result["races"]["two_or_more_holders"] else 1)


if __name__ == "__main__":
    main()
