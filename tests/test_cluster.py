"""The same run on dask.distributed: a local cluster from the CLI, and a running scheduler whose
workers form two pools, the cheap pass on one and the costlier candidates on the other."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import zarr

import matseg
from matseg.cluster import ClusterSpec
from matseg.malloc import MALLOC_SETTINGS
from matseg.models.inference import describe_device
from matseg.workers import local_cluster

from .conftest import run

TILE = (4, 128, 128)
MIX = {"max_expensive_fraction": 0.5}  # some tiles run a costlier candidate, the rest stay cheap


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from matseg.sample import write_sample

    path = tmp_path_factory.mktemp("cluster") / "volume.zarr"
    write_sample(path, (8, 256, 256), seed=2)
    return path


@pytest.fixture(scope="module")
def threaded(tmp_path_factory, volume):
    out = tmp_path_factory.mktemp("threads") / "phases.zarr"
    return out, matseg.segment(volume, out, tile=TILE, workers=1, **MIX)


def _same_labels(a, b) -> None:
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ("labels/phases/0", "labels/decisions/0"):
        np.testing.assert_array_equal(ra[name][:], rb[name][:], err_msg=name)


def test_cli_local_cluster_gives_the_threaded_result(tmp_path, volume, threaded, capsys, monkeypatch):
    from matseg.cluster import Backend

    # a group of tasks per layer of tiles (2 x 2 tiles): the next layer's queued while one runs
    monkeypatch.setattr(Backend, "group_tiles", property(lambda self: 4))
    out = tmp_path / "phases.zarr"
    args = ["segment", volume, "-o", out, "--tile", "4,128,128", "--max-expensive-fraction", "0.5"]
    assert run([*args, "--cluster", "local", "--workers", "2", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "dashboard" in captured.err and "cluster    local" in captured.out
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["run"]["scheduler"] == "local" and report["run"]["workers"] == 2
    assert report["run"]["devices"] == [describe_device()]  # the workers see this machine's device
    assert report["decisions"] == threaded[1]["decisions"]
    _same_labels(out, threaded[0])


def test_cheap_and_costly_tasks_run_on_their_own_worker_pools(tmp_path, volume, threaded):
    from distributed import Client, get_task_stream

    pools = ClusterSpec("local", workers=1, costly_workers=1)
    with local_cluster(pools) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        resources = {w["name"]: set(w["resources"]) for w in client.scheduler_info()["workers"].values()}
        assert sorted(map(sorted, resources.values())) == [["cheap"], ["costly"]]
        # the workers' malloc is set as the matseg command sets its own (not distributed's trimming)
        environ = client.run(lambda: {k: os.environ.get(k) for k in MALLOC_SETTINGS})
        assert all(e == {k: str(v) for k, (_, v) in MALLOC_SETTINGS.items()} for e in environ.values())
        address = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        cheap_worker = next(address[n] for n, r in resources.items() if "cheap" in r)
        out = tmp_path / "phases.zarr"
        with get_task_stream(client) as stream:
            report = matseg.segment(volume, out, tile=TILE, cluster=cluster.scheduler_address, **MIX)
    assert report["run"]["placement_by_cost"] and report["run"]["scheduler"] == "distributed"
    where: dict[str, set] = {}
    for task in stream.data:
        key = str(task["key"])
        stage = key.split("-")[1] if key.startswith("matseg-") else "other"
        where.setdefault(stage, set()).add(task["worker"] == cheap_worker)
    assert where["cheap"] == {True} and where["finish"] == {True}  # cheap pass and blending: cheap pool
    assert where["candidate"] == {False}  # the costlier candidates: the costly pool only
    _same_labels(out, threaded[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cluster", "mars"], "--cluster must be local, slurm or tcp://HOST:PORT"),
        (["--queue", "gpu"], "cluster settings need --cluster"),
        (["--cluster", "local", "--queue", "gpu"], "SLURM settings (queue) need --cluster slurm"),
        (["--cluster", "local", "--cluster-config", "missing.yaml"], "cannot read cluster config"),
        (["--cluster", "local", "--memory", "lots"], "memory must be a size such as 4GB"),
        (["--cluster", "local", "--memory", "0"], "memory must be a size such as 4GB"),
        (["--cluster", "local", "--memory", "4"], "'4' is 4 bytes a worker"),  # meant: 4 GB
        (["--cluster", "local", "--memory", "100MB"], "needs 600MB and more"),
    ],
)
def test_bad_cluster_options(tmp_path, volume, capsys, args, message):
    from .test_bad_input import snapshot

    before = snapshot(tmp_path)
    out = tmp_path / "out.zarr"
    assert run(["segment", volume, "-o", out, "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_threads_keep_order_and_stop_at_the_first_error():
    """Batches overlap on the threads; results come back in task order, and a failing
    tile stops the run at the tiles already running (Ctrl-C takes the same path)."""
    import threading
    import time

    import dask

    from matseg.cluster import TASKS_PER_THREAD, Backend

    batch = TASKS_PER_THREAD * 2
    started, lock = [], threading.Lock()

    def tile(i):
        with lock:
            started.append(i)
        time.sleep(0.02)
        if i < batch:  # every tile of the first batch fails
            raise ValueError(f"tile {i} is bad")
        return i * i

    runner = Backend(None, workers=2)
    tiles = range(batch, 7 * batch)
    assert runner.compute([dask.delayed(tile)(i) for i in tiles]) == [i * i for i in tiles]
    started.clear()
    with pytest.raises(ValueError, match="is bad"):
        runner.compute([dask.delayed(tile)(i) for i in range(6 * batch)])
    time.sleep(0.2)  # nothing keeps running after the error: not even the second batch in flight
    assert len(started) < batch, len(started)


def test_shared_results_run_once_for_concurrent_batches_and_free_after_the_last_user():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from matseg.cluster import SharedResults

    calls = []

    def slow(x):
        calls.append(x)
        time.sleep(0.2)
        return x * 2

    shared = SharedResults()
    shared.expect(["a", "a"])  # two users
    with ThreadPoolExecutor(3) as pool:  # three batches asking at once
        results = list(pool.map(lambda _: shared.get("a", slow, 21), range(3)))
    assert results == [42, 42, 42] and calls == [21]
    shared.release("a")
    assert shared.get("a", slow, 1) == 42  # one user still to come: kept
    shared.release("a")
    assert shared.get("a", slow, 1) == 2 and calls == [21, 1]  # freed after its last user

    started = threading.Event()

    def failing():
        started.set()
        time.sleep(0.1)
        raise ValueError("boom")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(shared.get, "b", failing)
        started.wait(5)
        second = pool.submit(shared.get, "b", failing)  # waits for the first, gets its error
        for future in (first, second):
            with pytest.raises(ValueError, match="boom"):
                future.result(10)


_RELEASE = threading.Event()  # ends the tasks of _fails_or_waits that wait


def _fails_or_waits(i):
    if i == 0:
        raise RuntimeError("this tile's worker died")
    _RELEASE.wait(60)  # stands for a task no worker is left to run
    return i


def test_a_cluster_run_stops_at_the_first_failed_task():
    """On a cluster, a failed task (a worker killed on it twice: KilledWorker) ends the run at
    once: it does not wait for tasks that may never run (no worker came back to run them)."""
    import time

    import dask
    from distributed import Client, LocalCluster

    from matseg.cluster import Backend

    _RELEASE.clear()
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="worker died"):
            Backend(client, 2).compute([dask.delayed(_fails_or_waits)(i) for i in range(2)])
        waited = time.monotonic() - start
        _RELEASE.set()
    assert waited < 30


def test_no_worker_left_is_one_line_and_exit_code_2(tmp_path, volume, capsys, monkeypatch):
    """Tasks that no worker is left to run (dask's no-workers timeout) end the command in one line."""
    from distributed.scheduler import NoWorkerError

    import matseg.cli
    import matseg.pipeline.run

    def gone(*args, **kwargs):
        raise NoWorkerError("matseg-tile-0-0-0", 60.0)

    monkeypatch.setattr(matseg.pipeline.run, "segment", gone)
    with pytest.raises(SystemExit) as exit_:
        matseg.cli.main(["segment", str(volume), "-o", str(tmp_path / "o.zarr"), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "matseg: error: a dask worker died and none is left to run matseg-tile-0-0-0 (killed, or out of "
        "memory); the finished tiles are kept: run the same command again"
    )


def test_a_worker_with_a_bad_device_is_refused_before_any_tile(tmp_path, volume, capsys):
    """Workers are asked where they run before any tile is sent: one with a bad
    $MATSEG_DEVICE stops the run with one line, exit code 2, and no output left."""
    from distributed import LocalCluster

    from .test_bad_input import assert_refused

    with LocalCluster(n_workers=1, threads_per_worker=1, env={"MATSEG_DEVICE": "gpu0"}) as cluster:
        args = ["segment", volume, "-o", tmp_path / "o.zarr", "--cluster", cluster.scheduler_address]
        assert_refused(tmp_path, args, capsys, "not a torch device")
    assert not (tmp_path / "o.zarr").exists()


def test_workers_that_cannot_run_matseg_are_refused(tmp_path, volume, capsys, monkeypatch):
    """Workers without matseg (say, a shared scheduler's) fail when first asked, in one line."""
    from distributed import LocalCluster

    import matseg.models.inference

    from .test_bad_input import assert_refused

    def missing():
        raise ModuleNotFoundError("No module named 'matseg'")

    monkeypatch.setattr(matseg.models.inference, "describe_device", missing)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp") as cluster:
        args = ["segment", volume, "-o", tmp_path / "o.zarr", "--cluster", cluster.scheduler_address]
        assert_refused(tmp_path, args, capsys, "cannot run matseg (ModuleNotFoundError")


def test_the_next_group_is_made_while_one_runs_and_no_sooner():
    """The next group's tasks are made while a group runs, the one after only once that
    group is done: at most two groups' tasks exist at once, however many a volume has."""
    import threading
    import time

    import dask

    from matseg.cluster import Backend

    events = []
    made = [threading.Event() for _ in range(5)]

    def slow(event):
        _, g, i = event
        time.sleep(0.02)
        if i == 5:  # a group's last task ends only once the next group is made (or 30 s)
            made[g + 1].wait(30)
        events.append(event)
        return i

    def groups():
        for g in range(4):
            events.append(("made", g))
            made[g].set()
            yield [dask.delayed(slow)(("ran", g, i)) for i in range(6)]
        made[4].set()

    assert Backend(None, workers=2).compute_groups(groups(), 24) == list(range(6)) * 4
    order = [e[:2] for e in events]
    assert sorted(order) == sorted([("made", g) for g in range(4)] + [("ran", g) for g in range(4)] * 6)
    for g in range(2):
        last_ran = max(i for i, e in enumerate(order) if e == ("ran", g))
        assert order.index(("made", g + 1)) < last_ran  # made while group g runs
        assert order.index(("made", g + 2)) > last_ran  # not before group g is done


def test_ctrl_c_stops_a_local_cluster_run_in_one_line(tmp_path, volume):
    """Ctrl-C in a terminal sends SIGINT to every process of the command: the worker processes
    leave it to the command, which stops the run (resumable) and says so, with no traceback."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "phases.zarr"
    command = [sys.executable, "-m", "matseg", "segment", str(volume), "-o", str(out), "--tile", "2,128,128"]
    command += ["--lambda", "0.001", "--cluster", "local", "--workers", "1", "--no-bars"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in process.stderr:  # the workers have joined, and the run goes on
        lines.append(line)
        if "cheap pass" in line:
            break
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)  # as the terminal does: the whole process group
    rest = process.communicate(timeout=120)[1]
    said = "".join(lines) + rest
    assert process.returncode != 0, said
    assert "matseg: aborted" in said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
