"""Does the fit check tell the volumes the weights serve from those they do not?

    python benchmarks/fit.py [--weights DIR] [--seeds 8] [--offset 0] [--out docs/fit.json]

Generates volumes (16 x 256 x 256) of the generator's `train` profile (seeds 401...: the
selector's kind of data), its `test` profile (301...), the `wide` profile (501...), `test`
volumes with inverted grey levels, and takes the real EMPS electron-microscopy images in
data/emps/ (two phases, scored as such); runs the default `matseg segment` on each with
the truth and prints per volume the fit distance, its three parts (each divided by its
threshold), the net's uncertainty on the inverted slices over that on the slices as they
are where the contrast part asked it (`matseg.candidates.fit.polarity`), whether it was
flagged, and the run's mIoU. Seeds are disjoint from every
training and validation seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import zarr

import matseg
from matseg.sample import write_sample
from matseg.synth import SampleConfig

SHAPE = (16, 256, 256)
FIRST_SEED = {"train": 401, "test": 301, "wide": 501}
ROOT = Path(__file__).resolve().parents[1]


def volumes(work: Path, n_seeds: int, offset: int = 0):
    """(kind, name, image, truth) of every volume of the study, generated once into ``work``."""
    for profile, first in FIRST_SEED.items():
        for seed in range(first + offset, first + offset + n_seeds):
            path = work / f"{profile}-{seed}.zarr"
            if not path.exists():
                write_sample(path, SHAPE, seed, SampleConfig(profile=profile))
            yield profile, f"{profile} {seed}", path, path
    for seed in range(FIRST_SEED["test"] + offset, FIRST_SEED["test"] + offset + n_seeds):
        path = work / f"inverted-{seed}.zarr"
        if not path.exists():
            write_sample(path, SHAPE, seed, SampleConfig(profile="test"))
            image = zarr.open_array(str(path / "0"), mode="r+")
            data = image[:]
            image[:] = data.max() + data.min() - data
        yield "inverted", f"test {seed} inverted", path, path
    yield "emps", "EMPS images (2 phases)", ROOT / "data/emps/image.tif", ROOT / "data/emps/labels.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights folder (default: bundled)")
    parser.add_argument("--seeds", type=int, default=8, help="volumes per profile")
    parser.add_argument("--offset", type=int, default=0, help="first seeds + this (a held-out set)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--work", help="keep the generated volumes here (default: a temporary folder)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"{'volume':<26}{'distance':>9}{'intensity':>10}{'contrast':>9}{'uncert.':>9}{'net inv.':>9}"
            f"{'flagged':>9}{'mIoU':>8}"
        )
        for kind, name, image, truth in volumes(work, args.seeds, args.offset):
            # the EMPS images have two phases: the three-phase weights are scored on their
            # own labels 0 and 1 (background, and particle as 'carbon-binder': the best case)
            report = matseg.segment(
                image, work / "phases.zarr", weights=args.weights, overwrite=True,
                truth=truth if kind != "emps" else None,
            )  # fmt: skip
            fit = report["fit"]
            miou = report["metrics"]["miou"] if "metrics" in report else _two_phase_miou(work, truth)
            row = {"kind": kind, "volume": name, **fit, "miou": miou}
            rows.append(row)
            print(
                f"{name:<26}{fit['distance']:>9.2f}{fit['intensity']:>10.2f}{fit['contrast']:>9.2f}"
                f"{fit['uncertainty'] if fit['uncertainty'] is not None else float('nan'):>9.2f}"
                f"{_asked(fit):>9}{'yes' if not fit['fits'] else 'no':>9}{miou:>8.3f}",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


def _asked(fit: dict) -> str:
    """The net's uncertainty on the inverted slices over that on the slices as they are, where
    the contrast part sent the check to ask it (below 1: the contrast looks inverted)."""
    asked = fit.get("polarity")
    return f"{asked['inverted'] / max(asked['as_is'], 1e-6):.2f}" if asked else "-"


def _two_phase_miou(work: Path, truth: Path) -> float:
    """mIoU of a three-phase segmentation against two-phase labels, its phases merged the best way."""
    import tifffile

    pred = np.asarray(zarr.open_group(str(work / "phases.zarr"), mode="r")["labels/phases/0"])
    labels = tifffile.imread(truth)
    best = 0.0
    for particle in ({0}, {1}, {2}, {0, 1}, {1, 2}, {0, 2}):
        mask = np.isin(pred, list(particle))
        ious = [np.sum(mask & (labels == 1)) / np.sum(mask | (labels == 1))]
        ious.append(np.sum(~mask & (labels == 0)) / np.sum(~mask | (labels == 0)))
        best = max(best, float(np.mean(ious)))
    return best


if __name__ == "__main__":
    main()
