"""Would the selector gain from choosing a flip-averaged net? The oracle with and without it.

    python benchmarks/tta_oracle.py --work /tmp/tta [--candidates medium-tta] [--out FILE.json]

The selector can only choose as well as the best choice per tile allows. On the selector
benchmark's two `test` volumes (seeds 301 and 302) and two `wide` ones (501, 502), each
32 x 512 x 512, every candidate (the bundled selector's and the flip-averaged ones) runs on
every tile of 8 x 256 x 256 (`matseg.selector.table.tile_table`, the tables `matseg
evaluate` and `train-selector` use); the oracle then takes the best candidate per tile under
each λ of the evaluation sweep, once from the bundled selector's candidates and once with the
flip-averaged ones added. GFLOPs are those `matseg segment` would spend on the plan (cheap
pass, selector, candidates, blending). If the frontier with them is not higher at equal
GFLOPs, retraining the bundled selector with them cannot pay.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matseg.candidates.registry import CANDIDATES, Context
from matseg.evaluate import LAMBDAS, _Volumes
from matseg.models.store import load_segmenter
from matseg.pipeline.job import halo_of
from matseg.sample import write_sample
from matseg.selector.policy import load_selector
from matseg.selector.table import tile_table
from matseg.synth import SampleConfig

VOLUMES = {"test": (301, 302), "wide": (501, 502)}
SHAPE = (32, 512, 512)
TILE = (8, 256, 256)


def frontier(data: _Volumes, allowed: list[int]) -> list[dict]:
    """The oracle's plan at each λ, choosing only among the ``allowed`` candidates."""
    return [{"lambda": lam, **data.oracle(lam, allowed)} for lam in LAMBDAS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated volumes")
    parser.add_argument("--candidates", nargs="+", default=["medium-tta"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    selector = load_selector()
    names = [*selector.candidates, *args.candidates]
    needed = {"cheap"} | {m for n in names for m in CANDIDATES[n].needs}
    context = Context({m: load_segmenter(m) for m in sorted(needed)}, phase_order=selector.phase_order)
    halo = halo_of("auto", context, names)
    base = [names.index(n) for n in selector.candidates]
    results = {"candidates": names, "shape": SHAPE, "tile": TILE, "profiles": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    for profile, seeds in VOLUMES.items():
        tables = []
        for seed in seeds:
            path = args.work / f"{profile}-{seed}.zarr"
            if not path.exists():
                write_sample(path, SHAPE, seed, SampleConfig(profile=profile))
            tables.append(tile_table(str(path), None, context, names, TILE, halo))
        data = _Volumes(tables, selector, selector.gflops(1))
        fixed = {n: data.alone(n) for n in names if n != "cheap"}
        results["profiles"][profile] = {
            "all_expensive_gflops": fixed["expensive"]["gflops"],
            "fixed": fixed,
            "without": frontier(data, base),
            "with": frontier(data, list(range(len(names)))),
        }
        e = fixed["expensive"]
        print(f"{profile} {seeds}: all-expensive {e['miou']:.4f} at {e['gflops']:,.0f} GFLOPs")
        for n, p in fixed.items():
            print(f"  all-{n:<14} {p['miou']:.4f} at {100 * p['gflops'] / e['gflops']:6.1f} %")
        print(f"  {'lambda':>7} {'oracle without':>22} {'oracle with':>22}  tiles on the flip-averaged")
        for a, b in zip(results["profiles"][profile]["without"], results["profiles"][profile]["with"]):
            tta = sum(b["mix"][n] for n in args.candidates)
            print(
                f"  {a['lambda']:7g} {a['miou']:.4f} at {100 * a['gflops'] / e['gflops']:5.1f} %"
                f"    {b['miou']:.4f} at {100 * b['gflops'] / e['gflops']:5.1f} %  {tta}"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
