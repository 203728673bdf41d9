"""The run-time audit: the reference candidate on a stratified random sample of the cells
the selector did not send to it.

Cells are one slice deep and ``AUDIT_CELL`` voxels wide in-plane, cut from each tile's
core (they never cross a tile). Strata are the tile's candidate crossed with a tercile of
its cheap-pass uncertainty; cells are drawn uniformly without replacement within each
stratum, more of them where the cheap net was less sure (where the choices differ most).

The audit runs after the selector's plan and before the costlier candidates, so that what
it finds can still change the plan (:mod:`matseg.pipeline.escalate`). On the drawn cells of
a tile, in one batch each, with ``AUDIT_HALO`` voxels of context, it runs the reference,
the candidate the plan gave the tile and every candidate cheaper than the reference
(:func:`measured_candidates`); each cell records each answer's expected confusion matrix
(the evidence of :func:`matseg.pipeline.confidence.estimate_change`) and the reference's
labels are kept (``audit/labels``). Once the candidates have run, those labels
replace the run's on the cells (:func:`matseg.pipeline.audit_tasks.write_audited`): nothing
computed is thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import zarr

from matseg.candidates.registry import CANDIDATES, Context
from matseg.io.progress import TileRecords
from matseg.pipeline.job import Job
from matseg.tiling import TileGrid

AUDIT_CELL = 64  # in-plane side of an audited cell, one slice deep
AUDIT_HALO = 16  # in-plane context the candidates get around a cell (docs/benchmarks.md, "The audit")
MIN_PER_STRATUM = 2  # cells drawn at least from each stratum (a variance needs two)
# Temperatures at which the reference's probabilities stand in for the truth
# (:mod:`matseg.pipeline.confidence` picks among them).
TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class AuditPlan:
    """Which cells are audited: ``cells`` rows (tile position, z, y0, x0, height, width),
    grouped by tile; ``stratum`` of each; ``population`` and ``sampled`` cells and the
    planned candidate (``stratum_choice``) per stratum; ``tile_stratum``, each tile's stratum
    (-1: a tile the selector sent to the reference); ``measured``, the candidates run on
    every cell besides the tile's own (the reference and those cheaper than it)."""

    cells: np.ndarray
    stratum: np.ndarray
    population: np.ndarray
    sampled: np.ndarray
    reference: int  # the reference's index among the run's candidates
    tile_stratum: np.ndarray
    stratum_choice: np.ndarray
    measured: np.ndarray

    def allowed(self, h: int) -> list[int]:
        """The candidates stratum ``h`` has evidence for (what its tiles may be moved to)."""
        return sorted({int(self.stratum_choice[h]), *map(int, self.measured)})

    @property
    def tiles(self) -> np.ndarray:
        """Tile positions with audited cells, in order."""
        return np.unique(self.cells[:, 0])

    @property
    def slots(self) -> int:
        """The most cells audited in one tile."""
        return int(np.bincount(self.cells[:, 0]).max()) if len(self.cells) else 0


def cells_of(grid: TileGrid, index) -> tuple[int, int, int]:
    """Slices and cells along Y and X of tile ``index``."""
    region = grid.region(index)
    nz = region[0].stop - region[0].start if len(region) == 3 else 1
    ny = math.ceil((region[-2].stop - region[-2].start) / AUDIT_CELL)
    nx = math.ceil((region[-1].stop - region[-1].start) / AUDIT_CELL)
    return nz, ny, nx


