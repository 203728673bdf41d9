"""Memory and time as the volume grows, overhead over pure model time, 1 vs 2 workers.

    python benchmarks/scaling.py [--out docs/scaling.json]

Each measurement is a separate `matseg segment` process (default selector
settings) on a generated sample; peak RSS is that process's maximum resident
set size (getrusage of the child), measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from matseg.sample import write_sample
from matseg.synth import SampleConfig

SHAPES = {"1x": (16, 256, 512), "8x": (32, 512, 1024)}


def measured_run(args: list[str]) -> dict:
    """Run one matseg command in a child process; its wall time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "matseg.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: runs go from small to large
    return {"seconds": seconds, "peak_rss_mb": max(peak, before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/scaling.json"))
    parser.add_argument("--work", type=Path, default=Path("work-out/scaling"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, shape in SHAPES.items():
        volume = args.work / f"volume-{name}.zarr"
        write_sample(volume, shape, seed=11, config=SampleConfig(profile="test"), overwrite=True)
        out = args.work / f"phases-{name}.zarr"
        run = measured_run(["segment", str(volume), "-o", str(out), "--overwrite", "--quiet"])
        report = json.loads((out / "matseg-report.json").read_text())
        workers = report["workers"]
        model_wall = sum(report["timings"]["model_s"].values()) / workers
        results[name] = {
            "shape": list(shape),
            "voxels": report["voxels"],
            **run,
            "total_s": report["timings"]["total_s"],
            "model_s_per_worker": model_wall,
            "overhead": report["timings"]["total_s"] / model_wall,
            "voxels_per_s": report["voxels_per_s"],
        }
        print(
            f"{name}: {shape} peak RSS {run['peak_rss_mb']:.0f} MB, {report['timings']['total_s']:.1f} s, "
            f"overhead {results[name]['overhead']:.2f}x the model time"
        )
    volume = args.work / "volume-1x.zarr"
    timing = {}
    for workers in (1, 2):
        out = args.work / f"workers-{workers}.zarr"
        cmd = ["segment", str(volume), "-o", str(out), "--overwrite", "--quiet", "--workers", str(workers)]
        measured_run(cmd)
        timing[workers] = json.loads((out / "matseg-report.json").read_text())["timings"]["segment_s"]
    results["workers"] = {"segment_s": timing, "speedup_2_over_1": timing[1] / timing[2]}
    results["memory_ratio_8x_over_1x"] = results["8x"]["peak_rss_mb"] / results["1x"]["peak_rss_mb"]
    print(
        f"peak RSS 8x / 1x volume: {results['memory_ratio_8x_over_1x']:.2f}; "
        f"2 workers vs 1: {results['workers']['speedup_2_over_1']:.2f}x"
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
