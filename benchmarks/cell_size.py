"""How fine should the selector choose? The oracle's frontier (the best candidate per unit
under each λ of the sweep) when the unit of choice is a tile of 256, 128 or 64 voxels
in-plane, from `matseg evaluate`'s tile tables on the benchmark's two test volumes.

    python benchmarks/cell_size.py --work /tmp/cells [--sizes 256 128 64] [--out docs/cell-size.json]

Each unit runs its candidate with the candidate's own halo, as `matseg segment` does with
tiles, so a finer grid pays more halo: the table gives the oracle's mIoU and GFLOPs at
each size, and the GFLOPs as a share of the all-expensive run on 256-voxel tiles (the
default's cost), so the sizes compare at equal cost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matseg.evaluate import evaluate
from matseg.sample import write_sample
from matseg.selector.policy import load_selector
from matseg.synth import SampleConfig

SEEDS = (301, 302)  # the selector benchmark's test volumes (docs/benchmarks.md)
SHAPE = (64, 512, 512)


def run(work: Path, sizes) -> dict:
    volumes = []
    for seed in SEEDS:
        path = work / f"test-{seed}.zarr"
        if not path.exists():
            write_sample(path, SHAPE, seed, SampleConfig(profile="test"))
        volumes.append(str(path))
    results = {}
    current = load_selector().sha256
    for size in sizes:
        folder = work / f"eval-{size}"
        done = folder / "evaluation.json"
        result = json.loads(done.read_text()) if done.exists() else None
        if result is not None and result["selector"]["sha256"] != current:
            result = None  # made with other weights (the selector's hash pins the segmenters')
        if result is None:
            result = evaluate(volumes, folder, tile=(8, size, size), real_run=False, overwrite=True)
        results[size] = {
            "all_expensive": result["all_expensive"],
            "all_cheap": result["all_cheap"],
            "oracle": [{"lambda": s["lambda"], **s["oracle"]} for s in result["sweep"]],
        }
    return results


def print_table(results: dict) -> None:
    """The oracle at each unit; GFLOPs as a share of the all-expensive run on the largest
    unit as run (each unit with its own halos), and as they would be if the units of a tile
    shared its halo (scaled by the all-expensive runs' ratio: what choosing per cell inside a
    tile, one halo per tile, could reach)."""
    base = results[max(results)]["all_expensive"]["gflops"]
    print(f"oracle per unit; GFLOPs as % of all-expensive on {max(results)}-voxel tiles ({base:,.0f})")
    print(f"{'unit':>5} {'lambda':>7} {'mIoU':>7} {'GFLOPs':>9} {'%':>6} {'% shared':>9}")
    for size, r in sorted(results.items(), reverse=True):
        e = r["all_expensive"]
        rows = [("all-exp", e), *((f"{o['lambda']:g}", o) for o in r["oracle"])]
        for name, o in rows:
            share, shared = 100 * o["gflops"] / base, 100 * o["gflops"] / e["gflops"]
            print(f"{size:5d} {name:>7} {o['miou']:7.4f} {o['gflops']:9,.0f} {share:6.1f} {shared:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="volumes and evaluations (reused)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(args.work, args.sizes)
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
