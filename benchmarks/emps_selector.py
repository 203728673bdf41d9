"""A lab's own data: segmenters and selector trained on part of the real EMPS set, the selector
and its audit scored on the rest (two phases, 2-D images).

    python benchmarks/emps_selector.py --data ../shared/data/emps --work /tmp/emps \
        [--steps 600] [--augment light|none|strong|FILE.yaml] [--out docs/emps-selector.json]

The 48 EMPS images (SEM/TEM, particle vs background, MIT licence, `SOURCE.md` beside them) are
split in stack order: images 0-23 train the three segmenters (`matseg.train`, imaging
augmentation `light` by default, as `matseg train`), 24-35 train the selector
(`matseg.train_selector`), 36-47 are held out. Each held-out image is one 2-D volume:
segmented by the default command (selector with its audit against the candidate the selector
found most accurate on its training tiles) and by each candidate alone, all scored against its
labels. Per image: the default's mIoU and GFLOPs against all-expensive, the audit's estimate
and interval against the true change (against the all-reference run), the fixed candidates
that dominate the default (as many GFLOPs or fewer, higher mIoU) and the one the audit names
(`better_fixed`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

import matseg
from matseg.selector.train import train_selector

PHASES = ("background", "particle")
SPLITS = {"train": range(0, 24), "selector": range(24, 36), "test": range(36, 48)}
FIXED = ("cheap", "medium", "expensive", "classical")


def write_splits(data: Path, work: Path) -> dict[str, tuple[Path, Path]]:
    """The image and label stacks of each split, as TIFF files in ``work``."""
    images, labels = tifffile.imread(data / "image.tif"), tifffile.imread(data / "labels.tif")
    out = {}
    for name, rows in SPLITS.items():
        paths = (work / f"{name}-image.tif", work / f"{name}-labels.tif")
        tifffile.imwrite(paths[0], images[list(rows)])
        tifffile.imwrite(paths[1], labels[list(rows)])
        out[name] = paths
    return out


def held_out(data: Path, work: Path) -> list[tuple[int, Path, Path]]:
    """Each held-out image and its labels as a 2-D TIFF."""
    images, labels = tifffile.imread(data / "image.tif"), tifffile.imread(data / "labels.tif")
    out = []
    for i in SPLITS["test"]:
        image, label = work / f"test-{i}.tif", work / f"test-{i}-labels.tif"
        tifffile.imwrite(image, images[i])
        tifffile.imwrite(label, labels[i])
        out.append((i, image, label))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/emps"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600, help="training steps per segmenter")
    parser.add_argument("--selector-steps", type=int, default=2000)
    parser.add_argument("--augment", default="light", help="the segmenters' imaging augmentation")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    weights = args.work / "weights"
    splits = write_splits(args.data, args.work)
    if not (weights / "expensive.pt").exists():
        trained = matseg.train(
            [str(splits["train"][0])], weights, labels=[str(splits["train"][1])], phases=PHASES,
            steps=args.steps, batch=8, patch=128, seed=0, augment=args.augment,
        )  # fmt: skip
        print("segmenters:", json.dumps(trained, default=str)[:600], flush=True)
    if not (weights / "selector.pt").exists():
        chosen = train_selector(
            [str(splits["selector"][0])], weights, labels=[str(splits["selector"][1])],
            tile=(8, 256, 256), steps=args.selector_steps, seed=0,
        )  # fmt: skip
        print("selector:", json.dumps(chosen, default=str)[:600], flush=True)
    rows = []
    for i, image, label in held_out(args.data, args.work):
        row = {"image": i}
        for model in FIXED:
            report = matseg.segment(
                image, args.work / "fixed.zarr", model=model, weights=weights, truth=label, overwrite=True
            )
            row[model] = {"miou": report["metrics"]["miou"], "gflops": report["gflops"]}
        report = matseg.segment(image, args.work / "auto.zarr", weights=weights, truth=label, overwrite=True)
        estimate = report["estimate"]
        row["auto"] = {"miou": report["metrics"]["miou"], "gflops": report["gflops"]}
        row["decisions"] = report["decisions"]
        row["reference"] = estimate.get("reference")  # the selector's most accurate candidate
        row["true_change"] = report["metrics"]["miou"] - row[row["reference"] or "expensive"]["miou"]
        row["vs_expensive"] = report["metrics"]["miou"] - row["expensive"]["miou"]
        row["estimate"] = [estimate.get("delta_miou"), *estimate.get("ci95", [None, None])]
        row["audited_cells"] = estimate.get("audited_cells")
        row["better_fixed"] = estimate.get("better_fixed")
        row["dominated_by"] = [
            m
            for m in FIXED
            if row[m]["gflops"] <= row["auto"]["gflops"] and row[m]["miou"] > row["auto"]["miou"]
        ]
        rows.append(row)
        point, low, high = row["estimate"]
        share = row["auto"]["gflops"] / row["expensive"]["gflops"]
        print(
            f"image {i}: auto {row['auto']['miou']:.4f} at {100 * share:.1f} %, expensive "
            f"{row['expensive']['miou']:.4f}, medium {row['medium']['miou']:.4f}, "
            f"cheap {row['cheap']['miou']:.4f}; "
            f"vs all-expensive {row['vs_expensive']:+.4f}; vs all-{row['reference']} true "
            f"{row['true_change']:+.4f}, estimate {point:+.4f} ({low:+.4f} … {high:+.4f}); "
            f"dominated by {row['dominated_by'] or '-'}, audit names {row['better_fixed'] or '-'}",
            flush=True,
        )
    inside = [
        r
        for r in rows
        if r["estimate"][1] is not None and r["estimate"][1] <= r["true_change"] <= r["estimate"][2]
    ]
    summary = {
        "augment": args.augment,
        "images": len(rows),
        "within_0.01": sum(r["vs_expensive"] >= -0.01 for r in rows),
        "within_0.01_of_reference": sum(r["true_change"] >= -0.01 for r in rows),
        "dominated": sum(bool(r["dominated_by"]) for r in rows),
        "covered": len(inside),
        "median_width": float(np.median([r["estimate"][2] - r["estimate"][1] for r in rows])),
        "median_cost": float(np.median([r["auto"]["gflops"] / r["expensive"]["gflops"] for r in rows])),
        "named": sum(bool(r["better_fixed"]) for r in rows),
        "named_and_dominating": sum(
            r["better_fixed"] in r["dominated_by"] for r in rows if r["better_fixed"]
        ),
        "mean_miou": {m: float(np.mean([r[m]["miou"] for r in rows])) for m in (*FIXED, "auto")},
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "images": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
