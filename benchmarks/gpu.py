"""The segmenters and a default run on a GPU, side by side with the same machine's CPU.

    python benchmarks/gpu.py [--out docs/gpu.json] [--work work-out/gpu]

Needs torch with a CUDA device. Two parts, each measured within this one run:

1. Each segmenter on one default tile (8 slices of 256 x 256 and its halo), after a
   warm-up, the median of ``--repeats`` calls: seconds on the CPU (torch on every core,
   one slice at a time as matseg runs there) and on the GPU (the whole tile as one
   batch, as matseg runs there, and one slice at a time for comparison); the share of
   voxels whose label the two devices agree on.
2. ``matseg segment`` (default selector) on the scaling benchmark's 8x volume with
   ``MATSEG_DEVICE=cpu`` and ``=cuda``, each in its own process: wall time, that over
   the run's own model calls timed alone (as in scaling.py), the decisions, mIoU against
   the truth, and the share of voxels where the two outputs agree.
3. The same volume on the CPU alone, twice each: ``--workers`` = cores threads against
   as many worker processes (``--cluster local``), and the pure model time twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from scaling import SHAPES, fresh, measured_run, pure_model_seconds  # benchmarks/ is the script's folder

from matseg.models.inference import segment_probs
from matseg.models.labels import phase_labels
from matseg.models.store import load_segmenter
from matseg.sample import write_sample
from matseg.synth import SampleConfig
from matseg.tiling import DEFAULT_TILE

MODELS = ("cheap", "medium", "expensive")


@contextlib.contextmanager
def on_device(device: str):
    """matseg's segmenters on ``device`` in this process and in the commands it starts."""
    os.environ["MATSEG_DEVICE"] = device
    try:
        yield
    finally:
        del os.environ["MATSEG_DEVICE"]


def seconds_per_call(call, repeats: int) -> float:
    call()  # warm-up: weights moved, kernels chosen, caches filled
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tile_row(name: str, repeats: int) -> dict:
    """One segmenter on one default tile: CPU vs GPU seconds, and label agreement."""
    model = load_segmenter(name)
    depth, height, width = DEFAULT_TILE
    shape = (depth, height + 2 * model.halo, width + 2 * model.halo)
    tile = np.random.default_rng(7).normal(0, 1, shape).astype(np.float32)
    labels, seconds = {}, {}
    for device in ("cpu", "cuda"):
        with on_device(device):
            seconds[device] = seconds_per_call(lambda: segment_probs(model, tile), repeats)
            labels[device] = phase_labels(segment_probs(model, tile))
    with on_device("cuda"):
        seconds["cuda_slice_by_slice"] = seconds_per_call(
            lambda: [segment_probs(model, tile[i : i + 1]) for i in range(depth)], repeats
        )
    return {
        "tile": list(shape),
        "gflops": model.gflops(shape),
        "seconds": seconds,
        "gpu_speedup": seconds["cpu"] / seconds["cuda"],
        "batch_over_slices": seconds["cuda_slice_by_slice"] / seconds["cuda"],
        "label_agreement": float((labels["cpu"] == labels["cuda"]).mean()),
    }


def per_tile(repeats: int) -> dict:
    rows = {}
    for name in MODELS:
        row = rows[name] = tile_row(name, repeats)
        ms = {k: v * 1e3 for k, v in row["seconds"].items()}
        print(
            f"{name:9} CPU {ms['cpu']:8.1f} ms  GPU {ms['cuda']:6.1f} ms ({row['gpu_speedup']:.0f}x; "
            f"slice by slice {ms['cuda_slice_by_slice']:.1f} ms)  labels agree {row['label_agreement']:.5f}",
            flush=True,
        )
    return rows


def runs(work: Path) -> dict:
    """A default run on the 8x volume on each device, in its own process."""
    shape = SHAPES["8x"]
    volume = work / "volume-8x.zarr"
    write_sample(volume, shape, seed=11, config=SampleConfig(profile="test"), overwrite=True)
    rows, phases = {}, {}
    for device in ("cpu", "cuda"):
        out = fresh(work / f"phases-{device}.zarr")
        args = ["segment", str(volume), "-o", str(out), "--truth", str(volume), "--quiet"]
        with on_device(device):  # the run, and the baseline's model calls
            run = measured_run(args)
            pure = pure_model_seconds(volume, out)
        report = json.loads((out / "matseg-report.json").read_text())
        rows[device] = {
            "seconds": run["seconds"],
            "segment_s": report["timings"]["segment_s"],
            "pure_model_s": pure,
            "overhead_segment": report["timings"]["segment_s"] / pure,
            "peak_rss_mb": run["peak_rss_mb"],
            "decisions": report["decisions"],
            "miou": report["metrics"]["miou"],
            "timings": report["timings"],
        }
        phases[device] = zarr.open_group(str(out), mode="r")["labels/phases/0"]
        print(
            f"8x {shape} on {device}: {run['seconds']:.1f} s end to end, {rows[device]['segment_s']:.1f} s "
            f"segmenting vs pure model {pure:.1f} s ({rows[device]['overhead_segment']:.2f}x); "
            f"decisions {report['decisions']}; mIoU {rows[device]['miou']:.4f}",
            flush=True,
        )
    agree = sum(int((phases["cpu"][z] == phases["cuda"][z]).sum()) for z in range(shape[0]))
    rows["label_agreement"] = agree / float(np.prod(shape))
    rows["speedup"] = rows["cpu"]["seconds"] / rows["cuda"]["seconds"]
    print(f"GPU run {rows['speedup']:.1f}x faster end to end; outputs agree on {rows['label_agreement']:.5f}")
    return rows


def cpu_workers(work: Path) -> dict:
    """Threads vs worker processes on every core, CPU only, on part 2's volume."""
    volume, cores = work / "volume-8x.zarr", str(os.cpu_count())
    rows = {}
    with on_device("cpu"):
        for label, extra in (("threads", []), ("local", ["--cluster", "local", "--workers", cores])) * 2:
            out = fresh(work / f"cpu-{label}.zarr")
            run = measured_run(["segment", str(volume), "-o", str(out), "--quiet", *extra])
            timings = json.loads((out / "matseg-report.json").read_text())["timings"]
            rows.setdefault(label, []).append({"wall_s": run["seconds"], **timings})
            print(f"CPU, {cores} {label}: {timings['segment_s']:.1f} s segmenting", flush=True)
        rows["pure_model_s"] = [pure_model_seconds(volume, work / "cpu-threads.zarr") for _ in range(2)]
    print(f"CPU pure model: {', '.join(f'{t:.1f} s' for t in rows['pure_model_s'])}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gpu.json"))
    parser.add_argument("--work", type=Path, default=Path("work-out/gpu"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; torch sees none here")
    args.work.mkdir(parents=True, exist_ok=True)
    results = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
    }
    print(f"{results['gpu']}, torch {results['torch']}, {results['cores']} CPU cores", flush=True)
    results["per_tile"] = per_tile(args.repeats)
    results["runs"] = runs(args.work)
    results["cpu_workers"] = cpu_workers(args.work)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
