"""SLURM worker jobs that will never start a dask worker, told within seconds.

dask-jobqueue submits one job per worker; if sbatch refuses it (a bad
partition, account or resource request) or the job ends before its worker
joins, waiting for workers would only end at the time-out. Instead the jobs'
state is read every two seconds, and the first that failed is named.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time

from matseg.errors import MatsegError

# job states after which its dask worker will never join
ENDED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "COMPLETED")


class _RefusedSubmission(logging.Filter):
    """Drops the traceback dask logs when sbatch refuses a worker job (:func:`failed_job` says it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, RuntimeError) and "sbatch" in str(error))


def quiet_refused_submissions() -> None:
    """Install the filter on the logger dask's event loop reports the failed submission through."""
    for name in ("tornado.application", "asyncio"):  # the callback's error, the task's unretrieved one
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RefusedSubmission) for f in logger.filters):
            logger.addFilter(_RefusedSubmission())


def wait_for_jobs(client, cluster, n: int, timeout: float) -> None:
    """Wait for ``n`` workers of ``cluster`` (a dask-jobqueue cluster) to join ``client``.

    Raises
    ------
    MatsegError
        As soon as a worker job was refused by sbatch or ended.
    TimeoutError
        If the workers have not joined after ``timeout`` seconds (jobs still queued).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.wait_for_workers(n, timeout=2)
            return
        except TimeoutError:
            problem = failed_job(cluster)
            if problem:
                raise MatsegError(problem) from None
            if time.monotonic() > deadline:
                raise


def failed_job(cluster) -> str | None:
    """Why a worker job of ``cluster`` will never start its worker, or None."""
    jobs = list(cluster.workers.values())
    if any(getattr(j, "job_id", None) is None for j in jobs):  # not submitted: ask sbatch why
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
            script.write(cluster.job_script())
            script.flush()
            test = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True)
        if test.returncode:
            reason = " ".join(test.stderr.split()) or f"exit code {test.returncode}"
            return f"sbatch refused the dask worker job: {reason}"
    for job in jobs:
        job_id = getattr(job, "job_id", None)
        if not job_id:
            continue
        shown = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True)
        fields = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
        state = fields.get("JobState", "")
        if state in ENDED:
            return (
                f"SLURM job {job_id} (a dask worker) ended {state} (exit code "
                f"{fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')}) before its worker "
                "joined; see the job's log"
            )
    return None
