"""Where the model sits idle in a segment run, and what the GPU-shaped hot path changes.

    python benchmarks/hot_path.py [--shape 16 256 256] [--workers N] [--out FILE.json]

Measured in this one process, side by side (ratios only mean something within a run):

1. The cheap pass's labels, uncertainty and selector features on one default tile, from
   probabilities already computed: numpy (the CPU default) against torch (what runs on
   a GPU, where the probabilities stay: ``candidates.tile.device_core_results``), on
   each device torch sees; their largest relative difference.
2. A default selector run (``matseg.segment``) of a test-profile volume, tile by tile
   on ``--workers`` threads and on one thread (nothing overlaps the model calls there),
   and with ``batch_tiles`` (default: as many as the run's threads): the share of the
   segmenting time in which a model forward pass was running (the union of the calls'
   intervals; the rest is where the model sat idle, waiting for reads, normalisation,
   blending, writes and the scheduler), the forward passes and their slices, the run's
   segmenting time over its model calls timed alone (``scaling.pure_model_seconds``, once:
   the runs make the same plan), and whether batching changed a bit of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from scaling import fresh, pure_model_seconds  # benchmarks/ is the script's folder

import matseg
import matseg.models.inference as inference
from matseg.candidates.features import tile_features
from matseg.candidates.tile import TileInput, device_core_results
from matseg.models.labels import normalized_entropy, phase_labels
from matseg.models.store import load_segmenter
from matseg.sample import write_sample
from matseg.synth import SampleConfig
from matseg.tiling import DEFAULT_TILE


def median_seconds(call, repeats: int = 7) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def features_row() -> dict:
    """numpy against torch for the cheap pass's results from its probabilities, one default tile."""
    model = load_segmenter("cheap")
    rng = np.random.default_rng(3)
    image = np.cumsum(rng.normal(size=DEFAULT_TILE), axis=-1).astype(np.float32) / 30
    probs = inference.segment_probs(model, image)
    tile = TileInput(image, (slice(None), slice(None)), tuple(slice(0, n) for n in DEFAULT_TILE))

    def on_host():
        labels, uncertainty = phase_labels(probs), normalized_entropy(probs)
        return tile_features(image, probs, uncertainty, labels)

    row = {"model_ms": 1e3 * median_seconds(lambda: inference.segment_probs(model, image), 3)}
    row["numpy_ms"] = 1e3 * median_seconds(on_host)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        on_device = torch.from_numpy(probs).to(device)

        def compute(p=on_device):
            features = device_core_results(tile, p)[2]
            if p.is_cuda:
                torch.cuda.synchronize()
            return features

        row[f"torch_{device}_ms"] = 1e3 * median_seconds(compute)
        difference = np.abs(compute() - on_host()) / np.maximum(np.abs(on_host()), 1e-12)
        row[f"torch_{device}_max_relative_difference"] = float(difference.max())
    row["torch_cpu_over_numpy"] = row["torch_cpu_ms"] / row["numpy_ms"]
    print(
        f"cheap-pass results of one {DEFAULT_TILE} tile: numpy {row['numpy_ms']:.1f} ms, torch on the CPU "
        f"{row['torch_cpu_ms']:.1f} ms ({row['torch_cpu_over_numpy']:.2f}x numpy)"
        + (f", torch on the GPU {row['torch_cuda_ms']:.1f} ms" if "torch_cuda_ms" in row else "")
        + f"; the model on it {row['model_ms']:.0f} ms; features agree to "
        f"{row['torch_cpu_max_relative_difference']:.1e}",
        flush=True,
    )
    return row


class ForwardPasses:
    """The intervals of every model forward pass of this process (all threads)."""

    def __init__(self):
        self.calls: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()
        self._probs, self._reduce = inference._probs, inference.reduce_probs

    def __enter__(self):
        def timed(function):
            def call(model, tile, *args):
                started = time.perf_counter()
                try:
                    return function(model, tile, *args)
                finally:
                    with self._lock:
                        self.calls.append((started, time.perf_counter(), len(tile)))

            return call

        inference._probs, inference.reduce_probs = timed(self._probs), timed(self._reduce)
        return self

    def __exit__(self, *exc):
        inference._probs, inference.reduce_probs = self._probs, self._reduce

    def busy_seconds(self) -> float:
        """The union of the intervals: time in which at least one forward pass ran."""
        total, end = 0.0, -np.inf
        for start, stop, _ in sorted(self.calls):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total


def run_row(volume: Path, out: Path, workers: int, batch_tiles: int) -> dict:
    with ForwardPasses() as passes:
        report = matseg.segment(volume, fresh(out), workers=workers, batch_tiles=batch_tiles)
    segmenting = report["timings"]["segment_s"]
    return {
        "batch_tiles": batch_tiles,
        "workers": workers,
        "segment_s": segmenting,
        "total_s": report["timings"]["total_s"],
        "model_busy_s": passes.busy_seconds(),
        "model_busy_fraction": passes.busy_seconds() / segmenting,
        "forward_passes": len(passes.calls),
        "slices_per_pass": float(np.mean([n for *_, n in passes.calls])),
        "decisions": report["decisions"],
    }


def show(name: str, row: dict, pure: float) -> None:
    row["segment_over_pure_model"] = row["segment_s"] / pure
    print(
        f"{name:>22}: {row['segment_s']:5.1f} s segmenting, model busy "
        f"{100 * row['model_busy_fraction']:3.0f} % of it ({row['forward_passes']} passes of "
        f"{row['slices_per_pass']:.1f} slices); "
        f"segmenting / pure model {row['segment_over_pure_model']:.2f}x",
        flush=True,
    )


def same_outputs(a: Path, b: Path) -> bool:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = ("0", "labels/phases/0", "labels/decisions/0", "selector/features", "selector/choice")
    return all(np.array_equal(ga[n][:], gb[n][:]) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 256, 256))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path("work-out/hot-path"))
    parser.add_argument("--batch-tiles", type=int, help="batch_tiles of the batched run (default: --workers)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"device": inference.describe_device(), "features": features_row()}
    volume = args.work / "volume.zarr"
    write_sample(volume, args.shape, seed=4242, config=SampleConfig(profile="test"), overwrite=True)
    # the three runs make the same plan: their model calls, timed alone once, are the baseline
    one = run_row(volume, args.work / "one.zarr", args.workers, 1)
    serial = run_row(volume, args.work / "serial.zarr", 1, 1)
    four = run_row(volume, args.work / "four.zarr", args.workers, args.batch_tiles or args.workers)
    pure = pure_model_seconds(volume, args.work / "one.zarr")
    print(f"pure model (the run's model calls alone): {pure:.1f} s")
    show(f"{args.workers} threads", one, pure)
    show("1 thread", serial, pure)
    show(f"{args.workers} threads, batch_tiles={four['batch_tiles']}", four, pure)
    result |= {"shape": list(args.shape), "pure_model_s": pure, "tile_by_tile": one, "one_thread": serial}
    result["batched"] = four
    result["batched_over_tile_by_tile"] = four["segment_s"] / one["segment_s"]
    result["same_outputs"] = same_outputs(args.work / "one.zarr", args.work / "four.zarr")
    print(
        f"on {result['device']}: batch_tiles={four['batch_tiles']} / tile by tile "
        f"{result['batched_over_tile_by_tile']:.2f}x "
        f"segmenting time; busy fraction {one['model_busy_fraction']:.2f} -> "
        f"{four['model_busy_fraction']:.2f}; "
        f"outputs bit for bit equal: {result['same_outputs']}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
