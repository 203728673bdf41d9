"""Where tiles run: dask's threads in this process, or a dask.distributed cluster.

``--cluster local`` starts worker processes on this machine (distributed's
LocalCluster), ``--cluster slurm`` submits worker jobs to SLURM (dask-jobqueue's
SLURMCluster), and ``--cluster tcp://host:port`` joins a running scheduler. The
same dask graph runs on all of them; only the scheduler differs.

Placement by cost: with ``costly_workers`` (or, on a running scheduler, workers
started with ``--resources costly=N`` and ``--resources cheap=N``) the tasks
of the cheap pass and the blending ask for the worker resource ``cheap`` and
the costlier candidates' tasks for ``costly``, so each runs on its own pool
(e.g. CPU nodes for the cheap pass, GPU nodes for the expensive net).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import dask

from matseg.errors import MatsegError
from matseg.slurm import wait_for_jobs
from matseg.tiling import GROUP_TILES, group_layers, layer_groups
from matseg.workers import (
    CHEAP,
    COSTLY,
    NoInterrupts,
    TorchThreads,
    local_cluster,
    slurm_cluster,
    torch_threads,
)

logger = logging.getLogger(__name__)

TASKS_PER_THREAD = 8  # tiles per thread in one batch of the threaded scheduler
# keys of a cluster YAML that are matseg's own; every other key goes to SLURMCluster as it is
_OWN_KEYS = {"workers", "costly_workers", "costly", "threads", "memory"}
# a worker process with torch and the models holds ~0.5 GB before its first tile (measured on a
# 16 x 256 x 256 sample: a local worker of 400 MB was killed by its nanny while starting, a
# traceback per worker; one of 500 MB when its first tiles ran; 600 MB ran the default)
MIN_WORKER_MEMORY = 600_000_000


@dataclass(frozen=True)
class ClusterSpec:
    """What to run on: ``kind`` is None (threads here), ``local``, ``slurm`` or a ``tcp://`` address.

    ``workers`` is the number of worker processes (``local``) or jobs (``slurm``)
    of the cheap pool; ``costly_workers`` adds a second pool for the costlier
    candidates, with ``costly`` overriding its SLURM settings (e.g. a GPU queue).
    ``slurm`` holds SLURMCluster's own settings (queue, account, walltime,
    cores, job_extra_directives, ...).
    """

    kind: str | None = None
    workers: int | None = None
    threads: int | None = None
    memory: str | None = None
    costly_workers: int = 0
    costly: Mapping = field(default_factory=dict)
    slurm: Mapping = field(default_factory=dict)

    @classmethod
    def from_options(cls, kind: str | None, config: str | os.PathLike | None = None, **flags) -> ClusterSpec:
        """From ``--cluster``, an optional YAML config and flags (flags win; None = not given)."""
        if kind is None and config is None and not any(v for v in flags.values()):
            return cls()
        settings = _read_config(config) if config else {}
        slurm = {k: v for k, v in settings.items() if k not in _OWN_KEYS}
        own = {k: settings[k] for k in _OWN_KEYS & settings.keys()}
        for name in ("queue", "account", "walltime", "cores", "job_extra_directives"):
            value = flags.pop(name, None)
            if value:
                slurm[name] = list(value) if name == "job_extra_directives" else value
        own.update({k: v for k, v in flags.items() if v is not None})
        unknown = set(own) - {f.name for f in fields(cls)}
        if unknown:
            raise MatsegError(f"unknown cluster settings: {', '.join(sorted(unknown))}")
        spec = cls(kind=kind, slurm=slurm, **own)
        spec.check()
        return spec

    def check(self) -> None:
        kind = self.kind
        if kind not in (None, "local", "slurm") and not str(kind).startswith(("tcp://", "tls://")):
            raise MatsegError(f"--cluster must be local, slurm or tcp://HOST:PORT, got '{kind}'")
        if kind is None and (self.costly_workers or self.slurm or self.memory):
            raise MatsegError("cluster settings need --cluster local, slurm or tcp://HOST:PORT")
        if kind != "slurm" and (self.slurm or self.costly):
            raise MatsegError(f"SLURM settings ({', '.join(sorted(self.slurm))}) need --cluster slurm")
        if str(kind).startswith(("tcp://", "tls://")) and (self.workers or self.costly_workers):
            raise MatsegError("a running scheduler brings its own workers: drop --workers/--costly-workers")
        for name in ("workers", "threads", "costly_workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise MatsegError(f"cluster setting {name} must be a whole number >= 0, got {value!r}")
        if self.memory is not None:
            from dask.utils import parse_bytes

            try:
                size = parse_bytes(str(self.memory))
                if size <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise MatsegError(
                    f"cluster setting memory must be a size such as 4GB or 500MiB, got {self.memory!r}"
                ) from None
            if size < MIN_WORKER_MEMORY:  # the nanny kills a worker over it before it runs a tile
                raise MatsegError(
                    f"cluster setting memory {self.memory!r} is {size:,} bytes a worker: a worker with "
                    f"torch and the models needs 600MB and more, some GB for large tiles; give e.g. 4GB"
                )


def _read_config(path) -> dict:
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise MatsegError(f"cannot read cluster config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise MatsegError(f"cluster config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(settings, dict):
        raise MatsegError(f"cluster config {path} must be a mapping of settings")
    return settings


@dataclass
class Backend:
    """Runs dask graphs: with ``client`` on a distributed cluster, else on threads here."""

    client: object | None = None
    workers: int = 1
    by_cost: bool = False  # tasks ask for the 'cheap' / 'costly' worker resource
    description: dict = field(default_factory=dict)

    def annotate(self, cost: str):
        """Context in which built tasks ask for the worker resource of their cost (``cheap``/``costly``)."""
        if not self.by_cost:
            return contextlib.nullcontext()
        return dask.annotate(resources={cost: 1})

    @property
    def group_tiles(self) -> int:
        """Tiles whose tasks are made and computed at a time (:func:`matseg.tiling.layer_groups`):
        at least 32 per worker, so that a group's last tiles leave few workers idle."""
        return max(GROUP_TILES, 32 * self.workers)

    def compute_tiles(
        self,
        todo: Sequence[tuple[int, tuple[int, ...]]],
        tasks: Callable[[list, range | None], list],
        advance: Callable[[int], None] | None = None,
    ) -> list:
        """Results of the tasks ``tasks(group, layers)`` makes for the tiles of ``todo``
        (position, index, in grid order), in order: the one tile loop of matseg.

        The tasks are made and computed group by group of whole layers of tiles
        (:func:`matseg.tiling.layer_groups`, at most :attr:`group_tiles` tiles a group;
        ``layers``: :func:`matseg.tiling.group_layers`, for :func:`matseg.tiling.tile_blocks`),
        so that the graph is bounded by a group, not by the volume (:meth:`compute_groups`).
        """
        groups = (tasks(group, group_layers(group)) for group in layer_groups(todo, self.group_tiles))
        return self.compute_groups(groups, len(todo), advance)

    def compute(self, tasks: Sequence, advance: Callable[[int], None] | None = None) -> list:
        """Results of ``tasks`` (in order), computed on this backend."""
        return self.compute_groups([tasks], len(tasks), advance)

    def compute_groups(
        self, groups: Iterable[Sequence], total: int, advance: Callable[[int], None] | None = None
    ) -> list:
        """Results of the tasks of ``groups`` (in order), one group after the other.

        ``advance(n)`` is called as tasks finish (``n`` of them); if it raises (a run
        cancelled), the computation stops: the tasks running finish, no other starts.

        ``groups`` may be a generator: the next group's tasks are made while a group
        runs (queued behind it, so that no worker waits for them) and no sooner, so at
        most two groups' tasks exist at once however large the volume (a task is some
        6 kB of graph: 13 GB for the 2 million tiles of a terabyte, made at once).

        On threads, the tasks go in batches of ``TASKS_PER_THREAD`` per thread: dask's
        threaded scheduler would otherwise read input chunks far ahead of the tiles
        that use them, and memory would grow with the volume (a distributed
        scheduler queues root tasks itself, so a cluster gets a whole group at once).
        Two batches share the threads at a time, so that a thread that finishes its
        part of one batch goes on with the next instead of waiting for the batch's last tile.
        """
        advance = advance or (lambda n: None)
        if self.client is None:
            return self._on_threads(groups, advance)
        results, running = [], None
        for tasks in groups:
            futures = self.client.compute(list(tasks))
            if running is not None:
                results += self._gathered(running, advance)
            running = futures
        if running is not None:
            results += self._gathered(running, advance)
        return results

    def _gathered(self, futures: list, advance: Callable[[int], None]) -> list:
        from distributed import as_completed

        try:
            for future in as_completed(futures):
                if future.status == "error":  # the first failed task stops the run (no waiting
                    future.result()  # for the others, nor for workers that may never come back)
                advance(1)
        except BaseException:
            self.client.cancel(futures)
            raise
        return self.client.gather(futures)

    def _on_threads(self, groups: Iterable[Sequence], advance: Callable[[int], None]) -> list:
        size = TASKS_PER_THREAD * self.workers
        threads = ThreadPoolExecutor(self.workers, thread_name_prefix="matseg-tile")
        drivers = ThreadPoolExecutor(2, thread_name_prefix="matseg-batch")
        results, running = [], []  # running: (tiles, future) of each batch of the group before

        def collect(batches) -> None:
            for _, future in batches:
                results.extend(future.result())

        try:
            for tasks in groups:
                queued = []
                for start in range(0, len(tasks), size):
                    # each finished task advances the count (and a cancelled run stops there)
                    batch = [dask.delayed(_counted)(task, advance) for task in tasks[start : start + size]]
                    future = drivers.submit(dask.compute, *batch, scheduler="threads", pool=threads)
                    queued.append((len(batch), future))
                collect(running)
                running = queued
            collect(running)
        except BaseException:  # an error or Ctrl-C: stop at the tiles already running
            threads.shutdown(wait=False, cancel_futures=True)  # the batches' drivers fail fast
            raise
        finally:
            drivers.shutdown(cancel_futures=True)
            threads.shutdown()
        return results


