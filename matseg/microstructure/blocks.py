"""Stream a label volume block by block, each block read with a halo, in bounded batches.

A metric that only needs a voxel's neighbourhood runs on one block at a time
(its core plus a halo of ``low``/``high`` voxels on each side, clipped at the
volume's faces) and returns small partial results that are summed. Blocks run a
few at a time on dask's threads, so memory stays flat whatever the volume's size.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Block:
    """A core region and the padded region read for it; ``core`` indexes into the padded array."""

    region: Region
    padded: Region
    core: Region


def iter_blocks(
    shape: tuple[int, ...], block: tuple[int, ...], low: int = 0, high: int = 0, within: Region | None = None
) -> Iterator[Block]:
    """The blocks tiling ``within`` (default: the whole volume), halos clipped to ``within``."""
    within = within or tuple(slice(0, s) for s in shape)
    starts = [range(w.start, w.stop, b) for w, b in zip(within, block)]
    for corner in itertools.product(*starts):
        region = tuple(slice(c, min(c + b, w.stop)) for c, b, w in zip(corner, block, within))
        padded = tuple(
            slice(max(r.start - low, w.start), min(r.stop + high, w.stop)) for r, w in zip(region, within)
        )
        core = tuple(slice(r.start - p.start, r.stop - p.start) for r, p in zip(region, padded))
        yield Block(region, padded, core)


class Reader:
    """Reads a region of a label volume as a NumPy array; subclasses may change the labels."""

    def __init__(self, labels: da.Array):
        self.labels = labels

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.labels.shape)

    def read(self, region: Region) -> np.ndarray:
        return np.asarray(self.labels[region].compute(scheduler="synchronous"))

    def whole(self, chunk: int = 64) -> np.ndarray:
        """The whole volume, read a block at a time."""
        out = np.empty(self.shape, dtype=self.labels.dtype)
        for b in iter_blocks(self.shape, (chunk,) * len(self.shape)):
            out[b.region] = self.read(b.region)
        return out


def reduce_blocks(
    reader: Reader,
    func: Callable[[np.ndarray, Block], dict],
    block: tuple[int, ...],
    low: int = 0,
    high: int = 0,
    within: Region | None = None,
    workers: int | None = None,
) -> dict:
    """Sum ``func(padded_labels, block)`` over the blocks of ``within``.

    ``func`` returns a dict of numbers or NumPy arrays (of fixed shapes per key,
    or 1-D arrays that are summed after padding to the longest).
    """
    workers = workers or min(4, os.cpu_count() or 1)

    def one(b: Block) -> dict:
        return func(reader.read(b.padded), b)

    total: dict = {}
    blocks = list(iter_blocks(reader.shape, block, low, high, within))
    for start in range(0, len(blocks), 2 * workers):
        batch = [dask.delayed(one)(b) for b in blocks[start : start + 2 * workers]]
        for part in dask.compute(*batch, scheduler="threads", num_workers=workers):
            for key, value in part.items():
                total[key] = _add(total.get(key), value)
    return total


def _add(a, b):
    if a is None:
        return b
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1 and b.ndim == 1 and a.shape != b.shape:
        n = max(a.size, b.size)
        a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    return a + b


def as_dask(reader: Reader, chunks: tuple[int, ...]) -> da.Array:
    """The reader's volume as a lazy dask array, one ``reader.read`` per chunk."""
    grid = da.core.normalize_chunks(chunks, reader.shape)

    def load(block_info=None):
        location = block_info[None]["array-location"]
        return reader.read(tuple(slice(a, b) for a, b in location))

    return da.map_blocks(
        load, chunks=grid, dtype=reader.labels.dtype, meta=np.empty((0,) * len(grid), np.uint8)
    )
