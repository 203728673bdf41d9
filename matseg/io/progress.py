"""Per-tile progress records: what lets a killed run resume from its finished tiles.

Each stage of a run (the cheap pass, the candidates, a single model) keeps one
row per tile in ``progress/<stage>`` of the output store, one Zarr chunk per
row. A task writes its row only after its tile's output chunks, and Zarr's
local store writes every chunk atomically (a temporary file renamed into
place), so a row that is present means that tile is finished, whenever the run
was killed; a missing row means the tile is computed again.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import zarr

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

    def write(self, t: int, **values) -> None:
        """Record tile ``t`` as finished, with its values (one atomic chunk)."""
        row = np.concatenate([np.ravel(np.asarray(values[name], np.float64)) for name, _ in self.fields])
        self.array[t : t + 1] = row[None]

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