def plan_audit(
    job: Job, choice: np.ndarray, uncertainty: np.ndarray, fraction: float, seed: int
) -> AuditPlan:
    """Draw the cells to audit.

    Parameters
    ----------
    job : Job
    choice : ndarray (tiles,)
        The selector's candidate per tile.
    uncertainty : ndarray (tiles,)
        Each tile's mean cheap-pass uncertainty (the strata's second key).
    fraction : float
        Cells to audit, as a fraction of those not sent to the reference (rounded up).
    seed : int
        The draw's seed: the same plan, seed and volume give the same cells.
    """
    reference = job.names.index(job.settings.reference)
    indices = job.indices
    n_cells = np.array([math.prod(cells_of(job.grid, idx)) for idx in indices])
    eligible = np.flatnonzero(choice != reference)
    tile_stratum = np.full(len(choice), -1, np.int64)
    measured = measured_candidates(job.names, reference, job.context)
    if fraction <= 0 or len(eligible) == 0:
        none = np.zeros(0, np.int64)
        return AuditPlan(
            np.zeros((0, 6), np.int64), none, none, none, reference, tile_stratum, none, measured
        )
    edges = np.quantile(uncertainty[eligible], [1 / 3, 2 / 3])
    tercile = np.searchsorted(edges, uncertainty, side="right")
    keys = sorted({(int(choice[t]), int(tercile[t])) for t in eligible})
    members = [eligible[(choice[eligible] == k) & (tercile[eligible] == q)] for k, q in keys]
    population = np.array([n_cells[m].sum() for m in members], np.int64)
    weight = population * np.array([uncertainty[m].mean() + 1e-3 for m in members])
    total = math.ceil(fraction * population.sum())
    sampled = np.maximum(np.round(total * weight / weight.sum()), MIN_PER_STRATUM)
    sampled = np.minimum(sampled, population).astype(np.int64)
    rng = np.random.default_rng([seed, 20261206])
    rows, strata = [], []
    for h, tiles in enumerate(members):
        tile_stratum[tiles] = h
        drawn = np.sort(rng.choice(population[h], size=sampled[h], replace=False))
        ends = np.cumsum(n_cells[tiles])
        which = np.searchsorted(ends, drawn, side="right")
        for t, local in zip(tiles[which], drawn - (ends[which] - n_cells[tiles[which]])):
            rows.append(_cell(job.grid, t, indices[t], int(local)))
            strata.append(h)
    cells = np.array(rows, np.int64)
    order = np.lexsort((cells[:, 3], cells[:, 2], cells[:, 1], cells[:, 0]))  # by tile, then place
    cells = cells[order]
    return AuditPlan(
        cells, np.array(strata, np.int64)[order], population, sampled, reference, tile_stratum,
        np.array([k for k, _ in keys], np.int64), measured,
    )  # fmt: skip


def measured_candidates(names, reference: int, context: Context) -> np.ndarray:
    """The reference and the candidates cheaper than it: the audit runs them on every cell,
    so the tolerance can move a stratum to any of them (:mod:`matseg.pipeline.escalate`)."""
    box = (1, AUDIT_CELL + 2 * AUDIT_HALO, AUDIT_CELL + 2 * AUDIT_HALO)
    cost = [CANDIDATES[n].gflops(context, box) for n in names]
    return np.array([k for k in range(len(names)) if cost[k] <= cost[reference]], np.int64)


def _cell(grid: TileGrid, t: int, index, local: int) -> tuple[int, ...]:
    region = grid.region(index)
    nz, ny, nx = cells_of(grid, index)
    z, rest = divmod(local, ny * nx)
    iy, ix = divmod(rest, nx)
    z0 = region[0].start + z if len(region) == 3 else -1
    y0 = region[-2].start + iy * AUDIT_CELL
    x0 = region[-1].start + ix * AUDIT_CELL
    h = min(AUDIT_CELL, region[-2].stop - y0)
    w = min(AUDIT_CELL, region[-1].stop - x0)
    return (t, z0, y0, x0, h, w)


def stats_width(n_phases: int, n_candidates: int) -> int:
    """Numbers kept per audited cell: GFLOPs, and the expected confusion matrix of each
    candidate's labels at each temperature (zeros for candidates not run on the cell;
    :func:`matseg.pipeline.audit_tasks.cell_confusions`)."""
    return 1 + len(TEMPERATURES) * n_candidates * n_phases * n_phases


