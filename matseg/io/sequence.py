"""A folder of TIFF files, one slice each, as one volume: how microscopes export FIB-SEM
and tomography stacks (``slice_0001.tif``, ``slice_0002.tif``, ...).

The files are stacked along Z in natural order (``2`` before ``10``), lazily: a slice is
read when a tile needs it (one dask chunk a file).
Every file is checked before the run: one 2-D grey image, all of one shape and type.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from matseg.errors import MatsegError
from matseg.io import scale

SUFFIXES = (".tif", ".tiff")
ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")


def tiff_files(folder: Path) -> list[Path] | None:
    """The TIFF files directly in ``folder``, in natural order; None where ``folder`` is a Zarr
    store or holds no TIFF file."""
    if any((folder / name).exists() for name in ZARR_METADATA):
        return None
    with os.scandir(folder) as entries:  # hidden files ('._s1.tif' of macOS copies) are no slices
        files = [
            Path(e.path)
            for e in entries
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(SUFFIXES)
        ]
    return sorted(files, key=_natural) or None


def _natural(path: Path) -> list:
    """Sort key: runs of digits compared as numbers, the rest as text (case aside); the name
    itself last, so that names equal by this key (z1, z01) keep one order on every file system."""
    parts = re.split(r"(\d+)", path.name)
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(parts)] + [path.name]


def open_sequence(folder: Path, files: list[Path]):
    """The files as a dask array (Z, Y, X), a chunk per slice, after checking every file; and
    the voxel size the first file records (its pixel size; Z from ImageJ's spacing, else Y's)."""
    import dask.array as da
    import tifffile

    first, voxel_size = None, None
    for path in files:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series
                shape, dtype, axes = tuple(series[0].shape), series[0].dtype, series[0].axes
                plane = tuple(series[0].get_shape(True))  # singleton axes (QYX of one slice) dropped
                page = tif.pages.first
                end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
                if first is None:
                    voxel_size = scale.recorded(scale.from_tiff, tif, 3, where=str(path))
        except Exception as err:  # tifffile raises many types for broken files
            raise MatsegError(f"cannot read TIFF {path}: {err}") from None
        if end > (size := os.path.getsize(path)):  # a copy cut short: found now, named, not mid-run
            raise MatsegError(
                f"TIFF {path} is truncated: its image data ends at byte {end:,}, the file at {size:,}"
            )
        if axes.startswith("S"):  # planes stored apart: tifffile writes a 3- or 4-slice stack so too
            raise MatsegError(
                f"{path} holds {shape[0]} planes (axes {axes}, tagged as colour samples): a stack of "
                f"{shape[0]} slices, or a colour image? A folder of TIFFs is read as one 2-D grey slice "
                "per file: give a stack as one TIFF file instead, or convert colour to greyscale"
            )
        if "S" in axes:
            raise MatsegError(
                f"{path} is a colour image (axes {axes}); matseg reads grey levels: convert the "
                "slices to greyscale first"
            )
        if len(series) != 1 or len(plane) != 2:
            what = f"{len(series)} images" if len(series) != 1 else f"an image of shape {shape} (axes {axes})"
            raise MatsegError(
                f"{path} holds {what}; a folder of TIFFs is read as one 2-D grey slice per file: "
                "give a stack as one TIFF file instead"
            )
        if first is None:
            first = (path, shape, dtype, plane)
        elif (shape, dtype) != first[1:3]:
            raise MatsegError(
                f"the slices in {folder} differ: {path.name} is {shape} {dtype}, "
                f"{first[0].name} is {first[1]} {first[2]}; every slice must be alike"
            )
    # a chunk a file, each read on its own: a slice that cannot be decoded is named by its file
    _, _, dtype, plane = first
    files = SliceFiles(tuple(files), plane, dtype)
    return da.from_array(files, chunks=(1, *plane), meta=np.empty((0, 0, 0), dtype)), voxel_size


class SliceFiles:
    """The files as a lazy (Z, Y, X) array that dask reads a chunk at a time: each file is
    decoded when a chunk asks for it, and one that cannot be decoded is named (picklable: it
    goes to a cluster's workers as the file names)."""

    def __init__(self, files: tuple[Path, ...], plane: tuple[int, int], dtype) -> None:
        self.files, self.plane, self.dtype = files, tuple(plane), np.dtype(dtype)
        self.shape, self.ndim = (len(files), *self.plane), 3

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        z, inplane = key[0], key[1:]
        if isinstance(z, int | np.integer):
            return read_slice(self.files[z], self.plane)[inplane]
        picked = self.files[z]
        out = np.empty((len(picked), *self.plane), self.dtype)
        for i, path in enumerate(picked):
            out[i] = read_slice(path, self.plane)
        return out[(slice(None), *inplane)]


def read_slice(path: Path, plane: tuple[int, int]) -> np.ndarray:
    """One file's slice (its singleton axes dropped); a file that cannot be decoded, by name."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].asarray().reshape(plane)
    except Exception as err:  # the codecs raise their own kinds (zlib.error, ValueError, ...)
        raise MatsegError(f"cannot read slice {path}: {type(err).__name__}: {err}") from None
