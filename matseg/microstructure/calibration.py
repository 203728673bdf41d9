"""Intervals widened by a margin fitted on volumes with truth (split-conformal calibration).

The draws (``uncertainty``) move the uncertain boundary voxels; they do not see
the segmenters' systematic errors (a phase read slightly too thick everywhere,
a missed particle), which on generated volumes are larger than the draws'
spread. The margin adds what the draws miss, fitted where the truth is known:
on ``train``-profile volumes (other seeds than the bundled weights' training
and validation volumes), for each metric family the score of each (volume,
phases, axis) is the error left outside the draws' interval,

    score = max(0, |value - truth| - 2 RMS) / scale,

with ``scale`` 1 for fractions (already relative), the size distributions'
step (``2`` smallest voxel sides: local-thickness diameters come in those
steps, so an error of one step on a thin phase is not a 100 % error) for the
thickness quantiles, and ``|value|`` for the others (areas, TPB, transport),

and the margin is the ``ceil((n + 1) level) / n`` empirical quantile of the n
scores (split-conformal prediction, Vovk et al. 2005; Lei et al. 2018): on a
volume exchangeable with the calibration ones, ``value +- (2 RMS + margin *
scale)`` holds the truth with probability at least ``level``. Volumes imaged
unlike the calibration ones (the ``test`` and ``wide`` profiles, real data)
are not exchangeable with them: their coverage is measured, not guaranteed
(docs/measure.md). The table belongs to the bundled weights and the default
selector; other weights need their own (``benchmarks/measure_coverage.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
LEVEL = 0.95


def scale_kind(metric: str) -> str:
    """How a margin scales: ``absolute`` (fractions), ``steps`` (thickness quantiles), ``relative``."""
    if metric.endswith("fraction"):
        return "absolute"
    if metric.startswith("thickness_d"):
        return "steps"
    return "relative"


def scale(kind: str, value: float, step: float) -> float:
    """The unit of a margin of ``kind`` for ``value``; ``step`` is the thickness quantiles' step."""
    return {"absolute": 1.0, "steps": step, "relative": abs(value)}[kind]


def spread(value: float, draws: list[float], width: float = 2.0) -> float | None:
    """``width`` times the draws' root-mean-square deviation from ``value`` (None without draws)."""
    values = np.asarray([d for d in draws if d is not None], dtype=float)
    values = values[np.isfinite(values)]
    if not values.size or not math.isfinite(value):
        return None
    return width * float(np.sqrt(np.mean((values - value) ** 2)))


def fit(triples: dict[str, list[tuple[float, float, list[float], float]]], level: float = LEVEL) -> dict:
    """Per-metric margins from ``{metric: [(truth, value, draws, step), ...]}`` on calibration volumes.

    Parameters
    ----------
    triples : dict
        For each metric family, the truth, the segmentation's value, its draws and
        the thickness step (2 smallest voxel sides) of its volume.
    level : float
        Target coverage on exchangeable volumes.

    Returns
    -------
    dict
        ``level``, ``score`` (its definition) and ``margins``: per metric, ``margin``
        (in units of its ``scale``: see :func:`scale_kind`) and ``n``.
    """
    margins = {}
    for metric, rows in sorted(triples.items()):
        kind, scores = scale_kind(metric), []
        for truth, value, draws, step in rows:
            half, unit = spread(value, draws), scale(kind, value, step)
            if half is None or not math.isfinite(truth) or unit == 0:
                continue
            scores.append(max(0.0, abs(value - truth) - half) / unit)
        if not scores:
            continue
        scores = np.sort(scores)
        # the conformal rank; with fewer than 1/(1 - level) scores it is past the end: take the largest
        rank = min(math.ceil((len(scores) + 1) * level), len(scores)) - 1
        margins[metric] = {"margin": float(scores[rank]), "scale": kind, "n": len(scores)}
    return {
        "level": level,
        "score": "max(0, |value - truth| - 2 RMS(draws - value)) / scale; scale: 1 for fractions, "
        "2 smallest voxel sides for thickness quantiles, |value| otherwise",
        "margins": margins,
    }


def load() -> dict | None:
    """The package's calibration table, or None where it is missing."""
    return json.loads(CALIBRATION_FILE.read_text()) if CALIBRATION_FILE.exists() else None


def calibrated_interval(
    metric: str, value: float, draws: list[float], table: dict | None, step: float = 2.0
) -> tuple[float | None, float | None]:
    """``value +- (2 RMS + margin * scale)``, clipped to what the metric can be: at least 0 (a
    tortuosity factor at least 1), a fraction at most 1; no margin: the draws alone."""
    half = spread(value, draws)
    if half is None:
        return None, None
    entry = (table or {}).get("margins", {}).get(metric)
    if entry is not None:
        half += entry["margin"] * scale(entry["scale"], value, step)
    high = value + half
    if metric.endswith("fraction"):
        high = min(high, 1.0)
    floor = 1.0 if metric == "tortuosity_factor" and value >= 1.0 else 0.0  # ε D0 / D_eff >= 1
    return max(floor, value - half), high