_PLAN_ARRAYS = ("cells", "stratum", "population", "sampled", "tile_stratum", "stratum_choice", "measured")


def create_audit(
    root: zarr.Group, audit: AuditPlan, n_phases: int, n_candidates: int, identity: dict
) -> None:
    """The audit's arrays (the drawn cells, the reference's labels there) and its records, one
    row a tile: what it measured (``audit``) and whether its labels were written
    (``audit-written``). What an earlier run (a dry run) measured for the same plan under the
    same settings (``identity``) is kept: the audit reads only the image, so it stands."""
    n = max(len(audit.tiles), 1)
    if _same_audit(root, audit, identity):
        TileRecords.create(root, "audit-written", n, {"done": 1, "change": n_phases})
        return
    group = root.require_group("audit")
    group.attrs["matseg"] = {}  # not a whole audit until the end
    group.create_array("cells", data=audit.cells, overwrite=True, dimension_names=["cell", "field"])
    group.create_array("stratum", data=audit.stratum, overwrite=True, dimension_names=["cell"])
    group.create_array("population", data=audit.population, overwrite=True, dimension_names=["stratum"])
    group.create_array("sampled", data=audit.sampled, overwrite=True, dimension_names=["stratum"])
    group.create_array("tile_stratum", data=audit.tile_stratum, overwrite=True, dimension_names=["tile"])
    group.create_array(
        "stratum_choice", data=audit.stratum_choice, overwrite=True, dimension_names=["stratum"]
    )
    group.create_array("measured", data=audit.measured, overwrite=True, dimension_names=["candidate"])
    slots = max(audit.slots, 1)
    group.create_array(
        "labels",
        shape=(max(len(audit.tiles), 1), slots, AUDIT_CELL, AUDIT_CELL),
        chunks=(1, slots, AUDIT_CELL, AUDIT_CELL),
        dtype="uint8",
        overwrite=True,
        dimension_names=["tile", "cell", "y", "x"],
    )
    TileRecords.create(root, "audit-written", n, {"done": 1, "change": n_phases})
    TileRecords.create(root, "audit", n, {"done": 1, "cells": slots * stats_width(n_phases, n_candidates)})
    # written last: an audit killed while being created is never taken for a whole one
    group.attrs["matseg"] = {
        "reference": int(audit.reference),
        "temperatures": list(TEMPERATURES),
        "identity": identity,
    }


def _same_audit(root: zarr.Group, audit: AuditPlan, identity: dict) -> bool:
    """Whether the output holds this audit plan, made under the same settings."""
    if "audit" not in root or TileRecords.open(root, "audit") is None:
        return False
    group = root["audit"]
    meta = group.attrs.get("matseg", {})
    if meta.get("identity") != identity or meta.get("reference") != audit.reference:
        return False
    stored = load_audit(root)
    return all(np.array_equal(getattr(stored, name), getattr(audit, name)) for name in _PLAN_ARRAYS)


def load_audit(root: zarr.Group) -> AuditPlan:
    """The audit plan stored in a run's output."""
    group = root["audit"]
    return AuditPlan(
        group["cells"][:],
        group["stratum"][:],
        group["population"][:],
        group["sampled"][:],
        int(group.attrs["matseg"]["reference"]),
        group["tile_stratum"][:],
        group["stratum_choice"][:],
        group["measured"][:],
    )


def audit_evidence(audit: AuditPlan, records: TileRecords, n_phases: int, n_candidates: int) -> np.ndarray:
    """Each audited cell's numbers (rows of :func:`stats_width`), in the order of ``audit.cells``."""
    width = stats_width(n_phases, n_candidates)
    rows = records.read()["cells"]
    stats = np.zeros((len(audit.cells), width))
    for a, t in enumerate(audit.tiles):
        mine = np.flatnonzero(audit.cells[:, 0] == t)
        stats[mine] = rows[a].reshape(-1, width)[: len(mine)]
    return stats
