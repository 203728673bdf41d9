"""Labels that napari can paint on without loading them or touching the file they came from.

:class:`EditableLabels` reads a lazy (dask) label volume chunk by chunk and
keeps a private copy of each chunk the user paints in, so a volume bigger than
memory opens and can be corrected, while the segmentation output on disk stays
read-only. Saving happens elsewhere (``matseg.save_corrections`` reads it back
one chunk at a time).
"""

from __future__ import annotations

from itertools import product

import numpy as np


class EditableLabels:
    """Copy-on-write view of a lazy label array: edits are kept per chunk, in memory.

    Slices like a numpy array for reading (basic and integer-array indexing) and
    for writing (napari's paint, fill and erase write integer-array indices).
    """

    def __init__(self, base, chunks: tuple[int, ...] | None = None):
        self.base = base
        self.shape = tuple(int(s) for s in base.shape)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)
        size = chunks or getattr(base, "chunksize", None) or self.shape
        self.chunk_shape = tuple(int(c) for c in size)
        self._edits: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def edited_chunks(self) -> int:
        return len(self._edits)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[tuple(slice(None) for _ in self.shape)], dtype=dtype)

    def __repr__(self) -> str:
        return f"EditableLabels(shape={self.shape}, dtype={self.dtype}, edited chunks={len(self._edits)})"

    # reading --------------------------------------------------------------------------
    def __getitem__(self, key):
        if _is_fancy(key, self.ndim):
            indices = tuple(np.asarray(k, dtype=np.intp) for k in key)
            box = tuple(slice(int(i.min()), int(i.max()) + 1) if i.size else slice(0, 0) for i in indices)
            if any(b.stop <= b.start for b in box):
                return np.zeros(np.broadcast(*indices).shape, self.dtype)
            region = self._read(box)
            return region[tuple(i - b.start for i, b in zip(indices, box))]
        box, local = _bounding_box(key, self.shape)
        return self._read(box)[local]

    def _read(self, box: tuple[slice, ...]) -> np.ndarray:
        """The voxels of ``box`` (unit-step slices), edits applied."""
        out = np.asarray(self.base[box], dtype=self.dtype)
        touched = [c for c in self._chunks_of(box) if c in self._edits]
        if touched:
            out = np.array(out, copy=True)
            for chunk in touched:
                chunk_box = self._chunk_box(chunk)
                inter = tuple(
                    slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, chunk_box)
                )
                out[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, box))] = (
                    self._edits[chunk][
                        tuple(slice(i.start - c.start, i.stop - c.start) for i, c in zip(inter, chunk_box))
                    ]
                )
        return out

    # writing --------------------------------------------------------------------------
    def __setitem__(self, key, value) -> None:
        if _is_fancy(key, self.ndim):
            indices = np.broadcast_arrays(*(np.asarray(k, dtype=np.intp) for k in key))
            values = np.broadcast_to(np.asarray(value, dtype=self.dtype), indices[0].shape)
        else:  # basic indexing: address every voxel of the box explicitly
            box, local = _bounding_box(key, self.shape)
            grids = np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij")
            indices = [g[local] for g in grids]
            values = np.broadcast_to(np.asarray(value, dtype=self.dtype), indices[0].shape)
        indices = [i.ravel() for i in indices]
        values = values.ravel()
        chunk_ids = np.stack([i // c for i, c in zip(indices, self.chunk_shape)], axis=1)
        for chunk in {tuple(int(v) for v in row) for row in chunk_ids}:
            inside = np.all(chunk_ids == chunk, axis=1)
            block = self._editable_chunk(chunk)
            origin = [c * s for c, s in zip(chunk, self.chunk_shape)]
            block[tuple(i[inside] - o for i, o in zip(indices, origin))] = values[inside]

    def _editable_chunk(self, chunk: tuple[int, ...]) -> np.ndarray:
        if chunk not in self._edits:
            self._edits[chunk] = np.array(self.base[self._chunk_box(chunk)], dtype=self.dtype, copy=True)
        return self._edits[chunk]

    def _chunk_box(self, chunk: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(c * s, min((c + 1) * s, n)) for c, s, n in zip(chunk, self.chunk_shape, self.shape)
        )

    def _chunks_of(self, box: tuple[slice, ...]):
        ranges = [
            range(b.start // s, (b.stop - 1) // s + 1) if b.stop > b.start else range(0)
            for b, s in zip(box, self.chunk_shape)
        ]
        return product(*ranges)


def _is_fancy(key, ndim: int) -> bool:
    return isinstance(key, tuple) and len(key) == ndim and all(isinstance(k, (np.ndarray, list)) for k in key)


def _bounding_box(key, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple]:
    """Unit-step box holding a basic selection, and the selection relative to that box."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    key = key + (slice(None),) * (len(shape) - len(key))
    box, local = [], []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step == 1:
                box.append(slice(start, max(start, stop)))
                local.append(slice(None))
            else:
                rng = range(start, stop, step)
                lo, hi = (min(rng), max(rng) + 1) if len(rng) else (0, 0)
                box.append(slice(lo, hi))
                local.append(slice(start - lo, stop - lo if stop >= lo else None, step))
        else:
            i = int(k) + (n if int(k) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
            box.append(slice(i, i + 1))
            local.append(0)
    return tuple(box), tuple(local)
