"""The per-tile task bodies of a run's stages: one tile in, its outputs and record written.

Each task writes its tile's output chunks, then its progress record (the tile is
done): a killed run resumes from the records (:mod:`matseg.pipeline.resume`).
"""

from __future__ import annotations

import time

import dask
import numpy as np

from matseg.candidates.registry import CANDIDATES, Candidate, Context
from matseg.candidates.tile import candidate_probs, cheap_pass, tile_input
from matseg.cluster import SharedResults
from matseg.models.labels import normalized_entropy, phase_counts, phase_labels
from matseg.pipeline.blend import BorderProbs, blended_labels
from matseg.stitch import extended_region
from matseg.tiling import TileGrid, shared_nodes


def outputs(arrays: dict, grid: TileGrid, index, **values: np.ndarray) -> list:
    """(array, region, values) of a tile's output chunks, for :meth:`TileRecords.write`."""
    region = grid.region(index)
    return [(arrays[n], region, v if len(grid.shape) == 3 else v[0]) for n, v in values.items()]


def single_task(block, t, index, grid, norm, context, candidate: Candidate, arrays, records) -> None:
    """Every tile runs ``candidate``: no selector, no blending."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    probs, gflops = candidate_probs(tile, candidate, context, grid.region(index))
    seconds = time.perf_counter() - started
    labels = phase_labels(probs)
    uncertainty = np.rint(normalized_entropy(probs) * 255).astype(np.uint8)
    out = outputs(
        arrays, grid, index, phases=labels, uncertainty=uncertainty, decisions=np.zeros_like(labels)
    )
    records.write(t, out, gflops=gflops, counts=counts(labels, context), seconds=[seconds])


def cheap_task(block, t, index, grid, norm, context, arrays, records) -> None:
    """The cheap pass on a tile, written as the tile's provisional result."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    result = cheap_pass(tile, context)
    seconds = time.perf_counter() - started
    labels = result["labels"]
    uncertainty = np.rint(result["uncertainty"] * 255).astype(np.uint8)
    # decisions stay at the fill value, 0 (cheap), until the candidates' stage rewrites the tile
    records.write(
        t,
        outputs(arrays, grid, index, phases=labels, uncertainty=uncertainty),
        gflops=result["gflops"],
        counts=counts(labels, context),
        seconds=[seconds],
        features=result["features"],
    )


def candidate_task(block, index, grid, norm, context, candidate: Candidate, band: int, sides=None):
    """A costlier candidate on a tile, over its core plus the blending band; kept as the
    tile's labels and its probabilities near the borders towards ``sides`` (what blending
    reads: :func:`matseg.pipeline.blend.blend_sides`; default all of them)."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    here = extended_region(grid, index, band)
    probs, gflops = candidate_probs(tile, candidate, context, here)
    seconds = time.perf_counter() - started
    return BorderProbs.of(probs, here, grid.region(index), band, sides), gflops, seconds


def shared_candidate_task(shared: SharedResults, block, index, *args):
    """:func:`candidate_task`, run once however many batches of tiles need it."""
    return shared.get(tuple(index), candidate_task, block, index, *args)


def finish_task(
    block, t, index, grid, norm, context, names, band, choice, own, neighbour_probs, arrays, records,
    shared: SharedResults | None = None,
) -> None:  # fmt: skip
    """A tile's final labels, blended with neighbours that ran another candidate.

    ``choice`` maps the tile and its in-plane neighbours to their candidates;
    ``block`` (the tile's input) is given only when the cheap net runs here again;
    ``shared`` holds candidates' results across batches (released here once used).
    """
    index = tuple(index)
    mine = choice[index]
    seconds, gflops = np.zeros(len(names)), 0.0
    others = {}
    if block is not None:
        tile = tile_input(block, index, grid, norm)
        started = time.perf_counter()
        cheap, gflops = candidate_probs(
            tile, CANDIDATES["cheap"], context, extended_region(grid, index, band)
        )
        seconds[0] = time.perf_counter() - started
        others[0] = cheap
    if mine == 0:
        own = others[0]
    else:
        own, own_gflops, seconds[mine] = own
        gflops += own_gflops
    neighbour_probs = {j: p[0] for j, p in neighbour_probs.items()}
    labels = blended_labels(index, grid, band, choice, own, others, neighbour_probs)
    if shared is not None:
        for j in ([index] if mine else []) + list(neighbour_probs):
            shared.release(j)
    out = outputs(arrays, grid, index, phases=labels, decisions=np.full_like(labels, mine))
    records.write(t, out, gflops=gflops, counts=counts(labels, context), seconds=seconds)


def counts(labels: np.ndarray, context: Context) -> np.ndarray:
    return phase_counts(labels, context.n_phases)


def tile_tasks(function, stage: str, blocks, todo, grid: TileGrid, *args) -> list:
    """One task per tile of ``todo`` (position, index): ``function(block, t, index, grid, *args)``."""
    shared = shared_nodes(grid, *args)
    return [dask.delayed(function)(blocks[i], t, i, *shared, dask_key_name=key(stage, i)) for t, i in todo]


def key(stage: str, index) -> str:
    return f"matseg-{stage}-{'-'.join(map(str, index))}"
