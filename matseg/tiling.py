"""The tile grid: dask chunks of the volume, each grown by a halo for inference.

Tiles are the chunks of the input rechunked to the tile size; the halo is added
by :func:`dask.array.overlap.overlap` (no padding at the volume's faces), so
dask reads each tile with its neighbours' borders and matseg owns no tile loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

import numpy as np

from matseg.defaults import DEFAULT_TILE
from matseg.errors import MatsegError

if TYPE_CHECKING:  # dask is imported where a graph is made
    import dask.array as da
    from dask.delayed import Delayed

# Tiles in a group whose tasks are made at once (at least: see Backend.group_tiles); a task
# is some 6 kB of graph, and at most two groups' tasks exist at a time (see layer_groups).
GROUP_TILES = 4096
# Chunks of a volume in one dask reduction (a reduction's graph is some 13 kB a chunk): see slabs.
CHUNKS_AT_ONCE = 1024


def default_tile(ndim: int) -> tuple[int, ...]:
    """The default tile of a volume of ``ndim`` axes (2-D images: its in-plane size)."""
    return DEFAULT_TILE[-ndim:]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of a volume of ``shape``: ``chunks`` per axis and a ``depth`` (halo) per axis."""

    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    depth: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        n = 1
        for c in self.chunks:
            n *= len(c)
        return n

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.chunks)

    @property
    def write_chunks(self) -> tuple[int, ...]:
        """Chunk shape of the output arrays: every tile is a whole number of chunks."""
        return tuple(c[0] for c in self.chunks)

    def region(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The voxels tile ``index`` owns (halo excluded), in volume coordinates."""
        out = []
        for axis, i in enumerate(index):
            start = sum(self.chunks[axis][:i])
            out.append(slice(start, start + self.chunks[axis][i]))
        return tuple(out)

    def halo_of(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Halo actually present around tile ``index`` (none beyond the volume's faces)."""
        return tuple(
            (self.depth[a] if i > 0 else 0, self.depth[a] if i < len(self.chunks[a]) - 1 else 0)
            for a, i in enumerate(index)
        )

    def with_halo(self, halo: int) -> TileGrid:
        """The same tiles with another in-plane halo (at most the planned one, per axis)."""
        depth = (0,) * (len(self.shape) - 2) + tuple(min(halo, d) for d in self.depth[-2:])
        return TileGrid(self.shape, self.chunks, depth)

    def indices(self) -> Iterator[tuple[int, ...]]:
        return product(*(range(len(c)) for c in self.chunks))


def _axis_chunks(size: int, tile: int, halo: int) -> tuple[int, ...]:
    if tile >= size:
        return (size,)
    n, rest = divmod(size, tile)
    chunks = [tile] * n
    if rest:
        # dask's overlap needs every chunk to be at least the halo: a short
        # last tile is merged into its neighbour (it still spans whole chunks).
        if rest < halo:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks)


def plan_tiles(shape: Sequence[int], tile: Sequence[int], halo: int, stride: int) -> TileGrid:
    """Plan the tile grid for 2-D models run slice-wise.

    Parameters
    ----------
    shape : sequence of int
        (Y, X) or (Z, Y, X).
    tile : sequence of int
        Tile size per axis, same length as ``shape``; in-plane sizes must be
        multiples of ``stride``.
    halo : int
        In-plane halo, a multiple of ``stride`` (Z gets none: models are 2-D; nor does an
        axis the volume spans in one tile, which has no neighbour to take it from).
    stride : int
        The models' pooling grid; tiles start on it so tiling is exact.
    """
    shape, tile = tuple(int(s) for s in shape), tuple(int(t) for t in tile)
    if len(tile) != len(shape):
        raise MatsegError(f"tile {tile} has {len(tile)} sizes; the volume has {len(shape)} axes")
    if any(t <= 0 for t in tile):
        raise MatsegError(f"tile sizes must be positive, got {tile}")
    for t in tile[-2:]:
        if t % stride:
            raise MatsegError(f"in-plane tile size {t} must be a multiple of {stride} (the models' stride)")
    if halo % stride or halo < 0:
        raise MatsegError(f"halo {halo} must be a non-negative multiple of {stride}")
    depth = (0,) * (len(shape) - 2) + (halo, halo)
    for s, t, d in zip(shape, tile, depth):
        if t < s and t < d:
            raise MatsegError(f"tile size {t} is smaller than the halo {d}; use tiles of at least {d}")
    chunks = tuple(_axis_chunks(s, t, d) for s, t, d in zip(shape, tile, depth))
    # an axis of one tile has no neighbour to take a halo from (and may be thinner than it)
    depth = tuple(0 if len(c) == 1 else d for c, d in zip(chunks, depth))
    return TileGrid(shape=shape, chunks=chunks, depth=depth)


