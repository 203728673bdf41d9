"""Every candidate on `test` and `wide` volumes: does accuracy, and the order of the candidates,
survive imaging the segmenters were not trained on?

    python benchmarks/robustness.py [--weights DIR] [--out docs/robustness.json] [--seeds 10]

Generates `--seeds` volumes per profile (16 x 192 x 192; seeds 301... for `test`, 501... for
`wide`, disjoint from every training, validation and selector seed), segments each with every
candidate (cheap, medium, expensive, expensive-2x, classical, and the flip-averaged
medium-tta and expensive-tta) and prints, per profile, each candidate's median / mean /
minimum mIoU, its GFLOPs as a share of the expensive net's, and how often the nets keep their
order (expensive >= medium >= cheap) on a volume.
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

CANDIDATES = ("cheap", "medium", "expensive", "expensive-2x", "classical", "medium-tta", "expensive-tta")
FIRST_SEED = {"test": 301, "wide": 501}
SHAPE = (16, 192, 192)


def run(weights: str | None, n_seeds: int, work: Path, workers: int | None) -> dict:
    """Per profile: per candidate the mIoU of every volume, and the order check."""
    results: dict[str, dict] = {}
    for profile, first in FIRST_SEED.items():
        per_volume = []
        for seed in range(first, first + n_seeds):
            sample = work / f"{profile}-{seed}.zarr"
            if not sample.exists():
                write_sample(sample, SHAPE, seed, SampleConfig(profile=profile))
            row = {"seed": seed, "gflops": {}}
            for model in CANDIDATES:
                report = matseg.segment(
                    sample,
                    work / "out.zarr",
                    model=model,
                    weights=weights,
                    truth=sample,
                    workers=workers,
                    overwrite=True,
                )
                row[model] = round(report["metrics"]["miou"], 4)
                row["gflops"][model] = report["gflops"]
            row["ordered"] = bool(row["expensive"] >= row["medium"] >= row["cheap"])
            per_volume.append(row)
        summary = {
            model: {
                "median": float(np.median([r[model] for r in per_volume])),
                "mean": float(np.mean([r[model] for r in per_volume])),
                "min": float(np.min([r[model] for r in per_volume])),
                "gflops_of_expensive": float(
                    np.median([r["gflops"][model] / r["gflops"]["expensive"] for r in per_volume])
                ),
            }
            for model in CANDIDATES
        }
        ordered = float(np.mean([r["ordered"] for r in per_volume]))
        results[profile] = {"volumes": per_volume, "summary": summary, "ordered_fraction": ordered}
    return results


def print_table(results: dict) -> None:
    print(f"shape {SHAPE}; mIoU over the volumes of each profile (median / mean / min)")
    print(f"{'profile':8} {'candidate':13} {'median':>7} {'mean':>7} {'min':>7} {'GFLOPs, x expensive':>20}")
    for profile, r in results.items():
        for model, s in r["summary"].items():
            cost = s["gflops_of_expensive"]
            print(f"{profile:8} {model:13} {s['median']:7.4f} {s['mean']:7.4f} {s['min']:7.4f} {cost:20.3f}")
        n = len(r["volumes"])
        print(f"{profile:8} expensive >= medium >= cheap on {r['ordered_fraction']:.0%} of {n} volumes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights folder (default: bundled)")
    parser.add_argument("--seeds", type=int, default=10, help="volumes per profile")
    parser.add_argument("--out", type=Path, help="write the per-volume results as JSON here")
    parser.add_argument("--work", type=Path, help="keep the generated volumes here (reused)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args.weights, args.seeds, args.work, args.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = run(args.weights, args.seeds, Path(tmp), args.workers)
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
