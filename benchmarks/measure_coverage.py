"""How often the truth's metric lies inside `matseg measure`'s interval, on generated volumes.

    python benchmarks/measure_coverage.py [--seeds 921 922 923 924] [--shape 16 96 96] [--samples 4]

Each seed: a `matseg sample` volume with the test imaging profile (ranges disjoint
from the training data's), segmented by the default selector with the bundled
weights, measured with draws; its truth measured without. Reported per metric
family and overall: coverage of the interval (value +- 2 RMS deviation of the
draws), and of the intervals at widths 1 and 3 from the same draws; the
segmentation's error against the truth beside the interval's half-width.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import matseg
from matseg.microstructure.report import interval
from matseg.sample import write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[921, 922, 923, 924])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 96, 96])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", default="docs/measure-coverage.json")
    args = parser.parse_args()
    from matseg.synth import SampleConfig

    pairs = []  # (key, truth, value, draws)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            sample = Path(tmp) / f"sample-{seed}.zarr"
            write_sample(sample, tuple(args.shape), seed, SampleConfig(profile="test"))
            phases = Path(tmp) / f"phases-{seed}.zarr"
            matseg.segment(sample, phases, progress=False)
            truth = matseg.measure(sample, labels=True, samples=0, rev=False)
            measured = matseg.measure(phases, samples=args.samples, seed=seed, rev=False)
            truths = {_key(r): r["value"] for r in truth["rows"]}
            for r in measured["rows"]:
                key = _key(r)
                draws = [d["/".join((*key, r["unit"]))] for d in measured["draws"]]
                pairs.append((key, truths.get(key), r["value"], draws))
            done = args.seeds[: args.seeds.index(seed) + 1]
            result = summarise(pairs, done, args, time.perf_counter() - start)
            Path(args.out).write_text(json.dumps(result, indent=1))
            print(
                f"seed {seed}: {result['seconds']:.0f} s, coverage {result['widths']['2.0']['overall']:.2f}",
                flush=True,
            )
    print(json.dumps(result["widths"]["2.0"], indent=1))


def summarise(pairs: list, seeds: list[int], args, seconds: float) -> dict:
    """Coverage by metric family at three widths, and the errors beside the draws' spread."""
    result = {"seeds": seeds, "shape": args.shape, "samples": args.samples, "widths": {}}
    for width in (1.0, 2.0, 3.0):
        families = defaultdict(lambda: [0, 0])
        for (metric, _, _), truth, value, draws in pairs:
            if truth is None or not np.isfinite(truth):
                continue
            low, high = interval(value, draws, width)
            if low is None:
                continue
            families[metric][0] += int(low <= truth <= high)
            families[metric][1] += 1
        total = np.sum(list(families.values()), axis=0)
        result["widths"][str(width)] = {
            "overall": float(total[0] / total[1]),
            "n": int(total[1]),
            "by_metric": {m: {"coverage": c / n, "n": n} for m, (c, n) in sorted(families.items())},
        }
    errors = defaultdict(list)
    for (metric, _, _), truth, value, draws in pairs:
        if truth and np.isfinite(truth) and np.isfinite(value) and truth != 0:
            rms = float(np.sqrt(np.mean((np.asarray(draws) - value) ** 2)))
            errors[metric].append((abs(value - truth) / abs(truth), rms / abs(truth)))
    result["relative_error_vs_half_width"] = {
        m: {
            "median_error": float(np.median([e for e, _ in v])),
            "median_rms": float(np.median([w for _, w in v])),
        }
        for m, v in sorted(errors.items())
    }
    result["seconds"] = seconds
    return result


def _key(row: dict) -> tuple[str, str, str]:
    return row["metric"], row["phases"], row["axis"]


if __name__ == "__main__":
    main()
