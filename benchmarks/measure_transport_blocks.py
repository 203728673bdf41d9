"""The diffusion solve on sub-volumes (`--transport-block`) against the whole-volume solve.

    python benchmarks/measure_transport_blocks.py [--out docs/measure-transport-blocks.json]

Two cases: straight channels crossing block sides and interfaces (the block
combination is exact: both must agree), and the random pore space of the
validation table (40 x 48 x 48, 45 % pores), cut along the axis only, across it
only, and both ways: the relative difference of D_eff / D_bulk and tau.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from matseg.microstructure.tortuosity import block_tortuosity, tortuosity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/measure-transport-blocks.json"))
    args = parser.parse_args()
    channels = np.zeros((30, 24, 24), bool)
    channels[:, 2:5, 3:6] = channels[:, 12:14, 15:20] = channels[:, 20, 1:23] = True
    field = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(40, 48, 48)), 2.5)
    pores = field > np.quantile(field, 0.55)
    cases = [("straight channels 30 x 24 x 24", channels, [0], [(10, 12, 12)])]
    halves = {0: [(20, 48, 48), (40, 24, 24), (20, 24, 24)]}
    halves[1] = [(40, 24, 48), (20, 48, 24), (20, 24, 24)]
    halves[2] = [(40, 48, 24), (20, 24, 48), (20, 24, 24)]
    cases += [("random pores 40 x 48 x 48", pores, [a], halves[a]) for a in range(3)]
    rows = []
    for name, mask, axes, blocks in cases:
        for axis in axes:
            whole = tortuosity(mask, axis)
            for block in blocks:
                parts = block_tortuosity(lambda r, m=mask: m[r], mask.shape, axis, block)
                rows.append(
                    {
                        "case": name,
                        "axis": "zyx"[axis],
                        "block": list(block),
                        "blocks": parts["blocks"],
                        "whole_d": whole["relative_diffusivity"],
                        "blocks_d": parts["relative_diffusivity"],
                        "whole_tau": whole["tau"],
                        "blocks_tau": parts["tau"],
                        "d_difference": parts["relative_diffusivity"] / whole["relative_diffusivity"] - 1,
                    }
                )
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print("| case | axis | block | blocks | D whole | D blocks | difference | tau whole | tau blocks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['axis']} | {' x '.join(map(str, r['block']))} | {r['blocks']} | "
            f"{r['whole_d']:.4f} | {r['blocks_d']:.4f} | {100 * r['d_difference']:+.1f} % | "
            f"{r['whole_tau']:.3f} | {r['blocks_tau']:.3f} |"
        )


if __name__ == "__main__":
    main()
