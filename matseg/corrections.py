"""A reviewer's corrections to a segmentation, and the training data they give.

A corrections store sits beside the output it corrects (``phases.zarr`` ->
``phases.corrections.zarr``) and never changes that output. It holds

- ``labels``: the corrected phase labels (uint8, the output's shape and chunks),
- ``mask``: 1 where a voxel differs from the output, else 0,
- attributes under ``matseg-corrections``: who saved it and when, the output and
  image it belongs to, the reviewed tiles, the slices holding corrections.

The training data are the slices holding a correction: in each, the tiles of
the run's grid that hold a correction or were marked reviewed are labelled by
their corrected labels, the rest is unlabelled (255: what nobody looked at is
not taught). :mod:`matseg.finetune` trains on them.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from zarr.storage import LocalStore

from matseg._version import __version__
from matseg.errors import MatsegError
from matseg.io.guard import building, remove_output
from matseg.io.paths import check_distinct
from matseg.io.write import axes_for
from matseg.labelled import UNLABELLED, LabelledSlices, load_labelled
from matseg.review import open_segmentation, tile_grid
from matseg.validate import check_label_values

ATTRIBUTE = "matseg-corrections"
SUFFIX = ".corrections.zarr"


def corrections_path(output: str | os.PathLike) -> Path:
    """Where the corrections of ``output`` are kept: ``phases.zarr`` -> ``phases.corrections.zarr``."""
    out = Path(output)
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(stem + SUFFIX)


def new_session() -> str:
    """An id for one editing session: saves with the same id update their own store."""
    return uuid.uuid4().hex


@dataclass
class Corrections:
    """A corrections store, opened lazily: ``labels`` and ``mask`` are dask arrays."""

    path: Path
    labels: da.Array
    mask: da.Array
    attrs: dict

    @property
    def output(self) -> str:
        return self.attrs["output"]

    @property
    def image(self) -> str | None:
        return self.attrs.get("image")

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("phases") or ())

    @property
    def reviewed(self) -> list[tuple[int, ...]]:
        return [tuple(t) for t in self.attrs.get("reviewed") or []]

    @property
    def corrected_slices(self) -> list[int]:
        """Z indices of the slices holding at least one correction ([0] for a corrected 2-D image)."""
        return list(self.attrs.get("corrected_slices") or [])


def save_corrections(
    output: str | os.PathLike,
    labels,
    *,
    reviewed: Iterable[Sequence[int]] = (),
    session: str | None = None,
    replace: bool = False,
    weights: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
) -> Path:
    """Save corrected labels of a segmentation beside it, with a mask of what changed.

    Parameters
    ----------
    output : str or path
        The ``matseg segment`` output that was corrected; it is never modified.
    labels : array-like
        The corrected phase labels, shape of the output (numpy, dask, zarr, or
        any array that slices like numpy; read one chunk at a time).
    reviewed : iterable of tile indices
        Tiles of the run's grid the reviewer marked as reviewed.
    session : str, optional
        Editing-session id (:func:`new_session`): a store saved by the same
        session is updated in place.
    replace : bool
        Replace a store saved by another session (otherwise refused).
    weights : path, optional
        Weights folder the output was segmented with, recorded as the starting point for
        fine-tuning. Default: the folder the output's report records (``weights``; None
        there: the bundled weights).
    path : path, optional
        Where to save; default :func:`corrections_path` of ``output``.

    Returns
    -------
    Path
        The corrections store.

    Raises
    ------
    MatsegError
        If the labels do not fit the output, or a store from another session exists
        and ``replace`` is False.
    """
    segmentation = open_segmentation(output)
    if weights is None:
        weights = segmentation.report.get("weights")
    target = Path(path) if path is not None else corrections_path(output)
    check_distinct(target, [("output", segmentation.path), ("image", segmentation.image_source)])
    shape = tuple(int(s) for s in np.shape(labels))
    if shape != segmentation.shape:
        raise MatsegError(
            f"corrected labels have shape {shape}; the output {output} has {segmentation.shape}"
        )
    if target.exists() and not replace:
        previous = _stored_attrs(target)
        if session is None or previous.get("session") != session:
            who = f" by {previous.get('user')} at {previous.get('time')}" if previous else ""
            raise MatsegError(
                f"corrections {target} already exist (saved{who}); load them to continue, "
                "or replace them explicitly"
            )
    chunks = segmentation.phases.chunks
    if isinstance(labels, da.Array):
        corrected = labels.rechunk(chunks)
    else:  # numpy, zarr, or a napari layer's array: read one chunk at a time
        corrected = da.from_array(labels, chunks=chunks, asarray=True, name=False)
    # a phase on every voxel, 255 included (a value torch would only refuse when fine-tuning on them)
    n_phases = len(segmentation.phase_names)
    check_label_values(corrected, n_phases, "the corrections", "corrected labels", unlabelled=False)
    corrected = corrected.astype(np.uint8)
    changed = (corrected != segmentation.phases).astype(np.uint8)
    reviewed = _reviewed_tiles(reviewed, tile_grid(segmentation).grid_shape)

    with building(target) as partial:  # renamed into place complete, or not at all
        _write_corrections(partial, target, segmentation, corrected, changed, reviewed, weights, session)
    return target


def _reviewed_tiles(reviewed, grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The reviewed tiles as index tuples, each one of the output's tile grid."""
    tiles = []
    for tile in reviewed:
        try:
            index = tuple(int(i) for i in tile)
        except (TypeError, ValueError):
            index = None
        if index is None or len(index) != len(grid) or not all(0 <= i < n for i, n in zip(index, grid)):
            raise MatsegError(f"reviewed tile {tile!r} is not a tile of the output's grid {grid}")
        tiles.append(index)
    return tiles


