"""Stitching tiles served by different candidates without seams, and measuring seams.

Inside a tile's core, its own prediction counts fully. Across a border between
tiles whose candidates differ, both predictions are blended with linear ramps
over a band of ``band`` voxels on each side (each tile's prediction is computed
on its halo, so it extends past its core). The ramps of neighbouring tiles sum
to one, so blending identical predictions changes nothing; tiles whose
neighbours all ran the same candidate are not blended at all, which keeps
single-model runs exactly equal to whole-volume inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice, product

import numpy as np

from matseg.tiling import GROUP_TILES, TileGrid, shared_nodes

BAND = 16  # voxels on each side of a border over which candidates are blended
NEIGHBOURS = tuple(o for o in product((-1, 0, 1), repeat=2))  # in-plane offsets, (0, 0) included


def neighbour_indices(grid: TileGrid, index: Sequence[int]) -> dict[tuple[int, int], tuple[int, ...]]:
    """In-plane neighbours of tile ``index`` (itself at (0, 0)) that exist in the grid."""
    out = {}
    shape = grid.grid_shape
    for dy, dx in NEIGHBOURS:
        j = list(index)
        j[-2] += dy
        j[-1] += dx
        if 0 <= j[-2] < shape[-2] and 0 <= j[-1] < shape[-1]:
            out[(dy, dx)] = tuple(j)
    return out


def _axis_ramps(length: int, band: int, before: bool, after: bool) -> dict[int, np.ndarray]:
    """Weights of the previous tile (-1), this tile (0) and the next tile (+1) along one axis."""
    own = np.ones(length, np.float32)
    prev = np.zeros(length, np.float32)
    nxt = np.zeros(length, np.float32)
    ramp = (np.arange(band, dtype=np.float32) + band + 0.5) / (2 * band)  # 0.5 .. 1 into the tile
    if band and before:
        own[:band] = ramp
        prev[:band] = 1 - ramp
    if band and after:
        own[length - band :] = ramp[::-1]
        nxt[length - band :] = 1 - ramp[::-1]
    return {-1: prev, 0: own, 1: nxt}


def blend_weights(grid: TileGrid, index: Sequence[int], band: int) -> dict[tuple[int, int], np.ndarray]:
    """Weight map (Y, X) over tile ``index``'s core of itself and of each existing neighbour.

    The maps sum to one at every voxel.
    """
    region = grid.region(index)
    counts = grid.grid_shape
    ramps = [
        _axis_ramps(region[a].stop - region[a].start, band, index[a] > 0, index[a] < counts[a] - 1)
        for a in (-2, -1)
    ]
    return {
        offset: np.outer(ramps[0][offset[0]], ramps[1][offset[1]])
        for offset in neighbour_indices(grid, index)
    }


def extended_region(grid: TileGrid, index: Sequence[int], band: int) -> tuple[slice, ...]:
    """Tile ``index``'s core grown in-plane by ``band`` (clipped at the volume's faces)."""
    region = list(grid.region(index))
    for a in (-2, -1):
        size = grid.shape[a]
        region[a] = slice(max(0, region[a].start - band), min(size, region[a].stop + band))
    return tuple(region)


def crop_extended(values: np.ndarray, have: tuple[slice, ...], want: tuple[slice, ...]) -> np.ndarray:
    """The part of ``values`` (covering ``have`` in its last 2 axes) inside ``want``; zeros elsewhere."""
    out = np.zeros(values.shape[:-2] + tuple(w.stop - w.start for w in want[-2:]), values.dtype)
    paste(out, want, values, have)
    return out


def paste(out: np.ndarray, want: tuple[slice, ...], values: np.ndarray, have: tuple[slice, ...]) -> None:
    """Copy the part of ``values`` (covering ``have`` in its last 2 axes) that lies inside
    ``want`` into ``out`` (covering ``want``)."""
    src, dst = [], []
    for h, w in zip(have[-2:], want[-2:]):
        lo, hi = max(h.start, w.start), min(h.stop, w.stop)
        if hi <= lo:
            return
        src.append(slice(lo - h.start, hi - h.start))
        dst.append(slice(lo - w.start, hi - w.start))
    out[(Ellipsis, *dst)] = values[(Ellipsis, *src)]


def seam_score(labels, grid: TileGrid, compute=None, advance: Callable[[int], None] | None = None) -> dict:
    """How much more often neighbouring voxels disagree across tile borders than inside tiles.

    For every in-plane pair of adjacent voxels, ``disagree`` is 1 when their
    labels differ. The score is the disagreement rate of pairs that straddle a
    tile border divided by that of all other pairs: about 1 for a seamless
    stitch (borders look like any other place), well above 1 when the labels
    jump at tile borders.

    ``labels`` is a numpy or Zarr array (a dask array would be computed whole
    first: pass the store it reads); it is read tile by tile, each tile's chunks
    once, and ``compute`` (default: dask's threads) runs the per-tile counts. A
    tile gives its pairs inside and its four edges; the pairs across borders are
    counted from the edges of neighbours, a run of whole rows of tiles at a time (the
    last row's edges kept for the next run), so memory does not grow with the volume.
    ``advance(n)`` is called with the tiles of each run once counted.

    Returns
    -------
    dict
        ``score``, ``border_rate``, ``inside_rate``, ``border_pairs``; ``score`` is None
        where no pair straddles a tile border (a volume of one tile in-plane).
    """
    import dask

    shared = shared_nodes(labels, grid)
    counts = np.zeros(4, np.int64)  # disagreeing and all pairs: across borders, inside tiles
    previous: dict = {}  # the parts of the last row of tiles of the run before
    for run in _row_runs(grid):
        tasks = [dask.delayed(_seam_parts)(*shared, index) for index in run]
        parts = dict(zip(run, compute(tasks) if compute else dask.compute(*tasks, scheduler="threads")))
        for index, (inside, edges) in parts.items():
            counts[2:] += inside
            near = neighbour_indices(grid, index)
            for axis, offset in ((-2, (-1, 0)), (-1, (0, -1))):
                if offset in near:  # this tile's first row (column) against the one before's last
                    before = parts.get(near[offset]) or previous[near[offset]]
                    first, last = edges[axis][0], before[1][axis][1]
                    counts[:2] += (np.count_nonzero(first != last), first.size)
        previous = {index: part for index, part in parts.items() if index[:-1] == run[-1][:-1]}
        if advance is not None:
            advance(len(run))
    border_sum, border_n, inside_sum, inside_n = counts.tolist()
    border_rate = border_sum / border_n if border_n else 0.0
    inside_rate = inside_sum / inside_n if inside_n else 0.0
    if border_n == 0:  # one tile in-plane: no border to judge
        score = None
    else:
        score = border_rate / inside_rate if inside_rate > 0 else (1.0 if border_rate == 0 else float("inf"))
    return {
        "score": score,
        "border_rate": border_rate,
        "inside_rate": inside_rate,
        "border_pairs": int(border_n),
    }


def _row_runs(grid: TileGrid):
    """The grid's tile indices in runs of whole rows of tiles (all but the last index the
    same), as many rows a run as fit in ``GROUP_TILES`` tiles (at least one)."""
    *rows, width = grid.grid_shape
    starts = product(*(range(n) for n in rows))
    while chunk := list(islice(starts, max(1, GROUP_TILES // width))):
        yield [(*row, x) for row in chunk for x in range(width)]


def _seam_parts(labels, grid: TileGrid, index) -> tuple[np.ndarray, dict]:
    """Disagreeing and all pairs inside tile ``index``, and its edges: for each in-plane
    axis, the tile's (first, last) row or column of labels."""
    block = np.asarray(labels[grid.region(index)])
    inside = np.zeros(2, np.int64)
    for axis in (-2, -1):
        disagree = np.diff(block, axis=axis) != 0
        inside += (np.count_nonzero(disagree), disagree.size)
    edges = {axis: (np.take(block, 0, axis).copy(), np.take(block, -1, axis).copy()) for axis in (-2, -1)}
    return inside, edges
