"""Does the audit's 95 % interval contain the true change in mIoU? Measured on volumes with
truth, the estimator's temperatures chosen on one set of volumes and its coverage reported on
another.

    python benchmarks/audit_coverage.py [--out docs/audit-coverage.json] [--work DIR] [--tolerance 0.01]
        [--lambda 0.01] [--no-recalibrate] [--fixed-from docs/audit-coverage.json]
    python benchmarks/audit_coverage.py --analyse docs/audit-coverage.json
    python benchmarks/audit_coverage.py --fresh 7200 --out docs/audit-coverage-fresh.json

Volumes (24 x 384 x 384): eight imaging kinds — the `train`, `test` and `wide` profiles and
five of our own beyond both generator profiles (noisier, blurrier, stronger shading and
curtains, lower phase contrast, mostly hard regions) — two seeds each for calibration
(seeds 7000...) and three each for validation (seeds 7100...), disjoint from every training
seed. Each volume is segmented by the default command and by every candidate alone, all
scored against the truth; the true change is the default run's mIoU minus the all-reference
run's. The stored audit is then re-estimated at every point temperature and every
temperature range (:func:`matseg.pipeline.confidence.estimate_change`): the calibration
volumes pick the pair with the narrowest intervals among those covering all of them, and
the validation volumes report its coverage and width. The table also says, per volume,
whether a fixed candidate dominates the default run (no more GFLOPs, higher mIoU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import zarr

import matseg
from matseg.pipeline.audit import TEMPERATURES
from matseg.pipeline.confidence import TEMPERATURE, TEMPERATURE_RANGE, estimate_change, stored_evidence
from matseg.sample import write_sample
from matseg.synth import SampleConfig

SHAPE = (24, 384, 384)
FIXED = (
    "cheap",
    "medium",
    "expensive",
    "classical",
)  # expensive-2x costs more than expensive: it never dominates
KINDS = {
    "train": {"profile": "train"},
    "test": {"profile": "test"},
    "wide": {"profile": "wide"},
    "noisy": {"noise_std": (10.0, 16.0), "hard_noise_std": (16.0, 24.0), "shot_noise_gain": (0.1, 0.2)},
    "blurry": {"blur_sigma": (1.1, 1.5), "hard_blur_sigma": (1.8, 2.4)},
    "shaded": {"shading_amplitude": (0.15, 0.25), "curtain_amplitude": (5.0, 9.0)},
    "low-contrast": {
        "pore_level": (45.0, 60.0),
        "binder_level": (80.0, 95.0),
        "active_level": (140.0, 160.0),
    },
    "hard": {"hard_fraction": 0.6},
}
SPLITS = {"calibration": (7000, 2), "validation": (7100, 3)}
RANGES = [(lo, hi) for lo, hi in itertools.combinations_with_replacement(TEMPERATURES, 2)]


def volumes(splits: dict = SPLITS) -> list[dict]:
    """Every volume of the study: kind, split, seed."""
    rows = []
    for split, (first, n) in splits.items():
        for k, kind in enumerate(KINDS):
            for i in range(n):
                rows.append({"kind": kind, "split": split, "seed": first + 10 * k + i})
    return rows


def measure(
    row: dict,
    work: Path,
    earlier: dict | None = None,
    tolerance: float | None = None,
    recalibrate=True,
    lam: float | None = None,
) -> dict:
    """Segment one volume every way; the default run's estimate at every temperature.
    ``earlier``: this volume's results from an earlier run, whose fixed candidates are kept
    (one model on every tile does not depend on the selector, the audit or the tolerance)."""
    sample = work / f"{row['kind']}-{row['seed']}.zarr"
    if not sample.exists():
        write_sample(sample, SHAPE, row["seed"], SampleConfig(**KINDS[row["kind"]]))
    out = dict(row)
    for model in FIXED:
        if earlier is not None:
            out[model] = earlier[model]
            continue
        report = matseg.segment(sample, work / "fixed.zarr", model=model, truth=sample, overwrite=True)
        out[model] = {"miou": report["metrics"]["miou"], "gflops": report["gflops"]}
    output = work / "auto.zarr"
    report = matseg.segment(
        sample, output, truth=sample, overwrite=True, tolerance=tolerance, recalibrate=recalibrate, lam=lam
    )
    estimate = report["estimate"]
    out["auto"] = {"miou": report["metrics"]["miou"], "gflops": report["gflops"]}
    reference = estimate["reference"]
    out["true_change"] = report["metrics"]["miou"] - out[reference]["miou"]
    out["audit_gflops"] = report["gflops_breakdown"].get("audit", 0.0)
    out["audited_cells"] = estimate["audited_cells"]
    out["moved_tiles"] = estimate.get("moved_tiles", {})
    out["within_tolerance"] = estimate.get("within_tolerance")
    out["fixed_estimates"] = {
        name: [round(f["delta_miou"], 5), *(round(v, 5) for v in f["ci95"]), round(f["gflops"], 2)]
        for name, f in estimate.get("fixed", {}).items()
    }
    out["better_fixed"] = estimate.get("better_fixed")
    phases = list(estimate["phase_fractions"])
    found = stored_evidence(zarr.open_group(output, mode="r"), len(phases), report["candidates"])
    audit, evidence, common, assigned, dropped = found
    out["estimates"] = {
        f"{t}|{lo}|{hi}": _rounded(
            estimate_change(audit, evidence, common, phases, reference, t, (lo, hi), 0, assigned, dropped)
        )
        for t in TEMPERATURES
        for lo, hi in RANGES
    }
    return out


def _rounded(estimate: dict) -> list[float]:
    return [round(estimate["delta_miou"], 5), *(round(v, 5) for v in estimate["ci95"])]


def analyse(rows: list[dict]) -> dict:
    """The (temperature, range) the calibration volumes pick, and coverage on both sets."""

    def scores(subset, key):
        est = np.array([r["estimates"][key] for r in subset])
        truth = np.array([r["true_change"] for r in subset])
        below, above = truth < est[:, 1], truth > est[:, 2]
        width = est[:, 2] - est[:, 1]
        covered = 1 - float(below.mean() + above.mean())
        return covered, float(np.median(width)), float(width.max()), float(below.mean()), float(above.mean())

    calibration = [r for r in rows if r["split"] == "calibration"]
    validation = [r for r in rows if r["split"] == "validation"]
    if not calibration:  # a fresh set (--fresh): the interval as it is, nothing chosen on it
        current = f"{TEMPERATURE}|{TEMPERATURE_RANGE[0]}|{TEMPERATURE_RANGE[1]}"
        coverage, median_width, max_width, below, above = scores(rows, current)
        fresh = {"coverage": coverage, "below": below, "above": above, "median_width": median_width,
                 "max_width": max_width, "volumes": len(rows)}  # fmt: skip
        return {"chosen": current, "current": current, "current_fresh": fresh}
    table = {key: scores(calibration, key) for key in calibration[0]["estimates"]}
    best_coverage = max(v[0] for v in table.values())
    chosen = min((k for k, v in table.items() if v[0] >= best_coverage), key=lambda k: table[k][1])
    current = f"{TEMPERATURE}|{TEMPERATURE_RANGE[0]}|{TEMPERATURE_RANGE[1]}"
    result = {"chosen": chosen, "current": current}
    for name, key in (("chosen", chosen), ("current", current)):
        for split, subset in (("calibration", calibration), ("validation", validation), ("all", rows)):
            coverage, median_width, max_width, below, above = scores(subset, key)
            result[f"{name}_{split}"] = {
                "coverage": coverage,
                "below": below,  # the true change under the interval: the run lost more than it says
                "above": above,
                "median_width": median_width,
                "max_width": max_width,
                "volumes": len(subset),
            }
    return result


def dominated_by(row: dict) -> list[str]:
    """Fixed candidates with no more GFLOPs and a higher mIoU than the default run."""
    auto = row["auto"]
    return [m for m in FIXED if row[m]["gflops"] <= auto["gflops"] and row[m]["miou"] > auto["miou"]]


def fixed_summary(rows: list[dict]) -> dict:
    """How well the report's fixed-candidate estimates and its ``better_fixed`` hold up: each
    fixed candidate's true change against all-expensive inside its interval, and the named
    candidate truly dominating the run (as many GFLOPs or fewer, higher mIoU)."""
    inside, total, errors = 0, 0, []
    for r in rows:
        for name, (point, low, high, _) in r.get("fixed_estimates", {}).items():
            if name in FIXED:
                truth = r[name]["miou"] - r["expensive"]["miou"]
                inside += low <= truth <= high
                total += 1
                errors.append(point - truth)
    named = [r for r in rows if r.get("better_fixed")]
    right = [r for r in named if r["better_fixed"] in dominated_by(r)]
    dominated = [r for r in rows if dominated_by(r)]
    return {
        "fixed_intervals_cover": inside / total if total else None,
        "fixed_estimates": total,
        "fixed_bias": float(np.mean(errors)) if errors else None,
        "named": len(named),
        "named_and_dominating": len(right),
        "dominated": len(dominated),
        "dominated_and_named": sum(1 for r in dominated if r.get("better_fixed") in dominated_by(r)),
    }


def print_table(rows: list[dict], summary: dict) -> None:
    key = summary["current"]
    print(f"shape {SHAPE}; estimate at T {key} (point|range)")
    head = f"{'kind':13} {'split':11} {'seed':>5} {'auto':>7} {'%GF':>5} {'ref':>7} {'medium':>7} {'true':>8}"
    print(head + f" {'estimate':>8} {'95 % interval':>19} {'in':>3}  dominated by / the audit names")
    for r in rows:
        point, lo, hi = r["estimates"][key]
        reference = r["expensive"]
        share = 100 * r["auto"]["gflops"] / reference["gflops"]
        inside = "yes" if lo <= r["true_change"] <= hi else "NO"
        print(
            f"{r['kind']:13} {r['split']:11} {r['seed']:5d} {r['auto']['miou']:7.4f} {share:5.1f} "
            f"{reference['miou']:7.4f} {r['medium']['miou']:7.4f} {r['true_change']:+8.4f} {point:+8.4f} "
            f"{lo:+9.4f} … {hi:+7.4f} {inside:>3}  {', '.join(dominated_by(r)) or '-'} / "
            f"{r.get('better_fixed') or '-'}"
        )
    for name in ("current", "chosen"):
        print(f"{name} (T|low|high = {summary[name]}):")
        for split in ("calibration", "validation", "all", "fresh"):
            if f"{name}_{split}" not in summary:
                continue
            s = summary[f"{name}_{split}"]
            print(
                f"  {split:11} coverage {s['coverage']:.0%} of {s['volumes']} (below {s['below']:.0%}, "
                f"above {s['above']:.0%}), width median {s['median_width']:.3f}, max {s['max_width']:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the per-volume results as JSON here")
    parser.add_argument("--work", type=Path, help="keep the generated volumes here (reused)")
    parser.add_argument("--analyse", type=Path, help="only analyse the results in this JSON")
    parser.add_argument("--tolerance", type=float, help="segment with this --tolerance (default: off)")
    parser.add_argument(
        "--lambda", dest="lam", type=float, help="segment with this λ (default: the selector's)"
    )
    parser.add_argument(
        "--no-recalibrate", action="store_true", help="the selector's plan as it is (no recalibration)"
    )
    parser.add_argument("--all-estimates", type=Path, help="write every temperature's estimates here")
    parser.add_argument(
        "--fresh",
        type=int,
        metavar="SEED",
        help="instead: a fresh set of 3 volumes per kind from this seed (e.g. 7200), the interval as it is",
    )
    parser.add_argument(
        "--fixed-from",
        type=Path,
        help="take the fixed candidates' results from this earlier JSON (same weights)",
    )
    args = parser.parse_args()
    earlier = {}
    if args.fixed_from:
        earlier = {(r["kind"], r["seed"]): r for r in json.loads(args.fixed_from.read_text())["volumes"]}
    if args.analyse:
        rows = json.loads(args.analyse.read_text())["volumes"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            rows = []
            for row in volumes({"fresh": (args.fresh, 3)} if args.fresh is not None else SPLITS):
                fixed = earlier.get((row["kind"], row["seed"]))
                rows.append(measure(row, work, fixed, args.tolerance, not args.no_recalibrate, args.lam))
                print(f"{row['kind']} {row['seed']}: true {rows[-1]['true_change']:+.4f}", flush=True)
    summary = analyse(rows)
    summary["fixed"] = fixed_summary(rows)
    print_table(rows, summary)
    print("fixed candidates as the audit estimates them:", json.dumps(summary["fixed"]))
    if args.out:  # each volume's estimates at the two (temperature, range) pairs the summary names
        kept = {summary["current"], summary["chosen"]}
        compact = [{**r, "estimates": {k: v for k, v in r["estimates"].items() if k in kept}} for r in rows]
        args.out.write_text(json.dumps({"summary": summary, "volumes": compact}, indent=1) + "\n")
    if args.all_estimates:
        args.all_estimates.write_text(json.dumps({"summary": summary, "volumes": rows}) + "\n")


if __name__ == "__main__":
    main()
