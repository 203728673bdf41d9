"""Peak memory of `matseg measure`'s streamed metrics against the volume's size.

    python benchmarks/measure_memory.py [--shapes 32x256x256 64x512x512] [--limit-gib 0.75]
    python benchmarks/measure_memory.py --tile --shapes 32x512x512 64x512x512 64x1024x1024 \\
        112x2048x2048 --limit-gib 0.35 --max-radius 2 --out docs/measure-larger-than-memory.json

Label volumes (uint8 phases of the sample generator, written chunk by chunk;
with --tile, one 32 x 512 x 512 sample repeated, which makes a large volume in
seconds and streams exactly like a unique one) of growing size are measured
with the streamed metrics only (fractions, areas, TPB, sizes: --no-transport
--no-connectivity, no draws, no REV curves) in a child process, inside a
memory cgroup of --limit-gib when one can be made. Reported per size: wall
time, the child's peak RSS, the cgroup's peak, OOM kills. Flat memory means
the peak does not grow with the volume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from larger_than_memory import GIB, MemoryCgroup  # benchmarks/ is the script's folder
from scaling import measured_run

from matseg.synth import SampleConfig, sample_arrays

TILE = (32, 512, 512)


def generate(path: Path, shape: tuple[int, ...], seed: int, tile: bool = False) -> Path:
    if tile:
        base = sample_arrays(TILE, seed, SampleConfig(profile="test"), chunks=(16, 256, 256))["phases"]
        reps = [-(-n // t) for n, t in zip(shape, TILE)]
        phases = da.tile(base.persist(), reps)[tuple(slice(0, n) for n in shape)].rechunk((16, 256, 256))
    else:
        phases = sample_arrays(shape, seed, SampleConfig(profile="test"), chunks=(16, 256, 256))["phases"]
    target = zarr.create_array(str(path), shape=shape, chunks=(16, 256, 256), dtype="uint8", overwrite=True)
    dask.compute(phases.store(target, lock=False, compute=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["32x256x256", "64x512x512"])
    parser.add_argument("--limit-gib", type=float, default=0.75)
    parser.add_argument("--work", type=Path, default=Path("work-out/measure-memory"))
    parser.add_argument("--out", type=Path, default=Path("docs/measure-memory.json"))
    parser.add_argument("--tile", action="store_true", help="repeat one sample (fast to make)")
    parser.add_argument("--max-radius", type=int, default=12)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        labels = args.work / f"labels-{text}.zarr"
        if not labels.exists():
            generate(labels, shape, seed=31, tile=args.tile)
        try:
            group = MemoryCgroup(int(args.limit_gib * GIB))
        except OSError as err:
            print(f"no memory cgroup ({err}): peak RSS only")
            group = None
        command = [
            "measure",
            str(labels),
            "--labels",
            "-o",
            str(args.work / f"out-{text}"),
            "--overwrite",
            "--samples",
            "0",
            "--no-transport",
            "--no-connectivity",
            "--no-rev",
            "--max-radius",
            str(args.max_radius),
        ]
        started = time.perf_counter()
        try:
            run = measured_run(command, preexec_fn=group.enter if group else None, check=False)
            stats = group.stats() if group else {}
        finally:
            if group:
                group.remove()
        row = {
            "shape": list(shape),
            "voxels": int(np.prod(shape)),
            "labels_mib": int(np.prod(shape)) / 2**20,
            "larger_than_limit": int(np.prod(shape)) > args.limit_gib * GIB,
            "max_radius": args.max_radius,
            "exit_code": run["exit_code"],
            "wall_s": time.perf_counter() - started,
            "peak_rss_mb": run["peak_rss_mb"],
            "cgroup_limit_gib": args.limit_gib if group else None,
            "cgroup_peak_gib": (stats.get("peak_usage_bytes") or 0) / GIB or None,
            "oom_kills": stats.get("oom_kills"),
        }
        if run["exit_code"]:
            row["stderr"] = run["stderr"][-2000:]
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
