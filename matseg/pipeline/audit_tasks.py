"""What the audit runs (:mod:`matseg.pipeline.audit` draws its cells and keeps its records):
the candidates on the drawn cells of a tile, before the costlier candidates run
(:func:`run_audit`), and the reference's labels written into the cells after them
(:func:`write_audited`)."""

from __future__ import annotations

import dask
import numpy as np

from matseg.candidates.registry import CANDIDATES, Candidate, Context
from matseg.candidates.tile import tile_input
from matseg.cluster import COSTLY
from matseg.io.progress import TileRecords
from matseg.io.write import for_tile_writes
from matseg.models.labels import phase_counts
from matseg.pipeline.audit import AUDIT_HALO, TEMPERATURES, AuditPlan, stats_width
from matseg.pipeline.job import Job
from matseg.pipeline.stages import compute_tiles
from matseg.pipeline.tasks import key
from matseg.tiling import TileGrid, shared_nodes, tile_blocks


def audit_task(
    block, a, index, grid, norm, context: Context, candidates: dict, reference: int, n_candidates: int, cells,
    labels, records,
) -> None:  # fmt: skip
    """The ``candidates`` ({index: Candidate}: the reference, the tile's own, the measured
    ones) on the audited ``cells`` of one tile (row ``a`` of the audit's records): what each
    cell records (:func:`stats_width`), and the reference's labels, kept for :func:`write_task`."""
    tile = tile_input(block, index, grid, norm)
    runs = {k: _cell_probs(tile, cells, c, context) for k, c in candidates.items()}
    n_phases = runs[reference][0][0].shape[0]
    row = np.zeros((labels.shape[1], stats_width(n_phases, n_candidates)))
    kept = np.zeros(labels.shape[1:], np.uint8)
    for i, cell in enumerate(cells):
        probs = runs[reference][0][i]
        answers = {k: np.argmax(p[i], axis=0).astype(np.uint8) for k, (p, _) in runs.items()}
        gflops = sum(g[i] for _, g in runs.values())
        row[i] = np.concatenate([[gflops], cell_confusions(probs, answers, n_candidates)])
        kept[i, : cell[4], : cell[5]] = answers[reference]
    records.write(a, [(labels, (a,), kept)], done=1, cells=row)


def write_task(a, index, grid, cells, labels, arrays, records, reference: int, n_phases: int) -> None:
    """The reference's labels into the audited cells of one tile (after its candidates ran).
    The tile's chunks are read once and written whole: cells written one by one into a shared
    chunk would race (each partial write reads, changes and writes the chunk)."""
    phases, decisions = arrays["phases"], arrays["decisions"]
    kept = labels[a]
    region = grid.region(index)
    labels_out, decisions_out = phases[region], decisions[region]
    change = np.zeros(n_phases)
    for i, cell in enumerate(cells):
        where = _local(cell, region)
        answer = kept[i, : cell[4], : cell[5]]
        change += phase_counts(answer, n_phases) - phase_counts(labels_out[where], n_phases)
        labels_out[where] = answer
        decisions_out[where] = reference
    outputs = [(phases, region, labels_out), (decisions, region, decisions_out)]
    records.write(a, outputs, done=1, change=change)


def _local(cell, region) -> tuple:
    """A cell's place inside its tile's ``region``."""
    where = _where(cell)
    return tuple(
        w - r.start if isinstance(w, int | np.integer) else slice(w.start - r.start, w.stop - r.start)
        for w, r in zip(where, region)
    )


def _where(cell) -> tuple:
    _, z, y0, x0, h, w = (int(v) for v in cell)
    inplane = (slice(y0, y0 + h), slice(x0, x0 + w))
    return inplane if z < 0 else (z, *inplane)


def _crop(cell, y_bounds: tuple[int, int], x_bounds: tuple[int, int]) -> tuple[int, int, int, int]:
    """The in-plane box a cell is segmented in: the cell and ``AUDIT_HALO`` around it, within bounds."""
    _, _, y0, x0, h, w = (int(v) for v in cell)
    return (
        max(y0 - AUDIT_HALO, y_bounds[0]),
        min(y0 + h + AUDIT_HALO, y_bounds[1]),
        max(x0 - AUDIT_HALO, x_bounds[0]),
        min(x0 + w + AUDIT_HALO, x_bounds[1]),
    )


def audit_gflops(audit: AuditPlan, grid: TileGrid, names, choice: np.ndarray, context: Context) -> float:
    """What the audit costs (known before it runs): on every drawn cell's box, the tile's
    planned candidate (``names[choice[tile]]``) and the measured ones."""
    y_bounds, x_bounds = (0, grid.shape[-2]), (0, grid.shape[-1])
    total = 0.0
    for cell in audit.cells:
        ya, yb, xa, xb = _crop(cell, y_bounds, x_bounds)
        for k in {int(choice[cell[0]]), *audit.measured.tolist()}:
            total += CANDIDATES[names[k]].gflops(context, (1, yb - ya, xb - xa))
    return float(total)


