"""A box of a volume to segment instead of the whole: ``--region 100:300,512:1536,512:1536``.

A lab tries settings on a few slices before the whole stack, or keeps a scan and leaves out
the margins around it. The box is a view of the input (nothing is copied), its output holds
the box alone, and the output records where the box lies in the input: its NGFF translation
(the box's first voxel in physical units) and ``input.region`` in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from matseg.errors import MatsegError

Region = tuple[slice, ...]
EXAMPLE = "e.g. 100:300,512:1536,512:1536 (Z,Y,X; ':' or nothing for a whole axis)"


def parse_region(text: str | Sequence, shape: Sequence[int]) -> Region:
    """The box ``text`` names in a volume of ``shape``: one ``start:stop`` per axis (Z,Y,X, or
    Y,X for an image), voxel indices counted from 0, the stop left out; ``start:`` runs to the
    end, ``:`` or nothing is the whole axis, one number ``n`` is the one slice ``n:n+1``.
    A sequence of (start, stop) pairs (a report's ``input.region``) is taken as well."""
    axes = "ZYX"[-len(shape) :] if len(shape) <= 3 else None
    parts = text.split(",") if isinstance(text, str) else list(text)
    if axes is None or len(parts) != len(shape):
        raise MatsegError(
            f"--region {_shown(text)} names {len(parts)} axes; the input has {len(shape)} "
            f"(shape {tuple(shape)}): give one start:stop per axis, {EXAMPLE}"
        )
    return tuple(_axis(part, n, axis, text) for part, n, axis in zip(parts, shape, axes))


def _axis(part, size: int, axis: str, text) -> slice:
    if isinstance(part, str):
        bounds = [b.strip() for b in part.split(":")]
        try:
            if len(bounds) == 1:
                start = int(bounds[0]) if bounds[0] else 0
                stop = start + 1 if bounds[0] else size
            elif len(bounds) == 2:
                start = int(bounds[0]) if bounds[0] else 0
                stop = int(bounds[1]) if bounds[1] else size
            else:
                raise ValueError
        except ValueError:
            raise MatsegError(f"--region {_shown(text)}: '{part}' is not start:stop ({EXAMPLE})") from None
    else:
        try:
            start, stop = (int(v) for v in part)
        except (TypeError, ValueError):
            raise MatsegError(f"region {_shown(text)}: {part!r} is not a (start, stop) pair") from None
    if not 0 <= start < stop <= size:
        raise MatsegError(
            f"--region {_shown(text)}: {axis} {start}:{stop} is not a non-empty part of 0:{size} "
            f"(the input's {axis} axis holds {size} voxels)"
        )
    return slice(start, stop)


def _shown(text) -> str:
    return text if isinstance(text, str) else repr(list(text))


def as_pairs(region: Region) -> list[list[int]]:
    """``region`` as JSON: [[start, stop], ...] per axis."""
    return [[s.start, s.stop] for s in region]


def crop(volume, region: Region):
    """``volume`` (a :class:`matseg.io.read.Volume`) cut to ``region``: a view, read lazily, whose
    ``offset`` (where its first voxel lies, physical units) is the box's place in the volume."""
    size = volume.voxel_size.values if volume.voxel_size is not None else (1.0,) * len(region)
    base = volume.offset or (0.0,) * len(region)
    offset = tuple(b + s.start * v for b, s, v in zip(base, region, size))
    return replace(volume, data=volume.data[region], offset=offset if any(offset) else None)


def whole(region: Region, shape: Sequence[int]) -> bool:
    return all(s.start == 0 and s.stop == n for s, n in zip(region, shape))
