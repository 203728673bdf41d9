"""Calibrate `matseg measure`'s intervals on training-profile volumes; measure their coverage on others.

    python benchmarks/measure_coverage.py collect --profile train --seeds 501 502 ... # volumes with truth
    python benchmarks/measure_coverage.py calibrate --seeds 501 502 ...               # writes the table
    python benchmarks/measure_coverage.py coverage --test 921 922 ... --wide 931 ...   # docs JSON

``collect``: per seed, a `matseg sample` volume of the profile (16 x 96 x 96 by
default), segmented by the default selector with the bundled weights, measured
with draws (no calibration), its truth measured without; each metric's truth,
value and draws kept in ``--work/PROFILE-SEED.json`` (so the later steps run in
seconds). ``calibrate``: the split-conformal margins (see
``matseg.microstructure.calibration``) from the *train*-profile volumes (seeds
other than the bundled weights' training volumes 101-103 and validation 201),
written into the package. ``coverage``: on the test- and wide-profile volumes,
the share of (metric, volume) pairs whose truth lies inside the interval, per
metric and profile, with the calibrated intervals and with the draws' spread
alone (value +- 2 RMS).
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
from matseg.microstructure.calibration import CALIBRATION_FILE, calibrated_interval, fit
from matseg.microstructure.report import interval
from matseg.sample import write_sample


def collect(profile: str, seeds: list[int], shape: tuple[int, ...], samples: int, work: Path) -> None:
    """Segment and measure each seed's volume and its truth; keep the pairs in ``work``."""
    from matseg.synth import SampleConfig

    work.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        target = work / f"{profile}-{seed}.json"
        if target.exists():
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / "sample.zarr"
            write_sample(sample, shape, seed, SampleConfig(profile=profile))
            phases = Path(tmp) / "phases.zarr"
            matseg.segment(sample, phases)
            truth = matseg.measure(sample, labels=True, samples=0, rev=False)
            measured = matseg.measure(phases, samples=samples, seed=seed, rev=False, calibrated=False)
        truths = {_key(r): r["value"] for r in truth["rows"]}
        rows = []
        for r in measured["rows"]:
            key = _key(r)
            draws = [d["/".join((*key, r["unit"]))] for d in measured["draws"]]
            rows.append({"key": list(key), "truth": truths.get(key), "value": r["value"], "draws": draws})
        record = {"profile": profile, "seed": seed, "shape": list(shape), "rows": rows}
        record["voxel_size"] = measured["input"]["voxel_size"]
        target.write_text(json.dumps(record, default=_finite))
        print(f"{profile} {seed}: {time.perf_counter() - start:.0f} s", flush=True)


def _load(work: Path, profile: str, seeds: list[int]) -> list[dict]:
    return [json.loads((work / f"{profile}-{s}.json").read_text()) for s in seeds]


def _pairs(records: list[dict]):
    for record in records:
        step = 2 * min(record.get("voxel_size", (1.0, 1.0, 1.0)))
        for row in record["rows"]:
            truth, value = row["truth"], row["value"]
            if truth is None or value is None or not (np.isfinite(truth) and np.isfinite(value)):
                continue
            draws = [d for d in row["draws"] if d is not None]
            yield row["key"][0], truth, value, draws, step


def calibrate(seeds: list[int], work: Path, out: Path) -> None:
    """Fit the per-metric margins on the train-profile volumes and write them."""
    triples = defaultdict(list)
    for metric, truth, value, draws, step in _pairs(_load(work, "train", seeds)):
        triples[metric].append((truth, value, draws, step))
    table = fit(triples)
    table["fitted_on"] = {
        "profile": "train",
        "seeds": seeds,
        "shape": _load(work, "train", seeds)[0]["shape"],
    }
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["margins"], indent=1))


def coverage(profiles: dict[str, list[int]], work: Path, out: Path) -> None:
    """Coverage of the calibrated intervals and of the draws' spread alone, per metric and profile."""
    table = json.loads(CALIBRATION_FILE.read_text())
    counts = defaultdict(lambda: np.zeros(4, dtype=int))  # calibrated in, spread in, pairs, width sum
    errors = defaultdict(list)
    for profile, seeds in profiles.items():
        for metric, truth, value, draws, step in _pairs(_load(work, profile, seeds)):
            low, high = calibrated_interval(metric, value, draws, table, step)
            slow, shigh = interval(value, draws)
            if low is None or slow is None:
                continue
            for group in (metric, f"{profile}:{metric}", "all", f"{profile}:all"):
                counts[group] += (int(low <= truth <= high), int(slow <= truth <= shigh), 1, 0)
            if truth:
                errors[metric].append(
                    (abs(value - truth) / abs(truth), (high - low) / 2 / abs(truth) if value else 0.0)
                )
    result = {
        "profiles": profiles,
        "calibration": {k: table[k] for k in ("level", "fitted_on")},
        "coverage": {
            g: {"calibrated": int(c[0]) / int(c[2]), "draws_only": int(c[1]) / int(c[2]), "n": int(c[2])}
            for g, c in sorted(counts.items())
        },
        "median_relative_error_vs_half_width": {
            m: {
                "error": float(np.median([e for e, _ in v])),
                "half_width": float(np.median([w for _, w in v])),
            }
            for m, v in sorted(errors.items())
        },
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    for group, c in result["coverage"].items():
        print(f"{group:40s} n={c['n']:4d} calibrated {c['calibrated']:.0%}  draws only {c['draws_only']:.0%}")


def _key(row: dict) -> tuple[str, str, str]:
    return row["metric"], row["phases"], row["axis"]


def _finite(value):
    return None if isinstance(value, float) and not np.isfinite(value) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("collect", "calibrate", "coverage"))
    parser.add_argument("--profile", default="train")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(501, 511)))
    parser.add_argument("--test", type=int, nargs="+", default=list(range(921, 927)))
    parser.add_argument("--wide", type=int, nargs="+", default=list(range(931, 937)))
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 96, 96])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("work-out/measure-coverage"))
    parser.add_argument("--out", type=Path, default=Path("docs/measure-coverage.json"))
    args = parser.parse_args()
    if args.step == "collect":
        collect(args.profile, args.seeds, tuple(args.shape), args.samples, args.work)
    elif args.step == "calibrate":
        calibrate(args.seeds, args.work, CALIBRATION_FILE)
    else:
        coverage({"test": args.test, "wide": args.wide}, args.work, args.out)


if __name__ == "__main__":
    main()