def _cell_probs(tile, cells, candidate: Candidate, context: Context) -> tuple[list, list]:
    """A candidate's probabilities on each cell's core, from its box (:func:`_crop`; the
    tile's halo covers it); boxes of one shape go through the model together."""
    covers = tile.covers
    y_bounds, x_bounds = (covers[-2].start, covers[-2].stop), (covers[-1].start, covers[-1].stop)
    crops, cores = [], []
    for cell in cells:
        _, z, y0, x0, h, w = (int(v) for v in cell)
        ya, yb, xa, xb = _crop(cell, y_bounds, x_bounds)
        zi = z - covers[0].start if z >= 0 else 0
        oy, ox = covers[-2].start, covers[-1].start
        crops.append(tile.image[zi, ya - oy : yb - oy, xa - ox : xb - ox])
        cores.append((slice(y0 - ya, y0 - ya + h), slice(x0 - xa, x0 - xa + w)))
    probs, gflops = [None] * len(cells), [0.0] * len(cells)
    by_shape: dict[tuple, list[int]] = {}
    for i, crop in enumerate(crops):
        by_shape.setdefault(crop.shape, []).append(i)
    for shape, which in by_shape.items():
        out = candidate.run(context, np.stack([crops[i] for i in which]))
        each = candidate.gflops(context, (1, *shape))
        for j, i in enumerate(which):
            probs[i] = out[j][(slice(None), *cores[i])]
            gflops[i] = each
    return probs, gflops


def cell_confusions(probs: np.ndarray, answers: dict, n_candidates: int) -> np.ndarray:
    """Expected confusion matrices (label, true phase) of each candidate's labels on a cell
    (``answers``: {candidate index: labels}; zeros for the others), the truth drawn from the
    reference's probabilities sharpened or softened by each of :data:`TEMPERATURES`."""
    n = probs.shape[0]
    logp = np.log(np.clip(probs.reshape(n, -1), 1e-7, 1.0))
    out = np.zeros((len(TEMPERATURES), n_candidates, n, n))
    for t, temperature in enumerate(TEMPERATURES):
        q = np.exp((logp - logp.max(axis=0)) / temperature)
        q /= q.sum(axis=0)
        for c, labels in answers.items():
            flat = labels.ravel()
            for k in range(n):
                out[t, c, k] = q[:, flat == k].sum(axis=1)
    return out.ravel()


def run_audit(
    job: Job, audit: AuditPlan, choice, root, norm, runner, writes, monitor
) -> tuple[TileRecords, list]:
    """The audit's measuring tasks for the tiles not yet audited: its records once every tile
    is, and the tiles (position, index) audited now. ``choice``: each tile's planned candidate."""
    records = TileRecords.open(root, "audit", writes)
    indices, names = job.indices, job.names
    done = records.done()
    tiles = audit.tiles
    todo = [(a, indices[t]) for a, t in enumerate(tiles) if not done[a]]
    grid = job.grid.with_halo(AUDIT_HALO)
    labels = for_tile_writes(root["audit/labels"])
    shared = shared_nodes(grid, norm, job.context, labels, records)

    def run_on(t) -> dict:
        """The candidates the audit runs on tile ``t``'s cells."""
        return {int(k): CANDIDATES[names[k]] for k in sorted({int(choice[t]), *audit.measured.tolist()})}

    def tasks(group, layers):
        blocks = tile_blocks(job.volume.data, grid, layers)
        with runner.annotate(COSTLY):  # the reference is a costly candidate: the costly pool
            return [
                dask.delayed(audit_task)(
                    blocks[idx],
                    a,
                    idx,
                    *shared[:3],
                    run_on(tiles[a]),
                    audit.reference,
                    len(names),
                    audit.cells[audit.cells[:, 0] == tiles[a]],
                    *shared[3:],
                    dask_key_name=key("audit", idx),
                )  # fmt: skip
                for a, idx in group
            ]

    compute_tiles(runner, todo, tasks, monitor.stage("audit", len(todo)), records)
    return records, todo


def write_audited(
    job: Job, audit: AuditPlan, skip, root, arrays, runner, writes, monitor
) -> tuple[TileRecords, list]:
    """The reference's labels into the audited cells, but in tiles of the strata in ``skip``
    (sent to the reference whole): the records of these writes, and the tiles (position,
    index) written now."""
    records = TileRecords.open(root, "audit-written", writes)
    indices = job.indices
    done = records.done()
    tiles = audit.tiles
    todo = [(a, indices[t]) for a, t in enumerate(tiles) if not done[a] and audit.tile_stratum[t] not in skip]
    labels = for_tile_writes(root["audit/labels"])
    shared = shared_nodes(job.grid, labels, arrays, records)

    def tasks(group, layers):
        return [
            dask.delayed(write_task)(
                a,
                idx,
                shared[0],
                audit.cells[audit.cells[:, 0] == tiles[a]],
                *shared[1:],
                audit.reference,
                len(job.phases),
                dask_key_name=key("audit-write", idx),
            )
            for a, idx in group
        ]

    compute_tiles(runner, todo, tasks, monitor.stage("audited cells", len(todo)), records)
    return records, todo
