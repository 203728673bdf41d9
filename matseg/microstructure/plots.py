"""Figures of a measure report: size distributions and representative-volume curves.

Drawn on ``matplotlib.figure.Figure`` objects (no pyplot, no global backend), so
a library call never changes the caller's matplotlib state.
"""

from __future__ import annotations

import numpy as np


def plot_sizes(report: dict):
    """Volume-weighted local-thickness distribution of each phase (cumulative)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    diameters = np.asarray(report["sizes"]["diameters"])
    for name, counts in zip(report["input"]["phases"], report["sizes"]["counts"]):
        counts = np.asarray(counts, dtype=float)
        if counts.sum() == 0:
            continue
        axes.step(diameters, np.cumsum(counts) / counts.sum(), where="post", label=name)
    axes.axvline(diameters[-1], color="grey", linestyle="--", label="cap (2 x max radius)")
    axes.set_xlabel(f"local thickness (diameter, {report['input']['unit']})")
    axes.set_ylabel("cumulative volume fraction of the phase")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def plot_rev(report: dict):
    """Each local metric on growing centred sub-volumes, relative to its value on the whole volume."""
    from matplotlib.figure import Figure

    rev = report["rev"]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    full = rev["tables"][-1]
    edge = rev["edge_fraction"]
    for key, value in full.items():
        if not value:
            continue
        metric, phases = key.split("/")[:2]
        axes.plot(edge, [t[key] / value for t in rev["tables"]], marker="o", label=f"{metric} {phases}")
    axes.axhspan(0.95, 1.05, color="grey", alpha=0.15, label="within 5 %")
    axes.set_xlabel("sub-volume side / volume side")
    axes.set_ylabel("metric / whole-volume value")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, ncol=2)
    return figure
