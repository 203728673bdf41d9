"""The stages of a run over tiles, each computing only the tiles not yet recorded:
one model on every tile; or the cheap pass, then (after the selector's plan) the costlier
candidates with blending. Each makes its tasks group by group of whole layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import dask
import numpy as np

from matseg.candidates.registry import CANDIDATES
from matseg.cluster import CHEAP, COSTLY, Backend, SharedResults
from matseg.errors import MatsegError
from matseg.io.progress import TileRecords
from matseg.monitor import Stage
from matseg.pipeline.blend import blend_sides
from matseg.pipeline.job import Job
from matseg.pipeline.tasks import (
    candidate_task,
    cheap_task,
    finish_task,
    key,
    shared_candidate_task,
    single_task,
    tile_tasks,
)
from matseg.selector.plan import candidate_grid
from matseg.stitch import BAND, neighbour_indices
from matseg.tiling import shared_nodes, tile_blocks


def compute_tiles(
    runner: Backend, todo, tasks: Callable[[list, range | None], list], stage: Stage, records: TileRecords
) -> None:
    """The tasks ``tasks(group, layers)`` makes for the tiles of ``todo`` (position, index),
    computed by :meth:`matseg.cluster.Backend.compute_tiles`; when it returns, every tile the
    tasks wrote to ``records`` is written."""
    try:
        runner.compute_tiles(todo, tasks, stage.advance)
    except BaseException:
        with contextlib.suppress(Exception):  # the tiles already done stay recorded; the error stands
            records.flush()
        raise
    records.flush()
    stage.finish()


def run_single(
    job: Job, todo, norm, ctx, arrays, records: TileRecords, runner: Backend, stage: Stage
) -> dict:
    """One model on every tile of ``todo``; the stats of the whole run from its records."""
    grid = job.grid
    cost = CHEAP if job.model in ("cheap", "classical") else COSTLY

    def tasks(group, layers):
        blocks = tile_blocks(job.volume.data, grid, layers)
        with runner.annotate(cost):
            return tile_tasks(
                single_task, "tile", blocks, group, grid, norm, ctx, CANDIDATES[job.model], arrays, records
            )

    compute_tiles(runner, todo, tasks, stage, records)
    rows = records.read()
    return {
        "counts": rows["counts"].sum(axis=0),
        "gflops": float(rows["gflops"].sum()),
        "seconds": {job.model: float(rows["seconds"].sum())},
    }


def run_cheap(job: Job, todo, norm, ctx, arrays, records: TileRecords, runner: Backend, stage: Stage) -> None:
    """The cheap pass on the tiles of ``todo``."""
    if todo:
        # the cheap pass needs only its own receptive radius: its own, smaller halo
        cheap_grid = job.grid.with_halo(job.models["cheap"].halo)

        def tasks(group, layers):
            blocks = tile_blocks(job.volume.data, cheap_grid, layers)
            with runner.annotate(CHEAP):
                return tile_tasks(cheap_task, "cheap", blocks, group, cheap_grid, norm, ctx, arrays, records)

        compute_tiles(runner, todo, tasks, stage, records)
    stage.finish()


def cheap_results(root, records: TileRecords) -> dict:
    """The cheap pass of every tile from its records, also kept as ``selector/`` arrays."""
    rows = records.read()
    cheap = {
        "features": rows["features"].astype(np.float32),
        "counts": rows["counts"].astype(np.int64),
        "gflops": rows["gflops"][:, 0],
        "seconds": rows["seconds"][:, 0],
    }
    group = root.require_group("selector")
    if "choice" not in group:
        for name, values in cheap.items():
            names = ["tile", "field"][: values.ndim]
            group.create_array(name, data=values, overwrite=True, dimension_names=names)
        n_tiles, n_cand = len(cheap["gflops"]), len(root["labels/decisions"].attrs["matseg"]["candidates"])
        group.create_array(
            "gain",
            shape=(n_tiles, n_cand),
            dtype="float32",
            overwrite=True,
            dimension_names=["tile", "candidate"],
        )
        group.create_array(
            "choice", shape=(n_tiles,), dtype="uint8", overwrite=True, dimension_names=["tile"]
        )
    return cheap


def run_candidates(
    job: Job, plan, todo, norm, ctx, arrays, records: TileRecords, runner: Backend, stage: Stage
) -> None:
    """The tiles of ``todo`` (position, index): their candidates, blended with their neighbours'."""
    if not todo:
        stage.finish()
        return
    grid, names, context = job.grid, job.names, job.context
    grid_choice = plan["choice"].reshape(grid.grid_shape)  # each tile's candidate, by its index

    def near(idx) -> dict:
        """The candidates of tile ``idx`` and its in-plane neighbours."""
        return {j: int(grid_choice[j]) for j in neighbour_indices(grid, idx).values()}

    # every candidate that runs reads its tiles with its own halo; blending needs the band only
    used = {names[k] for k in np.unique(plan["choice"]).tolist() if k} | {"cheap"}
    grids = {n: candidate_grid(grid, n, context) for n in used}
    shared_grids = dict(zip(grids, shared_nodes(*grids.values())))
    shared_norm, shared_records, shared_names = shared_nodes(norm, records, names)
    run = dict(zip(used, shared_nodes(*(CANDIDATES[n] for n in used))))
    # on threads, tiles go in batches (separate computations): a candidate whose
    # neighbours fall into two batches is computed once and held for both
    shared = SharedResults() if runner.client is None else None
    (shared_results,) = shared_nodes(shared)

    def tasks(group, layers) -> list:
        """The finishing tasks of a group's tiles, with the candidates they take."""
        blocks = {n: tile_blocks(job.volume.data, g, layers) for n, g in grids.items()}
        around = {idx: near(idx) for _, idx in group}
        needed = {j for choice in around.values() for j, k in choice.items() if k > 0}
        with runner.annotate(COSTLY):
            costly = {}
            for idx in sorted(needed):
                name = names[grid_choice[idx]]
                # only the strips of probabilities that blending will read are held
                # (a neighbour already done on resume is needed but has no entry in ``around``)
                sides = blend_sides(grid, idx, around.get(idx) or near(idx))
                args = (blocks[name][idx], idx, shared_grids[name], shared_norm, ctx, run[name], BAND, sides)
                if shared is not None:
                    args = (shared_results, *args)
                task = candidate_task if shared is None else shared_candidate_task
                costly[idx] = dask.delayed(task)(*args, dask_key_name=key("candidate", idx))
        out = []
        with runner.annotate(CHEAP):
            for t, idx in group:
                choice = around[idx]
                mine = choice[idx]
                # the choices of the tile and its neighbours only: a task that carried the whole
                # plan would make the graph grow with the square of the number of tiles. The cheap
                # net runs again here (and reads the input) only where one of them kept the cheap pass (0)
                neighbours = {j: costly[j] for j, k in choice.items() if k not in (0, mine)}
                if shared is not None:  # the candidates this task takes, released when it is done
                    shared.expect(([idx] if mine else []) + list(neighbours))
                out.append(
                    dask.delayed(finish_task)(
                        blocks["cheap"][idx] if 0 in choice.values() else None,
                        t,
                        idx,
                        shared_grids["cheap"],
                        shared_norm,
                        ctx,
                        shared_names,
                        BAND,
                        choice,
                        costly.get(idx),
                        neighbours,
                        arrays,
                        shared_records,
                        shared_results,
                        dask_key_name=key("finish", idx),
                    )  # fmt: skip
                )
        return out

    compute_tiles(runner, todo, tasks, stage, records)


def selector_stats(job: Job, plan, cheap, records: TileRecords, rewrite) -> dict:
    """Counts, GFLOPs and model seconds of a selector run: the cheap pass, then the rewritten tiles."""
    rows = records.read()
    rewritten = np.array([idx in rewrite for idx in job.indices])
    if not records.done(rows)[rewritten].all():
        raise MatsegError(f"output {job.output}: some tiles were not finished; run the same command again")
    counts = cheap["counts"].copy()
    counts[rewritten] = rows["counts"][rewritten]
    stage2_gflops = float(rows["gflops"][rewritten].sum())
    seconds = dict(zip(job.names, rows["seconds"][rewritten].sum(axis=0).tolist()))
    seconds["cheap"] = seconds.get("cheap", 0.0) + float(cheap["seconds"].sum())
    cheap_gflops = float(cheap["gflops"].sum())
    return {
        "counts": counts.sum(axis=0),
        "gflops": cheap_gflops + plan["policy_gflops"] + stage2_gflops,
        "seconds": {n: s for n, s in seconds.items() if s},
        "breakdown": {
            "cheap_pass": cheap_gflops,
            "selector": plan["policy_gflops"],
            "candidates_and_blending": stage2_gflops,
        },
    }
