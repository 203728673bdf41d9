"""What ``matseg measure`` reads: the phase labels, their uncertainty, the voxel size.

A ``matseg segment`` output gives its phase labels and the cheap pass's
uncertainty; any other integer label volume (``--labels``) gives its labels only.
The voxel size comes from the caller, else from what the store records (read by
:func:`matseg.open_volume`: OME-NGFF scale and units, HDF5 attributes, TIFF
tags), else one voxel per unit, and the report says which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np

from matseg.errors import MatsegError
from matseg.io.read import open_volume, split_spec
from matseg.io.scale import VoxelSize, same_size
from matseg.review import open_segmentation, store_kind

log = logging.getLogger(__name__)


@dataclass
class LabelSource:
    """Phase labels (dask, Z, Y, X) with their names, uncertainty (0..255 or None) and voxel size."""

    labels: da.Array
    phase_names: tuple[str, ...]
    uncertainty: da.Array | None
    voxel_size: tuple[float, float, float]
    unit: str
    voxel_size_from: str
    source: str
    # sha256 of the nets that made a segmentation output (empty: none, --model classical);
    # None for any other label volume
    made_by: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)


def _has_label_images(spec: str) -> bool:
    """Whether ``spec`` is a Zarr group with NGFF label images (a sample's ``truth``)."""
    path, inner = split_spec(spec)
    return path.is_dir() and (path / inner / "labels").is_dir()


def _spec_text(spec: str) -> str:
    """``spec`` as recorded in the report: the file and, if any, its inner path (``p1.zarr:/labels/x``)."""
    path, inner = split_spec(spec)
    return str(path) + (f":/{inner}" if inner else "")


def open_labels(
    spec: str | os.PathLike,
    labels: bool = False,
    voxel_size: tuple[float, ...] | None = None,
    unit: str | None = None,
) -> LabelSource:
    """Open what to measure, lazily and read-only.

    Parameters
    ----------
    spec : str or path
        A ``matseg segment`` output, or (with ``labels=True``) any integer label
        volume ``open_volume`` reads: a Zarr array, an OME-Zarr's label image
        (``truth`` first), ``file.h5:/dataset``, ``stack.tif``.
    labels : bool
        Measure ``spec`` as a plain label volume (no uncertainty).
    voxel_size : (z, y, x) floats, optional
        Used when the store records no scale; overrides a recorded one.
    unit : str, optional
        Unit of ``voxel_size`` (default: the recorded unit, else "voxel").

    Returns
    -------
    LabelSource
    """
    spec = os.fspath(spec)
    if not split_spec(spec)[0].exists():
        raise MatsegError(f"input not found: {spec}")
    is_segmentation = not labels and store_kind(split_spec(spec)[0]) == "segmentation"
    if is_segmentation:
        seg = open_segmentation(spec)
        data, names, uncertainty, stored = seg.phases, seg.phase_names, seg.uncertainty, seg.voxel_size
        made_by = tuple(str(m.get("sha256", "")) for m in (seg.report or {}).get("models") or [])
    elif labels:
        volume = open_volume(
            spec,
            labels=_has_label_images(spec),
            label_values=True,
            ranks=(3,),
            command="matseg measure needs",
        )
        data, names, uncertainty, stored = volume.data, volume.phases, None, volume.voxel_size
        made_by = None
    else:
        raise MatsegError(
            f"{spec} is not a matseg segmentation output; to measure any integer label volume, add --labels"
        )
    if data.ndim != 3:
        raise MatsegError(
            f"{spec} has shape {tuple(data.shape)}; matseg measure needs a 3-D (Z, Y, X) volume"
        )
    if not np.issubdtype(np.dtype(data.dtype), np.integer) and np.dtype(data.dtype).kind != "b":
        what = "floating-point values" if np.dtype(data.dtype).kind in "fc" else "values"
        raise MatsegError(
            f"{spec} holds {what} (dtype {data.dtype}); matseg measure needs integer phase labels "
            f"(0, 1, 2 ... one per phase): convert the volume to an integer type first"
        )
    if np.dtype(data.dtype).kind == "b":
        data = data.astype(np.uint8)
    # the voxel size as matseg's reader finds it (OME-NGFF scale and units, HDF5, TIFF)
    recorded = (stored.for_ndim(3).values, stored.unit) if stored is not None else None
    if voxel_size is not None:
        if len(voxel_size) != 3 or any(not np.isfinite(v) or v <= 0 for v in voxel_size):
            raise MatsegError(f"--voxel-size {voxel_size}: give three positive numbers Z,Y,X")
        VoxelSize(tuple(float(v) for v in voxel_size), unit)  # refuses sizes whose volume under/overflows
        if recorded and not same_size(voxel_size, unit, *recorded):
            log.warning("voxel size %s %s given; the store records %s %s", voxel_size, unit, *recorded)
        size, size_unit, origin = tuple(float(v) for v in voxel_size), unit or "voxel", "option"
    elif recorded:
        size, size_unit, origin = recorded[0], unit or recorded[1] or "voxel", "store"
    else:
        size, size_unit, origin = (1.0, 1.0, 1.0), "voxel", "none"
        log.debug("%s records no voxel size and none was given: lengths are in voxels", spec)
    if len(size) != 3:
        raise MatsegError(f"{spec} records a scale for {len(size)} axes; give --voxel-size Z,Y,X")
    if names is None:
        names = ()
    return LabelSource(
        labels=data,
        phase_names=tuple(names),
        uncertainty=uncertainty,
        voxel_size=tuple(size),
        unit=size_unit,
        voxel_size_from=origin,
        source=_spec_text(spec),
        made_by=made_by,
    )
