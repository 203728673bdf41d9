"""Memory as the volume grows, time over pure model compute, and 1 vs 2 workers, side by side.

    python benchmarks/scaling.py [--out docs/scaling.json]

Each `matseg segment` run (default selector settings) is its own process;
its peak RSS is that process's maximum resident set size (getrusage). The
pure-model baseline runs the very model calls of that run (the cheap pass on
every tile, each chosen candidate, the cheap net again where the run blended
with it) on tiles already in memory, either one after another with torch on every
core or one per core (the faster counts): no reading, writing, dask, plan or
seams. Each size runs ``--repeats`` times (matseg, then the pure model, in turn) and
the fastest of each counts, as timeit does on a shared machine; peak RSS is the largest.
Ratios are taken within one run of this script, on the same machine and data.
Then the cheap and the expensive net alone on every tile of the 1x, 8x and 32x volumes:
the peak of a default run depends on which candidates its plan runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zarr

from matseg.candidates.registry import CANDIDATES, Context
from matseg.candidates.tile import candidate_probs, cheap_pass, tile_input
from matseg.io.read import open_volume
from matseg.malloc import tune_malloc
from matseg.normalize import Normalization
from matseg.sample import write_sample
from matseg.selector.plan import candidate_grid
from matseg.stitch import BAND, extended_region, neighbour_indices
from matseg.synth import SampleConfig
from matseg.tiling import plan_tiles

SHAPES = {"1x": (16, 256, 512), "8x": (32, 512, 1024), "16x": (64, 512, 1024), "32x": (64, 1024, 1024)}
PER_MODEL = ("cheap", "expensive")  # one model on every tile: peak RSS at 1x, 8x and 32x


def measured_run(args: list[str], env: dict | None = None, preexec_fn=None, check: bool = True) -> dict:
    """Run one matseg command in a child process; its wall time, peak RSS and exit code.

    A fresh wrapper process runs it, so that getrusage of the wrapper's children
    is this run's alone. ``preexec_fn`` runs in the wrapper before it starts
    (e.g. to enter a memory cgroup); with ``check`` a failed run stops the benchmark.
    """
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    command = [sys.executable, "-c", wrapper, sys.executable, "-m", "matseg.cli", *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=preexec_fn)
    seconds = time.perf_counter() - started
    if done.returncode and check:
        raise SystemExit(done.stderr)
    lines = done.stdout.strip().splitlines()
    return {
        "seconds": seconds,
        "peak_rss_mb": int(lines[-1]) / 1024 if lines else None,
        "exit_code": done.returncode,
        "stderr": done.stderr,
    }


def fresh(output: Path) -> Path:
    """No earlier output: a run must not reuse a stored cheap pass (--overwrite would)."""
    shutil.rmtree(output, ignore_errors=True)
    return output


def pure_model_seconds(volume: Path, output: Path) -> float:
    """The model calls of the run that wrote ``output``, on in-memory tiles, timed alone."""
    from matseg.models.store import load_segmenter

    attrs = zarr.open_group(str(output), mode="r").attrs["matseg"]
    names = attrs["candidates"]
    models = {m["name"]: load_segmenter(m["name"]) for m in attrs["models"]}
    saved = attrs["normalization"]
    norm = Normalization(saved["low"], saved["high"], tuple(saved["thresholds"]))
    context = Context(models, norm.thresholds)
    data = open_volume(str(volume)).data
    raw = data.compute()  # the benchmark volumes fit in memory; the run never loads them whole
    grid = plan_tiles(data.shape, attrs["tile"], attrs["halo"], max(m.stride for m in models.values()))
    indices = list(grid.indices())
    choice = dict(zip(indices, zarr.open_group(str(output), mode="r")["selector/choice"][:].tolist()))
    rewritten = set(map(tuple, attrs["rewritten"]))
    calls = []  # (candidate, its grid, tile index, region wanted); the cheap pass marked by None
    cheap_grid = grid.with_halo(models["cheap"].halo)
    calls += [(None, cheap_grid, idx, None) for idx in indices]
    for idx in indices:
        mine = choice[idx]
        if mine:
            calls.append((names[mine], candidate_grid(grid, names[mine], context), idx, BAND))
        if idx in rewritten and 0 in {choice[j] for j in neighbour_indices(grid, idx).values()}:
            calls.append(("cheap", candidate_grid(grid, "cheap", context), idx, BAND))
    tiles = []
    for _, own, idx, _ in calls:
        halo = own.halo_of(idx)
        region = own.region(idx)
        grown = tuple(slice(r.start - h[0], r.stop + h[1]) for r, h in zip(region, halo))
        tiles.append(tile_input(raw[grown], idx, own, norm))

    def call(job):
        (name, own, idx, band), tile = job
        if name is None:
            cheap_pass(tile, context)
        else:
            candidate_probs(tile, CANDIDATES[name], context, extended_region(own, idx, band))

    # the faster of: one call at a time with torch on every core, or one call per core
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    started = time.perf_counter()
    for job in zip(calls, tiles):
        call(job)
    sequential = time.perf_counter() - started
    torch.set_num_threads(1)
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(call, zip(calls, tiles)))
    parallel = time.perf_counter() - started
    return min(sequential, parallel)


def main() -> None:
    tune_malloc()  # the baseline's allocator set as the matseg command sets its own
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/scaling.json"))
    parser.add_argument("--work", type=Path, default=Path("work-out/scaling"))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each size (the fastest counts)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"cores": os.cpu_count()}
    for name, shape in SHAPES.items():
        volume = args.work / f"volume-{name}.zarr"
        write_sample(volume, shape, seed=11, config=SampleConfig(profile="test"), overwrite=True)
        runs, pures = [], []
        for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both
            out = fresh(args.work / f"phases-{name}.zarr")
            run = measured_run(["segment", str(volume), "-o", str(out), "--quiet"])
            report = json.loads((out / "matseg-report.json").read_text())
            runs.append({"peak_rss_mb": run["peak_rss_mb"], **report["timings"]})
            pures.append(pure_model_seconds(volume, out))
        best = min(runs, key=lambda r: r["total_s"])
        pure = min(pures)
        results[name] = {
            "shape": list(shape),
            "voxels": report["voxels"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "total_s": best["total_s"],
            "segment_s": min(r["segment_s"] for r in runs),
            "pure_model_s": pure,
            "overhead_total": best["total_s"] / pure,
            "overhead_segment": min(r["segment_s"] for r in runs) / pure,
            "voxels_per_s": best["voxels_per_s"],
            "decisions": report["decisions"],
            "repeats": {"total_s": [r["total_s"] for r in runs], "pure_model_s": pures},
        }
        print(
            f"{name}: {shape} peak RSS {results[name]['peak_rss_mb']:.0f} MB; matseg {best['total_s']:.1f} s "
            f"end to end ({results[name]['segment_s']:.1f} s segmenting) vs pure model {pure:.1f} s: "
            f"{results[name]['overhead_total']:.2f}x (best of {args.repeats} each)",
            flush=True,
        )
    for name in SHAPES:
        results[name]["memory_vs_1x"] = results[name]["peak_rss_mb"] / results["1x"]["peak_rss_mb"]
    # the default run's peak depends on its plan (the expensive net's activations are the
    # largest): one model on every tile shows how memory grows with the volume alone
    results["per_model"] = {}
    for model in PER_MODEL:
        peaks = {}
        for name in ("1x", "8x", "32x"):
            out = fresh(args.work / f"model-{model}-{name}.zarr")
            volume = args.work / f"volume-{name}.zarr"
            peaks[name] = measured_run(["segment", str(volume), "-o", str(out), "--quiet", "--model", model])[
                "peak_rss_mb"
            ]
        results["per_model"][model] = {
            "peak_rss_mb": peaks,
            "vs_1x": {name: peak / peaks["1x"] for name, peak in peaks.items()},
        }
        print(
            f"--model {model}: peak RSS " + ", ".join(f"{n} {v:.0f} MB" for n, v in peaks.items()), flush=True
        )
    volume = args.work / "volume-8x.zarr"
    workers = {}
    for label, extra in (
        ("threads-1", ["--workers", "1"]),
        ("threads-2", ["--workers", "2"]),
        ("local-1", ["--cluster", "local", "--workers", "1"]),
        ("local-2", ["--cluster", "local", "--workers", "2"]),
    ):
        out = fresh(args.work / f"workers-{label}.zarr")
        measured_run(["segment", str(volume), "-o", str(out), "--quiet", *extra])
        workers[label] = json.loads((out / "matseg-report.json").read_text())["timings"]["segment_s"]
    results["workers"] = {
        "segment_s": workers,
        "speedup_threads_2_over_1": workers["threads-1"] / workers["threads-2"],
        "speedup_local_2_over_1": workers["local-1"] / workers["local-2"],
    }
    print(
        f"peak RSS 8x / 1x: {results['8x']['memory_vs_1x']:.2f}, "
        f"16x / 1x: {results['16x']['memory_vs_1x']:.2f}, 32x / 1x: {results['32x']['memory_vs_1x']:.2f}; "
        f"2 workers vs 1: threads {results['workers']['speedup_threads_2_over_1']:.2f}x, "
        f"local cluster {results['workers']['speedup_local_2_over_1']:.2f}x"
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def paired_ratios(result: dict) -> list[float]:
    """Each matseg run's end-to-end time over the pure model timed right after it: a slow or
    fast spell of the machine hits both sides of a pair, where it may favour one side of
    the fastest-of-each ratio."""
    repeats = result["repeats"]
    return [run / pure for run, pure in zip(repeats["total_s"], repeats["pure_model_s"])]


def markdown(results: dict) -> str:
    """The table of docs/benchmarks.md "Scaling" from this script's results."""
    lines = [
        "| volume | voxels | peak RSS | RSS vs 1× | end to end | segmenting | pure model "
        "| end to end / pure | segmenting / pure | pairs: median (range) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SHAPES:
        r = results[name]
        pairs = paired_ratios(r)
        spread = f"{statistics.median(pairs):.2f} ({min(pairs):.2f}–{max(pairs):.2f})"
        lines.append(
            f"| {' × '.join(map(str, r['shape']))} ({name}) | {r['voxels'] / 1e6:.1f} M "
            f"| {r['peak_rss_mb']:.0f} MB | {r['memory_vs_1x']:.2f} | {r['total_s']:.1f} s "
            f"| {r['segment_s']:.1f} s | {r['pure_model_s']:.1f} s | {r['overhead_total']:.2f} "
            f"| {r['overhead_segment']:.2f} | {spread} |"
        )
    lines += [
        "",
        "| one model on every tile | peak RSS 1× | 8× | 32× | 8× / 1× | 32× / 1× |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model, r in results.get("per_model", {}).items():
        peaks, ratios = r["peak_rss_mb"], r["vs_1x"]
        lines.append(
            f"| `--model {model}` | {peaks['1x']:.0f} MB | {peaks['8x']:.0f} MB | {peaks['32x']:.0f} MB "
            f"| {ratios['8x']:.2f} | {ratios['32x']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