def shared_nodes(*values) -> list:
    """``values`` as graph nodes of their own, for many tasks to take.

    A task that took one as an argument would carry its own copy to a worker,
    and dask would walk it (a grid's fields, the zarr arrays' metadata) for
    every task it builds.
    """
    import dask
    from dask.delayed import Delayed

    return [v if isinstance(v, Delayed) else dask.delayed(v, traverse=False) for v in values]


class TileBlocks:
    """Tiles as delayed blocks, each made when asked for: ``blocks[index]`` is tile
    ``index`` (of the whole grid) with its halo. Made only when asked for: dask's
    ``to_delayed`` makes them for every tile at once, which grows with the volume."""

    def __init__(self, tiles: da.Array, first_layer: int = 0):
        self._name = tiles.name
        self._graph = tiles.__dask_graph__()
        self._layer = tiles.__dask_layers__()[0]
        self._first = first_layer

    def __getitem__(self, index: Sequence[int]) -> Delayed:
        from dask.delayed import Delayed

        key = (self._name, *index) if not self._first else (self._name, index[0] - self._first, *index[1:])
        return Delayed(key, self._graph, layer=self._layer)


def tile_blocks(data: da.Array, grid: TileGrid, layers: range | None = None) -> TileBlocks:
    """One delayed block per tile (indexed like the grid): the tile and its halo.

    With ``layers``, only the tiles of those layers along Z (a range of the grid's first
    index): the graph of the blocks then grows with the layers, not with the volume
    (rechunking a volume to the tiles is a graph of some 1.2 kB a tile). Tiles have no
    halo along Z, so a tile's block is the same either way.

    Each tile is copied out of the stored chunk it was cut from: a view would keep
    the whole chunk alive (a 16 MB chunk for a 1 MB tile) until the last
    neighbour has taken its halo, and memory would grow with the volume. The
    blocks share the volume's graph unoptimised: a computation culls it to the
    tiles it needs (optimising it up front took 0.2 s for 256 tiles).
    """
    first = 0
    if layers is not None and len(grid.shape) == 3:  # (all layers: the array itself, as dask slices it)
        first = layers.start
        start = sum(grid.chunks[0][:first])
        z = grid.chunks[0][first : layers.stop]
        data = data[start : start + sum(z)]
        grid = TileGrid(data.shape, (z, *grid.chunks[1:]), grid.depth)
    data = data.rechunk(grid.chunks).map_blocks(np.copy, dtype=data.dtype)
    depth = dict(enumerate(grid.depth))
    import dask.array as da

    return TileBlocks(da.overlap.overlap(data, depth=depth, boundary="none", allow_rechunk=False), first)


def layer_groups(todo: Sequence[tuple[int, tuple[int, ...]]], size: int) -> Iterator[list]:
    """``todo`` (position, index, in grid order) cut into runs of whole layers of tiles.

    A layer is the tiles of one index along Z; a run holds as many layers as fit in
    ``size`` tiles (at least one). Tiles blend with their in-plane neighbours only, so
    no two runs share a tile's result, and each run's tasks can be made, computed and
    dropped on their own (:meth:`matseg.cluster.Backend.compute_groups`): the graph of a
    run is bounded by ``size``, not by the volume. A 2-D image is a single layer.
    """
    run: list = []
    layer: list = []
    for item in todo:
        if layer and len(item[1]) == 3 and item[1][0] != layer[0][1][0]:  # a new layer
            if run and len(run) + len(layer) > size:
                yield run
                run = []
            run += layer
            layer = []
        layer.append(item)
    if run and len(run) + len(layer) > size:
        yield run
        run = []
    if run + layer:
        yield run + layer


def group_layers(group: Sequence[tuple[int, tuple[int, ...]]]) -> range | None:
    """The layers (a range of the first index) a run of :func:`layer_groups` spans, for
    :func:`tile_blocks`; None for a 2-D image, a single layer."""
    first, last = group[0][1], group[-1][1]
    return range(first[0], last[0] + 1) if len(first) == 3 else None


def slabs(chunks: tuple[tuple[int, ...], ...], most: int = CHUNKS_AT_ONCE) -> list[tuple[int, int]]:
    """(start, stop) along the first axis of runs of whole chunks (``chunks``: a dask
    array's), of at most ``most`` chunks each but at least one row of chunks: a reduction
    over a volume computed slab by slab has a graph bounded by ``most``, not by the volume."""
    per_row = int(np.prod([len(c) for c in chunks[1:]]))
    rows = max(1, most // max(per_row, 1))
    edges = np.cumsum((0, *chunks[0])).tolist()
    return [(edges[i], edges[min(i + rows, len(chunks[0]))]) for i in range(0, len(chunks[0]), rows)]
