"""Missing chunks of an input image: never read silently as the fill value.

Zarr returns an array's fill value for a chunk that is not stored, so a chunk
lost in a copy or a crashed write reads as a block of zeros. matseg counts the
stored chunks of every Zarr image it reads and refuses one with chunks missing,
naming how many and where, unless the array declares that its missing chunks
hold the fill value on purpose: the array attribute
``"missing_chunks": "fill_value"``. Label images (``--truth``, ``--labels``) are
exempt: zarr-python skips writing chunks equal to the fill value by default,
which for labels is every all-background chunk.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import zarr

from matseg.errors import MatsegError

DECLARATION = ("missing_chunks", "fill_value")
_SHOWN = 3


def declares_fill(array: zarr.Array) -> bool:
    """Whether ``array`` says its missing chunks mean its fill value."""
    key, value = DECLARATION
    return array.attrs.get(key) == value and array.fill_value is not None


def missing_chunk_positions(array: zarr.Array, limit: int = _SHOWN) -> tuple[int, list[tuple[int, ...]]]:
    """How many chunks of ``array`` are not stored, and the grid positions of the first ``limit``."""
    missing = int(array.nchunks) - int(array.nchunks_initialized)
    if missing <= 0:
        return 0, []
    root = getattr(array.store, "root", None)
    if root is None:  # not a local store: the count alone
        return missing, []
    folder = Path(root) / array.path if array.path else Path(root)
    first = []
    for position in itertools.product(*(range(n) for n in array.cdata_shape)):
        if len(first) >= limit:
            break
        if not (folder / array.metadata.encode_chunk_key(position)).exists():
            first.append(position)
    return missing, first


def check_chunks(array: zarr.Array, source: str) -> None:
    """Refuse ``array`` if chunks are missing and it does not declare their meaning.

    Raises
    ------
    MatsegError
        Naming the number of missing chunks and the first chunk positions.
    """
    if declares_fill(array):
        return
    count, first = missing_chunk_positions(array)
    if not count:
        return
    spans = (zip(pos, array.chunks, array.shape) for pos in first)
    where = ", ".join(
        "[" + ", ".join(f"{p * c}:{min((p + 1) * c, s)}" for p, c, s in span) + "]" for span in spans
    )
    key, value = DECLARATION
    raise MatsegError(
        f"{source} is missing {count} of its {array.nchunks} chunks (first at {where}); zarr would read "
        f"them as {array.fill_value}. If a copy or a write was cut short, copy them again; if they hold "
        f"only {array.fill_value} (zarr skips writing such chunks by default: the padding around a CT "
        f'scan), set the array attribute "{key}": "{value}"'
    )