class SharedResults:
    """Results that tasks of several batches need, computed once (the threads backend).

    :meth:`Backend.compute` on threads runs its tasks as separate dask computations of a
    few tiles each: a task that tasks of two batches depend on (a stage-2 candidate whose
    neighbours fall into two batches) would run once in each. Run through :meth:`get`,
    it runs once; a batch that asks while another is running it waits for that result,
    which is kept until its last user has called :meth:`release`.
    """

    def __init__(self):
        self._uses: dict[Hashable, int] = {}  # users still to come, per key (see expect)
        self._results: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def expect(self, keys) -> None:
        """One more user of each of ``keys`` (before the computation of those users starts)."""
        with self._lock:  # (the next group's users are counted while a group runs)
            for key in keys:
                self._uses[key] = self._uses.get(key, 0) + 1

    def get(self, key: Hashable, function: Callable, *args):
        """``function(*args)``, computed by the first caller of ``key`` only."""
        with self._lock:
            result = self._results.get(key)
            first = result is None
            if first:
                result = self._results[key] = Future()
        if first:
            try:
                result.set_result(function(*args))
            except BaseException as err:
                result.set_exception(err)
                raise
        return result.result()

    def release(self, key: Hashable) -> None:
        """One user of ``key`` is done with it; the last one frees it."""
        with self._lock:
            self._uses[key] = self._uses.get(key, 1) - 1
            if self._uses[key] <= 0:
                self._results.pop(key, None)


