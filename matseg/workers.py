"""Starting a cluster's workers: processes on this machine or SLURM jobs, their environment
(the malloc settings and one thread per library; torch threads and Ctrl-C as worker plugins)
and their pools by cost."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from matseg.errors import MatsegError
from matseg.malloc import MALLOC_SETTINGS
from matseg.slurm import quiet_refused_submissions

# how long tasks wait when a local cluster has no worker left before they fail
NO_WORKERS_TIMEOUT = "60s"
# worker resources of the two pools: the cheap pass and blending, the costlier candidates
CHEAP, COSTLY = "cheap", "costly"
# The environment of worker processes: the same malloc settings (distributed's default
# MALLOC_TRIM_THRESHOLD_ makes a worker return and re-fault activation buffers on every layer)
# and one thread per library.
WORKER_ENVIRON = {
    "OMP_NUM_THREADS": 1,
    "MKL_NUM_THREADS": 1,
    "OPENBLAS_NUM_THREADS": 1,
    **{name: value for name, (_, value) in MALLOC_SETTINGS.items()},
}


def _worker_died(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("workers died while trying to run it" in message or "without any running workers" in message)


def _quiet_dead_workers() -> None:
    """Drop the scheduler's errors for a task whose workers kept dying, or that no worker was
    left to run: the command says it in one line."""
    if _worker_died not in logging.getLogger("distributed.scheduler").filters:
        logging.getLogger("distributed.scheduler").addFilter(_worker_died)


@contextlib.contextmanager
def local_cluster(spec):
    """Worker processes on this machine (distributed's LocalCluster) for ``spec`` (a ClusterSpec)."""
    from distributed import LocalCluster

    _quiet_dead_workers()

    threads = spec.threads or 1
    settings = {
        "distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
        # a worker killed while its nanny is still starting is not restarted: without this the
        # tasks would wait for a worker forever instead of failing
        "distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT,
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=0,
            threads_per_worker=threads,
            memory_limit=spec.memory or "auto",
            dashboard_address=":0",
            silence_logs=40,
        )

        def with_resources(options, name):
            return {**options, "resources": {name: options.get("nthreads", threads)}}

        with cluster:
            _scale_pools(cluster, spec, with_resources)
            yield cluster


@contextlib.contextmanager
def slurm_cluster(spec):
    """Worker jobs on SLURM (dask-jobqueue's SLURMCluster) for ``spec`` (a ClusterSpec)."""
    from dask_jobqueue import SLURMCluster

    settings = {"cores": 1, "processes": 1, "memory": spec.memory or "2GB", **spec.slurm}
    settings.setdefault("job_name", "matseg-worker")
    environ = json.dumps(WORKER_ENVIRON)
    settings["job_script_prologue"] = [
        f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{environ}'",
        *settings.get("job_script_prologue", []),
    ]
    quiet_refused_submissions()
    _quiet_dead_workers()
    try:
        cluster = SLURMCluster(**settings)
    except (TypeError, ValueError) as err:
        raise MatsegError(f"SLURM settings not accepted by dask-jobqueue: {err}") from None

    def with_resources(options, name):
        threads = max(1, int(options.get("cores", 1)) // int(options.get("processes") or 1))
        extra = [*options.get("worker_extra_args", []), "--resources", f"{name}={threads}"]
        return {**options, "worker_extra_args": extra}

    with cluster:
        _scale_pools(cluster, spec, with_resources)
        yield cluster


def _scale_pools(cluster, spec, with_resources) -> None:
    """Start ``spec.workers`` workers, and ``spec.costly_workers`` more for the costly pool.

    With a costly pool, the first pool offers the resource ``cheap`` and the
    second ``costly`` (one unit per thread), each through the cluster's own
    worker spec (dask's SpecCluster), so dask places and restarts them.
    """
    if not spec.costly_workers:
        cluster.scale(spec.workers)
        return
    base = dict(cluster.new_spec)
    cluster.new_spec = {**base, "options": with_resources(base["options"], CHEAP)}
    cluster.scale(spec.workers)
    costly = {**base["options"], **dict(spec.costly)}
    cluster.new_spec = {**base, "options": with_resources(costly, COSTLY)}
    cluster.scale(spec.workers + spec.costly_workers)


class TorchThreads(WorkerPlugin):
    """Worker plugin: torch threads per worker so that dask threads x torch threads fit the cores."""

    name = "matseg-torch-threads"

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


class NoInterrupts(WorkerPlugin):
    """Worker plugin of a local cluster: its worker processes leave Ctrl-C to the command. The
    terminal sends SIGINT to every process of the command; the command stops the run and closes
    its workers, which would otherwise each die printing a KeyboardInterrupt traceback."""

    name = "matseg-no-interrupts"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():  # where signals are handled
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def torch_threads(workers: int) -> int:
    """Torch threads per worker (or per tile thread) so that they and the workers fit the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
