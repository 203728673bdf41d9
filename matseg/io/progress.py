"""Per-tile progress records: what lets a killed run resume from its finished tiles.

Each stage of a run (the cheap pass, the candidates, a single model) keeps one
row per tile in ``progress/<stage>`` of the output store, one Zarr chunk per
row. A task writes its row only after its tile's output chunks, and Zarr's
local store writes every chunk atomically (a temporary file renamed into
place), so a row that is present means that tile is finished, whenever the run
was killed; a missing row means the tile is computed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from matseg.io.write import for_tile_writes


class TileRecords:
    """Rows of named fields (float64), one per tile, for one stage of a run."""

    def __init__(self, array: zarr.Array):
        self.array = for_tile_writes(array)
        self.fields = [(name, int(width)) for name, width in array.attrs["fields"]]

    @classmethod
    def create(cls, root: zarr.Group, stage: str, n_tiles: int, fields: Mapping[str, int]) -> TileRecords:
        """An empty record of ``n_tiles`` rows (replacing any earlier one of this stage).

        The first field must never be NaN: a NaN there marks a tile not yet done.
        """
        width = sum(fields.values())
        array = root.require_group("progress").create_array(
            stage,
            shape=(n_tiles, width),
            chunks=(1, width),
            dtype="float64",
            fill_value=np.nan,
            overwrite=True,
        )
        array.attrs["fields"] = [[name, width] for name, width in fields.items()]
        return cls(array)

    @classmethod
    def open(cls, root: zarr.Group, stage: str) -> TileRecords | None:
        try:
            return cls(root[f"progress/{stage}"])
        except KeyError:
            return None

    def write(self, t: int, outputs: Sequence[tuple[zarr.Array, tuple, np.ndarray]] = (), **values) -> None:
        """Record tile ``t`` as finished, with its values (one atomic chunk), after writing
        its ``outputs`` ((array, region, values) of the tile's output chunks).

        The outputs go at once and the record after them, in one trip through Zarr's event
        loop: each synchronous write is a round trip between threads, a tenth of a write's
        time for a tile's chunk and most of it for a record's.
        """
        row = np.concatenate([np.ravel(np.asarray(values[name], np.float64)) for name, _ in self.fields])
        sync(self._write(outputs, t, row[None]))

    async def _write(self, outputs, t: int, row: np.ndarray) -> None:
        await asyncio.gather(*(array.async_array.setitem(region, value) for array, region, value in outputs))
        await self.array.async_array.setitem(slice(t, t + 1), row)

    def done(self, rows: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Which tiles are finished (bool per tile), from ``rows`` if already :meth:`read`."""
        first = rows[self.fields[0][0]][:, 0] if rows is not None else self.array[:, 0]
        return ~np.isnan(first)

    def read(self) -> dict[str, np.ndarray]:
        """Every field as an array of shape (tiles, width); NaN rows for unfinished tiles."""
        rows = self.array[:]
        out, start = {}, 0
        for name, width in self.fields:
            out[name] = rows[:, start : start + width]
            start += width
        return out