def _counted(result, advance: Callable[[int], None]):
    """``result``, once ``advance(1)`` has counted it."""
    advance(1)
    return result


@contextlib.contextmanager
def backend(spec: ClusterSpec, workers: int | None = None) -> Iterator[Backend]:
    """The backend ``spec`` asks for, started for the duration of the block and closed after it.

    ``workers`` (dask threads here) is used when ``spec`` has no cluster.
    """
    from matseg.models.inference import describe_device

    if spec.kind is None:
        n = int(workers or os.cpu_count() or 1)
        import torch

        before = torch.get_num_threads()  # the caller's, given back after the block
        torch.set_num_threads(torch_threads(n))
        description = {"scheduler": "threads", "workers": n, "devices": [describe_device()]}
        try:
            yield Backend(None, n, description=description)
        finally:
            torch.set_num_threads(before)
        return
    from distributed import Client

    if spec.kind == "local" and not spec.workers:  # one worker per core the costly pool leaves
        cores = (os.cpu_count() or 1) // (spec.threads or 1)
        spec = replace(spec, workers=max(1, cores - spec.costly_workers))
    elif spec.kind == "slurm" and not spec.workers:
        spec = replace(spec, workers=1)
    with contextlib.ExitStack() as stack:
        if spec.kind == "local":
            cluster = stack.enter_context(local_cluster(spec))
        elif spec.kind == "slurm":
            cluster = stack.enter_context(slurm_cluster(spec))
        else:
            cluster = spec.kind
        try:
            client = stack.enter_context(Client(cluster, timeout="60s"))
        except OSError as err:
            raise MatsegError(f"cannot reach the dask scheduler at {spec.kind}: {err}") from None
        n_expected = spec.workers + spec.costly_workers if spec.kind in ("local", "slurm") else 1
        if spec.kind == "local":
            client.register_plugin(TorchThreads(torch_threads(n_expected * (spec.threads or 1))))
            client.register_plugin(NoInterrupts())
        elif spec.kind == "slurm":
            client.register_plugin(TorchThreads(1))  # a job's cores are its dask threads
        try:
            if spec.kind == "slurm":
                wait_for_jobs(client, cluster, n_expected, _wait_s(spec))
            else:
                client.wait_for_workers(n_expected, timeout=_wait_s(spec))
        except TimeoutError:
            raise MatsegError(
                f"no dask workers joined {spec.kind} within {_wait_s(spec):.0f} s "
                "(check the queue with squeue, or the scheduler's address)"
            ) from None
        info = client.scheduler_info()["workers"].values()
        resources = [set(w.get("resources", {})) for w in info]
        by_cost = any(CHEAP in r for r in resources) and any(COSTLY in r for r in resources)
        n_threads = sum(w.get("nthreads", 1) for w in info)
        try:  # where each worker runs tiles: a bad $MATSEG_DEVICE, or no matseg there, fails here
            devices = sorted(set(client.run(describe_device).values()))
        except MatsegError:
            raise
        except Exception as err:
            raise MatsegError(
                f"the dask workers at {client.scheduler.address} cannot run matseg "
                f"({type(err).__name__}: {err}); install it where they run"
            ) from None
        description = {
            "scheduler": spec.kind if spec.kind in ("local", "slurm") else "distributed",
            "address": client.scheduler.address,
            "workers": len(resources),
            "threads": n_threads,
            "placement_by_cost": by_cost,
            "devices": devices,
        }
        link = client.dashboard_link if _has_dashboard(client) else "not running (install bokeh)"
        logger.info("dask %s: %d workers; dashboard %s", description["scheduler"], len(resources), link)
        yield Backend(client, n_threads, by_cost, description)


def _wait_s(spec: ClusterSpec) -> float:
    return 600.0 if spec.kind == "slurm" else 60.0


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:  # an old scheduler that does not say
        return False
