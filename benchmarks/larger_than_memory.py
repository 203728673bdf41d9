"""A volume bigger than the memory the run may use, segmented to the end.

    python benchmarks/larger_than_memory.py [--shape 64 2048 4096] [--limit-gib 1.0]

The volume (float32, like a CT reconstruction, with its ground truth) is
generated lazily, block by block, from matseg's sample generator and written
to Zarr without ever being whole in memory. Then `matseg segment` runs with
the default selector inside a memory cgroup whose limit is smaller than the
volume's raw size (as SLURM's ``--mem`` confines a job): loading it whole is
impossible, so the run must stream. Reported: raw size and limit, the run's
peak RSS and the cgroup's peak usage (page cache included), how often the
limit was reached, OOM kills, wall time and mIoU against the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import dask
import numpy as np
import zarr
from scaling import measured_run  # benchmarks/ is the script's folder

from matseg.synth import SampleConfig, sample_arrays

GIB = 1 << 30


def generate(folder: Path, shape: tuple[int, ...], seed: int) -> tuple[Path, Path]:
    """float32 image and uint8 truth, rendered and written chunk by chunk."""
    arrays = sample_arrays(shape, seed, SampleConfig(profile="test"), chunks=(16, 512, 512))
    image = arrays["image"].astype(np.float32) * np.float32(1 / 64) - np.float32(0.5)
    paths = folder / "volume.zarr", folder / "truth.zarr"
    targets = [
        zarr.create_array(str(p), shape=shape, chunks=(16, 512, 512), dtype=d, overwrite=True)
        for p, d in zip(paths, ("float32", "uint8"))
    ]
    dask.compute(
        image.store(targets[0], lock=False, compute=False),
        arrays["phases"].store(targets[1], lock=False, compute=False),
    )
    return paths


class MemoryCgroup:
    """A memory cgroup (v1 or v2) with a limit; processes started in it inherit it."""

    def __init__(self, limit: int):
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        root = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
        self.path = root / f"matseg-bench-{os.getpid()}"
        self.v2 = v2
        self.path.mkdir()
        (self.path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))

    def enter(self) -> None:
        """Move the calling process into the group (used as a preexec_fn)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict:
        if self.v2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            peak = self.path / "memory.peak"
            return {
                "peak_usage_bytes": int(peak.read_text()) if peak.exists() else None,
                "limit_reached": int(events.get("max", 0)),
                "oom_kills": int(events.get("oom_kill", 0)),
            }
        oom = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return {
            "peak_usage_bytes": int((self.path / "memory.max_usage_in_bytes").read_text()),
            "limit_reached": int((self.path / "memory.failcnt").read_text()),
            "oom_kills": int(oom.get("oom_kill", 0)),
        }

    def remove(self) -> None:
        self.path.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 2048, 4096))
    parser.add_argument("--limit-gib", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--work", type=Path, default=Path("work-out/larger-than-memory"))
    parser.add_argument("--out", type=Path, default=Path("docs/larger-than-memory.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    raw_bytes = int(np.prod(shape)) * 4
    limit = int(args.limit_gib * GIB)
    if raw_bytes <= limit:
        raise SystemExit(f"the volume ({raw_bytes / GIB:.2f} GiB) must be larger than the limit")
    started = time.perf_counter()
    volume, truth = generate(args.work, shape, args.seed)
    generate_s = time.perf_counter() - started
    print(f"generated {shape} float32 ({raw_bytes / GIB:.2f} GiB) in {generate_s:.0f} s", flush=True)

    try:
        group = MemoryCgroup(limit)
    except OSError as err:
        raise SystemExit(f"cannot make a memory cgroup here ({err}); run as root on Linux") from None
    out = args.work / "phases.zarr"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: nothing reused
    command = ["segment", str(volume), "-o", str(out), "--truth", str(truth), "--quiet"]
    try:
        run = measured_run(command, preexec_fn=group.enter, check=False)
        stats = group.stats()
    finally:
        group.remove()
    if run["exit_code"]:
        print(run["stderr"])
    report = json.loads((out / "matseg-report.json").read_text()) if run["exit_code"] == 0 else {}
    result = {
        "shape": list(shape),
        "dtype": "float32",
        "raw_gib": raw_bytes / GIB,
        "limit_gib": limit / GIB,
        "generate_s": generate_s,
        "exit_code": run["exit_code"],
        "wall_s": run["seconds"],
        "peak_rss_mb": run["peak_rss_mb"],
        "cgroup_peak_usage_gib": stats["peak_usage_bytes"] / GIB if stats["peak_usage_bytes"] else None,
        "limit_reached": stats["limit_reached"],
        "oom_kills": stats["oom_kills"],
        "voxels_per_s": report.get("timings", {}).get("voxels_per_s"),
        "miou": report.get("metrics", {}).get("miou"),
        "decisions": report.get("decisions"),
        "gflops_fraction_of_all_expensive": report.get("gflops_fraction_of_all_expensive"),
    }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
