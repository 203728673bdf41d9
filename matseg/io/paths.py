"""Path identity: whether an output and an input are, or contain, the same files.

Every command that writes compares its output with each of its inputs here,
before anything is read or written, so no spelling of a path (``..``, a symlink,
another letter case, an inner path of a store or HDF5 file) lets an output
replace or land inside an input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from matseg.errors import MatsegError


def real_path(spec: str | os.PathLike) -> Path:
    """The file part of ``spec`` (``file.h5:/dataset`` and ``store.zarr:/path`` belong to their
    file), absolute with symlinks and ``..`` resolved, also where it does not exist yet."""
    from matseg.io.read import split_spec

    return Path(os.path.normcase(split_spec(spec)[0].resolve()))


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file (hard links, case-insensitive file systems)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies inside it, comparing every existing ancestor by identity."""
    if inner == outer or inner.is_relative_to(outer):
        return True
    if not outer.exists():
        return False
    return any(_same_file(p, outer) for p in (inner, *inner.parents) if p.exists())


def _spelt_path(spec: str | os.PathLike) -> Path:
    """The file part of ``spec`` as spelt, absolute with ``..`` removed but links kept: a link
    that lies inside an output is deleted with it, wherever it points."""
    from matseg.io.read import split_spec

    return Path(os.path.normcase(os.path.normpath(split_spec(spec)[0].absolute())))


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same path or one lies inside the other, as they resolve
    (links followed) or as they are spelt (a link inside the other)."""
    ra, rb = real_path(a), real_path(b)
    if _within(ra, rb) or _within(rb, ra):
        return True
    sa, sb = _spelt_path(a), _spelt_path(b)
    return sa == sb or sa.is_relative_to(sb) or sb.is_relative_to(sa)


def check_distinct(output: str | os.PathLike, inputs: Iterable[tuple[str, object]]) -> None:
    """Refuse an output that is, contains or lies inside any input.

    Parameters
    ----------
    output : path
        What the command writes.
    inputs : iterable of (role, path)
        Every path it reads, with its role for the message (``input``,
        ``--truth``, ``--labels``, ``--weights``...); ``None`` paths are skipped.

    Raises
    ------
    MatsegError
        Naming the input the output would overwrite or write into.
    """
    for role, source in inputs:
        if source is None:
            continue
        if overlaps(output, os.fspath(source)):
            raise MatsegError(
                f"output {os.fspath(output)} would overwrite the {role} {os.fspath(source)} (the same "
                "files, or one inside the other); matseg never writes over its inputs: choose another output"
            )
