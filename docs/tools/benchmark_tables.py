"""Markdown tables for docs/benchmarks.md from docs/benchmarks.json.

python docs/tools/benchmark_tables.py [docs/benchmarks.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def tables(result: dict) -> str:
    exp = result["all_expensive"]
    lines = [
        "| method | λ | mIoU | Δ vs all-expensive | GFLOPs | % of all-expensive "
        "| IoU/GFLOP × all-expensive | mix |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def row(name, lam, p):
        mix = ", ".join(f"{k} {v}" for k, v in p.get("mix", {}).items() if v)
        lines.append(
            f"| {name} | {lam} | {p['miou']:.4f} | {p['miou'] - exp['miou']:+.4f} | {p['gflops']:,.0f} "
            f"| {100 * p['gflops_fraction']:.1f} | {p['gain_over_all_expensive']:.2f} | {mix} |"
        )

    row("all-cheap", "", result["all_cheap"])
    row("all-expensive", "", exp)
    for r in result["sweep"]:
        row(
            "**selector**" if r["lambda"] == result["default_lambda"] else "selector",
            f"{r['lambda']:g}",
            r["selector"],
        )
    lines += [
        "",
        "| λ | selector | cascade | random | oracle | selector / oracle IoU/GFLOP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["sweep"]:
        s, c, rnd, o = (r[m] for m in ("selector", "cascade", "random", "oracle"))
        lines.append(
            f"| {r['lambda']:g} | {s['miou']:.4f} @ {s['gflops']:,.0f} "
            f"| {c['miou']:.4f} @ {c['gflops']:,.0f} "
            f"| {rnd['miou']:.4f} @ {rnd['gflops']:,.0f} | {o['miou']:.4f} @ {o['gflops']:,.0f} "
            f"| {s['iou_per_gflop'] / o['iou_per_gflop']:.2f} |"
        )
    real, monai = result.get("real", {}), result.get("monai")
    if real:
        lines += [
            "",
            "| real run | mIoU | GFLOPs | wall time (s) | seam score |",
            "|---|---:|---:|---:|---:|",
        ]
        for model, r in real.items():
            seams = ", ".join("n/a" if s is None else f"{s:.2f}" for s in r["seam"])
            lines.append(
                f"| matseg --model {model} | {r['miou']:.4f} | {r['gflops']:,.0f} "
                f"| {r['seconds']:.1f} | {seams} |"
            )
        if monai:
            lines.append(
                f"| MONAI sliding window, expensive net | {monai['miou']:.4f} | | {monai['seconds']:.1f} | |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.json")
    print(tables(json.loads(path.read_text())))
