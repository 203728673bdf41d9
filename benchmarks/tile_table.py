"""The selector's tile table of a volume, saved, to compare two versions of the code bit for bit.

    python benchmarks/tile_table.py VOLUME OUT.npz             # with each version
    python benchmarks/tile_table.py --compare OLD.npz NEW.npz  # exit 0 when every array is equal

Two tables of VOLUME with the bundled weights and every default candidate: tiles of
4 x 128 x 128, and 16 x 96 x 96 with only slices 0, 3 and 7 labelled.
"""

from __future__ import annotations

import sys

import numpy as np

from matseg.candidates.registry import CANDIDATES, Context
from matseg.models.store import load_segmenter
from matseg.pipeline.job import halo_of
from matseg.selector.table import tile_table

NAMES = ("cheap", "medium", "expensive", "expensive-2x", "classical")
KEYS = ("features", "confusion", "gflops", "recompute", "labelled", "thresholds")


def tables(volume: str) -> dict:
    needed = {"cheap"} | {m for n in NAMES for m in CANDIDATES[n].needs}
    context = Context({m: load_segmenter(m) for m in sorted(needed)})
    halo = halo_of("auto", context, NAMES)
    out = {}
    for tag, options in {
        "a": {"tile": (4, 128, 128)},
        "b": {"tile": (16, 96, 96), "slices": [0, 3, 7]},
    }.items():
        table = tile_table(volume, None, context, NAMES, halo=halo, **options)
        out |= {f"{tag}_{key}": np.asarray(table[key]) for key in KEYS}
    return out


def main() -> int:
    if sys.argv[1] == "--compare":
        old, new = np.load(sys.argv[2]), np.load(sys.argv[3])
        differ = [k for k in old.files if old[k].dtype != new[k].dtype or not np.array_equal(old[k], new[k])]
        print(
            f"{len(old.files) - len(differ)}/{len(old.files)} arrays identical"
            + (f"; differ: {differ}" * bool(differ))
        )
        return 1 if differ or old.files != new.files else 0
    np.savez(sys.argv[2], **tables(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