def _write_corrections(partial, target, segmentation, corrected, changed, reviewed, weights, session) -> None:
    """The corrections store, written at ``partial``; ``target``, if any, removed at the end."""
    shape = segmentation.shape
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    chunk_shape = segmentation.phases.chunksize
    stored = {
        name: root.create_array(
            name,
            shape=shape,
            chunks=chunk_shape,
            dtype="uint8",
            fill_value=0,
            dimension_names=axes_for(len(shape)),
        )
        for name in ("labels", "mask")
    }
    stored["labels"].attrs["matseg"] = {"phases": list(segmentation.phase_names)}
    da.store([corrected, changed], [stored["labels"], stored["mask"]], lock=False)

    mask = da.from_zarr(stored["mask"])
    per_slice = mask.sum(axis=tuple(range(mask.ndim - 2, mask.ndim)))
    counts = np.atleast_1d(per_slice.compute())
    reviewed = sorted({tuple(int(i) for i in t) for t in reviewed})
    slices = [int(z) for z in np.flatnonzero(counts)]
    root.attrs[ATTRIBUTE] = {
        "user": getpass.getuser(),
        "time": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "output": str(segmentation.path.absolute()),
        "image": segmentation.image_source,
        # the box of the image the output holds (--region), which the labels here cover
        "region": (segmentation.report.get("input") or {}).get("region"),
        "phases": list(segmentation.phase_names),
        "candidates": list(segmentation.candidate_names),
        "models": list(segmentation.report.get("models") or []),
        "weights": str(Path(weights).absolute()) if weights else None,
        "tile": segmentation.report.get("tile"),
        "reviewed": reviewed,
        "corrected_voxels": int(counts.sum()),
        "corrected_slices": slices,
        "labelled": _labelled_regions(mask, segmentation, reviewed, slices),
        "session": session,
        "version": __version__,
    }
    remove_output(target, ("corrections",), option="replacing corrections")


def _labelled_regions(mask: da.Array, segmentation, reviewed, slices) -> list[list[int]]:
    """``[z, y0, y1, x0, x1]`` of the tiles, in corrected slices, holding a correction or reviewed."""
    grid = tile_grid(segmentation)
    reviewed = set(reviewed)
    regions = []
    for z in slices:
        plane = np.asarray(mask[z] if mask.ndim == 3 else mask)
        for index in grid.indices():
            region = grid.region(index)
            if mask.ndim == 3 and not region[0].start <= z < region[0].stop:
                continue
            ys, xs = region[-2:]
            if tuple(index) in reviewed or plane[ys, xs].any():
                regions.append([z, ys.start, ys.stop, xs.start, xs.stop])
    return regions


def _stored_attrs(path: Path) -> dict:
    try:
        return dict(zarr.open_group(LocalStore(path, read_only=True), mode="r").attrs.get(ATTRIBUTE) or {})
    except Exception:  # not a store of ours: replacing it is still refused
        return {}


def load_corrections(path: str | os.PathLike) -> Corrections:
    """Open a corrections store lazily.

    Parameters
    ----------
    path : str or path
        A store written by :func:`save_corrections` (or the napari plugin).

    Returns
    -------
    Corrections

    Raises
    ------
    MatsegError
        If ``path`` is missing or is not a corrections store.
    """
    path = Path(path)
    if not path.exists():
        raise MatsegError(f"corrections store not found: {path}")
    try:
        root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        attrs = dict(root.attrs.get(ATTRIBUTE) or {})
        arrays = (root["labels"], root["mask"]) if attrs else None
    except Exception as err:
        raise MatsegError(f"cannot read {path} as a matseg corrections store: {err}") from None
    if not attrs:
        raise MatsegError(
            f"{path} is not a matseg corrections store (no '{ATTRIBUTE}' attribute); "
            "save corrections from the napari plugin or matseg.corrections.save_corrections"
        )
    return Corrections(path=path, labels=da.from_zarr(arrays[0]), mask=da.from_zarr(arrays[1]), attrs=attrs)


def training_data_from_corrections(corrections: Corrections | str | os.PathLike) -> LabelledSlices:
    """The labelled slices fine-tuning learns from: every slice holding a correction.

    In each such slice, the tiles holding a correction or marked reviewed are
    labelled by their corrected labels (what the reviewer fixed or accepted); the
    rest of the slice is unlabelled (255). Slices without corrections are not used.

    Parameters
    ----------
    corrections : Corrections or path

    Returns
    -------
    LabelledSlices
        Normalised image slices and their corrected labels, in memory.

    Raises
    ------
    MatsegError
        If nothing was corrected or the recorded image cannot be found.
    """
    if not isinstance(corrections, Corrections):
        corrections = load_corrections(corrections)
    slices = corrections.corrected_slices
    if not slices:
        raise MatsegError(f"{corrections.path} holds no corrections (no voxel differs from the output)")
    image = corrections.image
    if not image:
        raise MatsegError(f"{corrections.path} does not record the segmented image; cannot fine-tune")
    try:
        data, _ = load_labelled(image, f"{corrections.path}:labels", slices, corrections.attrs.get("region"))
    except MatsegError as err:
        raise MatsegError(f"image of {corrections.path}: {err}") from None
    regions = corrections.attrs.get("labelled")
    if regions is not None:
        looked_at = np.zeros(data.labels.shape, bool)
        for z, y0, y1, x0, x1 in regions:
            looked_at[slices.index(z), y0:y1, x0:x1] = True
        data.labels[~looked_at] = UNLABELLED
    return data
