"""Per-tile progress records: what lets a killed run resume from its finished tiles.

Each stage of a run (the cheap pass, the candidates, a single model) keeps one
row per tile in ``progress/<stage>`` of the output store, one Zarr chunk per
row. A task writes its row only after its tile's output chunks, and Zarr's
local store writes every chunk atomically (a temporary file renamed into
place), so a row that is present means that tile is finished, whenever the run
was killed; a missing row means the tile is computed again.

On threads, :class:`WriteBehind` does those writes while the worker goes on with
its next tile: the order (outputs, then the row) is the same, only later.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import zarr

from matseg.io.faults import fault_point
from matseg.io.write import for_tile_writes


class WriteBehind:
    """Writes of finished tiles, done in a thread of their own while the workers go on.

    A synchronous write keeps its worker waiting on Zarr's threads (encoding, the files,
    the hand-overs between threads), its core idle meanwhile.
    At most ``most`` writes wait at a time (each holds its tile's outputs): past that, a
    worker waits for room, so memory stays bounded however slow the disk. A failed
    write is raised by the next :meth:`submit` or by :meth:`flush`. Only for workers in
    this process (the threads backend): a cluster's workers write themselves.
    """

    def __init__(self, most: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="matseg-writer")
        self._room = threading.Semaphore(most)
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def submit(self, function, *args) -> None:
        """``function(*args)`` in the writer thread, after the writes submitted before."""
        self._raise()
        self._room.acquire()
        future = self._pool.submit(function, *args)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            if self._error is None and not future.cancelled() and future.exception() is not None:
                self._error = future.exception()
        self._room.release()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait for every write submitted so far; raise the first that failed."""
        with self._lock:
            pending = list(self._pending)
        wait(pending)
        for future in pending:  # (done, but its callback may not have recorded its error yet)
            if future.exception() is not None:
                raise future.exception()
        self._raise()

    def close(self) -> None:
        """Finish the writes submitted (without raising their errors) and stop the thread."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TileRecords:
    """Rows of named fields (float64), one per tile, for one stage of a run.

    With ``writes``, :meth:`write` hands the tile's writes to it and returns at once.
    """

    def __init__(self, array: zarr.Array, writes: WriteBehind | None = None):
        self.array = for_tile_writes(array)
        self.fields = [(name, int(width)) for name, width in array.attrs["fields"]]
        self.writes = writes

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
            dimension_names=["tile", "field"],
        )
        array.attrs["fields"] = [[name, width] for name, width in fields.items()]
        return cls(array)

    @classmethod
    def open(cls, root: zarr.Group, stage: str, writes: WriteBehind | None = None) -> TileRecords | None:
        try:
            return cls(root[f"progress/{stage}"], writes)
        except KeyError:
            return None

    def write(self, t: int, outputs: Sequence[tuple[zarr.Array, tuple, np.ndarray]] = (), **values) -> None:
        """Record tile ``t`` as finished, with its values (one atomic chunk), after writing
        its ``outputs`` ((array, region, values) of the tile's output chunks).

        The outputs go at once and the record after them, in one trip through Zarr's event
        loop: each synchronous write is a round trip between threads, most of the time
        of a record's write.
        """
        row = np.concatenate([np.ravel(np.asarray(values[name], np.float64)) for name, _ in self.fields])
        if self.writes is None:
            self._write_now(outputs, t, row[None])
        else:
            self.writes.submit(self._write_now, outputs, t, row[None])

    def flush(self) -> None:
        """Every tile :meth:`write` was given is written (a no-op without write-behind)."""
        if self.writes is not None:
            self.writes.flush()

    def _write_now(self, outputs, t: int, row: np.ndarray) -> None:
        _event_loop().run_until_complete(self._write(outputs, t, row))
        fault_point("after-tile")

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


_THREAD = threading.local()


def _event_loop() -> asyncio.AbstractEventLoop:
    """This thread's own event loop, made once, in which a tile's writes go through Zarr's
    public async API (``zarr.Array.async_array``) together. (Zarr's own event loop has no
    public entry point; a public ``zarr.run`` is proposed in zarr-developers/zarr-python#3997.)"""
    loop = getattr(_THREAD, "loop", None)
    if loop is None:
        loop = _THREAD.loop = asyncio.new_event_loop()
    return loop
