"""The validation table of docs/measure.md: `matseg measure` on analytic cases and against PoreSpy.

    python benchmarks/measure_validation.py [--out docs/measure-validation.json]

Analytic: a slab (fractions, area), beds of spheres of several radii (surface per
volume), three cuboids meeting along a line (TPB length), a straight and a bent
channel (tortuosity factor). PoreSpy (when installed: the measure-validation
extra): tortuosity_fd along each axis and local_thickness on a random pore space.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from matseg.microstructure.blocks import Reader
from matseg.microstructure.interfaces import local_metrics
from matseg.microstructure.thickness import local_thickness
from matseg.microstructure.tortuosity import tortuosity
from matseg.synth.shapes import sphere_bed


def local(volume, n, size=(1.0, 1.0, 1.0), tpb=None):
    return local_metrics(Reader(da.from_array(volume, chunks=32)), n, size, tpb, block=(24, 32, 40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/measure-validation.json"))
    args = parser.parse_args()
    rows = []

    def add(case, metric, analytic, measured):
        rows.append(
            {
                "case": case,
                "metric": metric,
                "reference": analytic,
                "measured": measured,
                "relative_error": abs(measured - analytic) / abs(analytic),
            }
        )

    slab = np.zeros((20, 30, 40), np.uint8)
    slab[:, :, 10:25] = 1
    r = local(slab, 2, (2.0, 1.0, 0.5))
    add("slab 15 of 40 voxels, voxel 2 x 1 x 0.5", "volume fraction", 15 / 40, float(r["fraction"][1]))
    add(
        "slab 15 of 40 voxels, voxel 2 x 1 x 0.5",
        "interfacial area / volume",
        2 / 20,
        r["interface_area"][(0, 1)] / r["volume"],
    )
    for radius, spacing in ((4, 11), (6, 15), (8, 19), (12, 27)):
        volume, n = sphere_bed(radius, spacing)
        r = local(volume, 2)
        add(
            f"27 spheres, radius {radius} voxels",
            "surface area / volume",
            n * 4 * np.pi * radius**2 / volume.size,
            r["surface_area"][1] / r["volume"],
        )
    cuboids = np.zeros((20, 30, 40), np.uint8)
    cuboids[:, 15:, :20] = 1
    cuboids[:, 15:, 20:] = 2
    r = local(cuboids, 3, (2.0, 1.0, 0.5), (0, 1, 2))
    add(
        "three cuboids, voxel 2 x 1 x 0.5",
        "TPB length / volume",
        40 / r["volume"],
        r["tpb_length"] / r["volume"],
    )
    straight = np.zeros((6, 10, 30), bool)
    straight[:, 3:6, :] = True
    add("straight channel", "tortuosity factor", 1.0, tortuosity(straight, 2)["tau"])
    bent = np.zeros((4, 20, 30), bool)
    bent[:, 3, :11] = bent[:, 3:15, 10] = bent[:, 14, 10:] = True
    n = int(bent[0].sum())
    add(
        f"bent one-voxel channel, path {n} voxels over 30",
        "tortuosity factor",
        n * (n - 1) / (30 * 29),
        tortuosity(bent, 2, tol=1e-10)["tau"],
    )
    try:
        import porespy as ps
    except ImportError:
        print("porespy not installed: no comparison with PoreSpy")
    else:
        field = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(40, 48, 48)), 2.5)
        pores = field > np.quantile(field, 0.55)
        for axis in range(3):
            theirs = ps.simulations.tortuosity_fd(pores, axis=axis).tortuosity
            add(
                f"random pores 40 x 48 x 48, axis {'zyx'[axis]} (PoreSpy)",
                "tortuosity factor",
                float(theirs),
                tortuosity(pores, axis)["tau"],
            )
        theirs = 2 * ps.filters.local_thickness(pores)
        ours = local_thickness(pores, 16)
        add(
            "random pores (PoreSpy)",
            "local thickness d50",
            float(np.median(theirs[pores])),
            float(np.median(ours[pores])),
        )
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("| case | metric | reference | matseg | error |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['metric']} | {row['reference']:.5g} | {row['measured']:.5g} | "
            f"{100 * row['relative_error']:.2f} % |"
        )


if __name__ == "__main__":
    main()
