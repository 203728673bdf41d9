"""The workflows' SLURM job scripts, run on a real single-node SLURM brought up for the test.

`make test` installs slurm-wlm and munge (as root); the fixture writes a
one-node slurm.conf in a temporary folder, starts munged (if needed),
slurmctld and slurmd, and stops them at the end. Only when SLURM cannot start
on this machine is the test skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from matseg.sample import write_sample

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflows" / "slurm"


def _conf(folder: Path) -> str:
    cpus = os.cpu_count() or 1
    memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    return f"""ClusterName=matseg-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


MUNGE_PID = Path("/run/munge/munged.pid")


def _start_munge() -> bool:
    """Start munged unless one runs; True when this test started it (and must stop it)."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return False
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "-c"], check=True, capture_output=True)
    subprocess.run(["munged", "--force"], check=True, capture_output=True)
    return True


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [t for t in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"SLURM cannot start here: {'not root' if not missing else 'missing ' + ', '.join(missing)}"
        )
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munge = False
    try:
        started_munge = _start_munge()
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env, capture_output=True)
        subprocess.run(
            ["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=env, capture_output=True
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout
            if state.strip() in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"node never became idle: {state!r}")
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        _stop(folder, started_munge)
        logs = "".join(p.read_text()[-500:] for p in folder.glob("*.log"))
        pytest.skip(f"SLURM cannot start here: {err} {logs}")
    yield env
    _stop(folder, started_munge)


def _stop(folder: Path, munge: bool) -> None:
    pid_files = [folder / "slurmd.pid", folder / "slurmctld.pid"] + ([MUNGE_PID] if munge else [])
    for pid_file in pid_files:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


def _wait(job: str, env: dict, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout
        if not queued.strip():
            return
        time.sleep(1)
    raise AssertionError(f"job {job} still queued after {timeout} s")


def _submit(args: list[str], env: dict, cwd: Path) -> str:
    # the scripts ask for a real node's share; this test node has what the machine has
    small = ["--cpus-per-task=1", "--mem=1G"]
    done = subprocess.run(
        ["sbatch", "--parsable", *small, *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def test_workflow_scripts_run_on_slurm(slurm, tmp_path, random_weights):
    matseg = str(Path(sys.executable).with_name("matseg"))
    env = {**slurm, "MATSEG": matseg}
    scans = []
    for seed in (1, 2, 3):
        path = tmp_path / f"scan{seed}.zarr"
        write_sample(path, (4, 64, 64), seed=seed)
        scans.append(path)
    options = ["--weights", str(random_weights), "--model", "cheap", "--tile", "4,64,64"]

    one = _submit(
        [str(SCRIPTS / "segment-volume.sbatch"), str(scans[0]), "one.zarr", *options], env, tmp_path
    )
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps([{"input": str(s), "output": f"array/{s.name}"} for s in scans]))
    array = _submit(
        ["--array=0-2", str(SCRIPTS / "segment-array.sbatch"), str(manifest), *options], env, tmp_path
    )
    _wait(one, env)
    _wait(array, env)
    logs = "".join(p.read_text() for p in tmp_path.glob("matseg-*.log"))
    outputs = [tmp_path / "one.zarr"] + [tmp_path / "array" / s.name for s in scans]
    for out in outputs:
        assert out.exists(), logs
        assert zarr.open_group(str(out), mode="r").attrs["matseg"]["status"] == "complete", logs


def _cluster_config(tmp_path: Path, **more) -> Path:
    """Worker jobs small enough for the test node (1 core, 1 GB each)."""
    settings = {
        "cores": 1,
        "processes": 1,
        "memory": "1GB",
        "walltime": "00:10:00",
        "queue": "debug",
        "log_directory": str(tmp_path / "dask-logs"),
        **more,
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def test_cluster_slurm_run_with_a_costly_pool(slurm, tmp_path):
    """`--cluster slurm` from here: a cheap-pass worker job and a costly-candidate worker job."""
    volume = tmp_path / "scan.zarr"
    write_sample(volume, (8, 256, 256), seed=7)
    out = tmp_path / "phases.zarr"
    config = _cluster_config(tmp_path, workers=1, costly_workers=1)
    args = ["segment", str(volume), "-o", str(out), "--tile", "4,128,128", "--max-expensive-fraction", "0.5"]
    cmd = [sys.executable, "-m", "matseg.cli", *args, "--cluster", "slurm", "--cluster-config", str(config)]
    done = subprocess.run([*cmd, "--quiet"], env=slurm, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "dask-logs").glob("*"))
    assert done.returncode == 0, done.stderr + logs
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["run"]["scheduler"] == "slurm" and report["run"]["workers"] == 2
    assert report["run"]["placement_by_cost"]
    assert sum(n for name, n in report["decisions"].items() if name != "cheap") > 0
    assert len(list((tmp_path / "dask-logs").glob("*.err"))) == 2  # two worker jobs ran


def test_driver_job_runs_a_dask_jobqueue_cluster(slurm, tmp_path, random_weights):
    """workflows/slurm/segment-cluster.sbatch: a driver job whose workers are SLURM jobs."""
    env = {**slurm, "MATSEG": str(Path(sys.executable).with_name("matseg"))}
    volume = tmp_path / "scan.zarr"
    write_sample(volume, (4, 128, 128), seed=8)
    config = _cluster_config(tmp_path, workers=1)
    options = ["--weights", str(random_weights), "--model", "cheap", "--tile", "4,64,64"]
    script = str(SCRIPTS / "segment-cluster.sbatch")
    job = _submit([script, str(volume), "phases.zarr", str(config), *options], env, tmp_path)
    _wait(job, env, timeout=300)
    logs = "".join(p.read_text() for p in tmp_path.glob("matseg-driver-*.log"))
    out = tmp_path / "phases.zarr"
    assert out.exists(), logs
    attrs = zarr.open_group(str(out), mode="r").attrs["matseg"]
    assert attrs["status"] == "complete" and attrs["run"]["scheduler"] == "slurm", logs


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"queue": "no-such-partition"}, "sbatch refused the dask worker job"),
        ({"python": "/bin/false"}, "ended FAILED"),  # the job starts, its worker command fails
    ],
    ids=["sbatch-refuses", "job-fails"],
)
def test_failing_worker_job_is_told_within_seconds(slurm, tmp_path, random_weights, settings, message):
    volume = tmp_path / "scan.zarr"
    write_sample(volume, (4, 64, 64), seed=7)
    before = {p: p.read_bytes() for p in volume.rglob("*") if p.is_file()}
    config = _cluster_config(tmp_path, **settings)
    out = tmp_path / "phases.zarr"
    cmd = [sys.executable, "-m", "matseg.cli", "segment", str(volume), "-o", str(out), "--weights"]
    cmd += [str(random_weights), "--cluster", "slurm", "--cluster-config", str(config), "--quiet"]
    started = time.monotonic()
    done = subprocess.run(cmd, env=slurm, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 60  # not the 600 s time-out
    assert not out.exists()  # nothing half-written
    assert {p: p.read_bytes() for p in volume.rglob("*") if p.is_file()} == before
