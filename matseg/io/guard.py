"""What matseg may delete, and how its outputs come into being.

Deletion goes through :func:`remove_output` alone: it removes a path only
when matseg's own marker says matseg wrote it (a segment output's or sample's
root attributes, a corrections store, an evaluation folder's marker file, a
weights folder's ``manifest.json``), so ``--overwrite`` can never take a user's
own files. New outputs are built under a hidden sibling name and renamed into
place (:func:`building`) once their identity is recorded, so a run killed at
any instant leaves either nothing at the output path or a store that says
what it is; a folder changed as a whole (a weights folder) is changed on a copy
that takes its place (:func:`rebuilding`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from matseg.errors import MatsegError
from matseg.io.faults import fault_point

EVALUATION_MARKER = "matseg-evaluation.json"
WEIGHTS_MANIFEST = "manifest.json"
MEASURE_REPORT = "measure.json"  # what ``matseg measure`` writes in its folder
# the kinds of store matseg writes, told by their markers
KINDS = ("segment", "sample", "corrections", "evaluation", "weights", "measure")
_BUILDING, _TRASH = "matseg-new", "matseg-trash"


def _root_attrs(path: Path) -> dict:
    try:
        return dict(zarr.open_group(LocalStore(path, read_only=True), mode="r").attrs)
    except Exception:  # not a Zarr group: not a store of ours
        return {}


def output_kind(path: str | os.PathLike) -> str | None:
    """Which kind of matseg output ``path`` is (one of :data:`KINDS`), or None if matseg did not write it."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    if (path / EVALUATION_MARKER).is_file():
        return "evaluation"
    manifest = path / WEIGHTS_MANIFEST
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        ours = (
            isinstance(entries, dict)
            and entries
            and all(isinstance(e, dict) and "sha256" in e for e in entries.values())
        )
        return "weights" if ours else None
    if (path / MEASURE_REPORT).is_file():
        try:
            report = json.loads((path / MEASURE_REPORT).read_text())
        except (OSError, ValueError):
            return None
        return "measure" if isinstance(report, dict) and "matseg_version" in report else None
    attrs = _root_attrs(path)
    if "matseg-corrections" in attrs:
        return "corrections"
    mine = attrs.get("matseg")
    if isinstance(mine, dict):
        if "sample" in mine:
            return "sample"
        if "settings" in mine or "status" in mine:
            return "segment"
    return None


def check_replaceable(path: str | os.PathLike, kinds: tuple[str, ...], option: str = "--overwrite") -> None:
    """Refuse to replace ``path`` unless it is a matseg output of one of ``kinds``."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():  # replacing would delete the link's target, somewhere else
        raise MatsegError(
            f"{path} is a symbolic link; {option} does not replace through a link: give the "
            "folder it points to, or remove the link"
        )
    kind = output_kind(path)
    if kind not in kinds:
        what = f"a matseg {kind} output" if kind else "not written by matseg"
        raise MatsegError(
            f"{path} exists and is {what}; {option} only replaces a matseg "
            f"{' or '.join(kinds)} output: move it away or choose another output"
        )


def remove_output(path: str | os.PathLike, kinds: tuple[str, ...], option: str = "--overwrite") -> None:
    """Delete ``path`` if it is a matseg output of one of ``kinds``; refuse anything else.

    The store is first renamed to a hidden sibling, so a kill during the deletion
    leaves nothing half-deleted at ``path`` (the sibling is swept by the next run).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_replaceable(path, kinds, option)
    trash = _sibling(path, _TRASH)
    os.rename(path, trash)
    fault_point("after-trash")
    shutil.rmtree(trash)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, kinds: tuple[str, ...]) -> Iterator[None]:
    """Replace the matseg output ``path`` (of one of ``kinds``) by what the block writes there:
    the earlier one is renamed to a hidden sibling first, put back if the block fails or is
    interrupted (what the block wrote removed), and deleted when it ends well. A kill leaves
    the sibling, which the next run's :func:`sweep_siblings` removes."""
    path = Path(path)
    if not os.path.lexists(path):
        yield
        return
    check_replaceable(path, kinds)
    sweep_siblings(path)
    earlier = _sibling(path, _TRASH)
    os.rename(path, earlier)
    try:
        yield
    except BaseException:
        if os.path.lexists(path):
            shutil.rmtree(path)
        os.rename(earlier, path)
        raise
    shutil.rmtree(earlier)


def _sibling(path: Path, what: str) -> Path:
    return path.parent / f".{path.name}.{what}-{socket.gethostname()}-{os.getpid()}"


def _dead(owner: str) -> bool:
    """Whether the process ``host-pid`` (from a sibling's name) is gone from this host."""
    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's: only a run holding the output's lock may judge it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_siblings(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden siblings of ``path`` left by runs that died on this host
    (a store being built, a store being deleted); return what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for prefix in (_BUILDING, _TRASH):
        start = f".{path.name}.{prefix}-"
        for sibling in path.parent.glob(f"{start}*"):
            if _dead(sibling.name[len(start) :]):
                shutil.rmtree(sibling, ignore_errors=True)
                removed.append(sibling)
    return removed


@contextlib.contextmanager
def building(path: str | os.PathLike) -> Iterator[Path]:
    """Build a new store under a hidden sibling name; rename it to ``path`` when the block ends.

    Yields the sibling's path. On an error the sibling is removed and ``path`` stays
    as it was; a kill leaves only the sibling, which :func:`sweep_siblings` removes.

    Raises
    ------
    MatsegError
        If something appeared at ``path`` meanwhile (another run created it).
    """
    path = Path(path)
    sweep_siblings(path)
    temp = _sibling(path, _BUILDING)
    if os.path.lexists(temp):
        shutil.rmtree(temp)
    try:
        yield temp
        fault_point("after-create")
        try:
            os.rename(temp, path)  # atomic on one file system; refuses a non-empty folder at path
        except OSError as err:
            if os.path.lexists(path):
                raise MatsegError(f"output {path} was created by another run meanwhile; run again") from None
            raise err
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fault_point("after-rename")


@contextlib.contextmanager
def rebuilding(path: str | os.PathLike, keep: bool = True) -> Iterator[Path]:
    """Change a folder all-or-nothing: yield a copy of it under a hidden sibling name (an empty
    name if ``path`` is new or empty, or with ``keep=False``: a folder made anew) and put the
    copy in its place when the block ends.

    A folder of several files that must agree (a weights folder's nets and manifest) cannot be
    changed file by file: a run stopped halfway would leave some old files and some new ones.
    On an error or an interrupt the copy is removed and ``path`` is as it was; a kill leaves
    only the sibling, which the next run's :func:`sweep_siblings` removes. The old folder is
    renamed aside before the copy takes its place and deleted after, so the swap itself leaves
    the old folder or the new one at ``path``.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))  # change the folder it names, not the link
    if not path.is_dir() or not any(path.iterdir()):
        with building(path) as temp:
            yield temp
        return
    sweep_siblings(path)
    temp, trash = _sibling(path, _BUILDING), _sibling(path, _TRASH)
    if os.path.lexists(temp):
        shutil.rmtree(temp)
    try:
        if keep:
            shutil.copytree(path, temp, symlinks=True)
        else:
            temp.mkdir()
        yield temp
        os.rename(path, trash)
        try:
            os.rename(temp, path)
        except BaseException:
            os.rename(trash, path)
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    temp = path.parent / f".{path.name}.{_BUILDING}-{socket.gethostname()}-{os.getpid()}"
    with open(temp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
