"""Accuracy and cost of the bundled segmenters (cheap, medium, expensive) on held-out test volumes.

    python benchmarks/segmenters.py [--out docs/segmenters.json] [--weights DIR]

Generates the test volumes (seeds disjoint from training, imaging profile
'test': noise, blur, shading and curtain ranges unseen in training), segments
each with both models side by side in one run, and prints mIoU overall, on
hard and on clean regions, params, GFLOPs per megavoxel and voxels/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import matseg
from matseg.sample import write_sample
from matseg.synth import SampleConfig

TEST_SEEDS = (301, 302)
TEST_SHAPE = (32, 256, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--weights", help="weights folder (default: bundled)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in TEST_SEEDS:
            sample = write_sample(
                Path(tmp) / f"test-{seed}.zarr", TEST_SHAPE, seed, SampleConfig(profile="test")
            )
            for model in ("cheap", "medium", "expensive"):
                report = matseg.segment(
                    sample,
                    Path(tmp) / f"{model}-{seed}.zarr",
                    model=model,
                    weights=args.weights,
                    truth=sample,
                    workers=args.workers,
                )
                row = rows.setdefault(model, {"volumes": []})
                row["params"] = next(m["params"] for m in report["models"] if m["name"] == model)
                row["volumes"].append(
                    {
                        "seed": seed,
                        "miou": report["metrics"]["miou"],
                        "hard": report["metrics"]["hard"]["miou"],
                        "clean": report["metrics"]["clean"]["miou"],
                        "iou": report["metrics"]["iou"],
                        "gflops": report["gflops"],
                        "gflops_per_megavoxel": report["gflops_per_megavoxel"],
                        "voxels_per_s": report["timings"]["voxels_per_s"],
                    }
                )
    print(f"test volumes: seeds {TEST_SEEDS}, shape {TEST_SHAPE}, profile 'test'")
    header = ("model", "params", "mIoU", "hard", "clean", "GFLOP/Mvox", "voxels/s")
    print(f"{header[0]:10}" + "".join(f" {h:>{w}}" for h, w in zip(header[1:], (9, 7, 7, 7, 11, 11))))
    for model, row in rows.items():
        vols = row["volumes"]
        for key in ("miou", "hard", "clean", "gflops_per_megavoxel", "voxels_per_s"):
            row[key] = float(np.mean([v[key] for v in vols]))
        print(
            f"{model:10} {row['params']:>9,} {row['miou']:>7.4f} {row['hard']:>7.4f} {row['clean']:>7.4f} "
            f"{row['gflops_per_megavoxel']:>11.1f} {row['voxels_per_s']:>11,.0f}"
        )
    ratio = rows["expensive"]["gflops_per_megavoxel"] / rows["cheap"]["gflops_per_megavoxel"]
    speed = rows["cheap"]["voxels_per_s"] / rows["expensive"]["voxels_per_s"]
    print(f"expensive/cheap: {ratio:.1f}x the FLOPs, {speed:.1f}x the wall time (same run, same data)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
