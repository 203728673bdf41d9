"""Open microscopy volumes lazily and read-only: Zarr v2/v3, OME-Zarr, HDF5, TIFF.

Every reader returns a :class:`Volume` whose ``data`` is a dask array; nothing is
loaded until a tile asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.storage import LocalStore

from matseg.errors import MatsegError
from matseg.io import hdf5, ome, scale, sequence
from matseg.io.chunks import check_chunks
from matseg.io.scale import VoxelSize

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@dataclass
class Volume:
    """A lazily opened 2-D (Y, X) or 3-D (Z, Y, X) volume."""

    data: da.Array
    source: str
    kind: str
    phases: tuple[str, ...] | None = None
    handle: Any = field(default=None, repr=False)
    voxel_size: VoxelSize | None = None  # from the file's own metadata, if it records one
    # where its first voxel lies (an OME-Zarr translation), in voxel_size's unit; None: at 0
    offset: tuple[float, ...] | None = None

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)


def split_spec(spec: str | os.PathLike) -> tuple[Path, str]:
    """Split ``file.h5:/dataset`` or ``store.zarr:/path`` into (path, inner path)."""
    text = os.fspath(spec)
    if ":" in text and not Path(text).exists():
        outer, inner = text.rsplit(":", 1)
        if outer and Path(outer).exists():
            return Path(outer), inner.strip("/")
    return Path(text), ""


def canonical_source(spec: str | os.PathLike) -> str:
    """``spec`` with its file part made absolute and resolved: the same input, however it was named."""
    path, inner = split_spec(spec)
    return str(path.resolve()) + (f":{inner}" if inner else "")


def computed(volume: Volume, *arrays) -> tuple:
    """``dask.compute(*arrays)`` of arrays read from ``volume``; a read that fails (a corrupt
    chunk: zarr's codecs raise their own kinds) is one line naming the volume."""
    import dask

    try:
        return dask.compute(*arrays)
    except MatsegError:
        raise
    except Exception as err:
        raise MatsegError(f"cannot read {volume.source}: {type(err).__name__}: {err}") from None


FINGERPRINT_BLOCKS = 8  # small blocks whose values stand for a volume's contents


def fingerprint(volume: Volume) -> str:
    """A short hash of what ``volume`` holds now, so that a run on it is not taken for a run on
    what it held before (a file written again under the same name).

    It covers the file's size and modification time (a TIFF or HDF5 file: any change shows; a
    folder of TIFF slices: each file's name, size and time)
    and the values of a few small blocks, each inside one chunk, at positions drawn from a fixed
    seed (any store: a Zarr array written again in place changes them; a change confined to
    chunks the blocks miss does not show). A few chunk reads, however large the volume.
    """
    digest = hashlib.sha256()
    path = split_spec(volume.source)[0]
    if path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif volume.kind == "tiff-folder":  # each slice's name, size and time
        for file in sequence.tiff_files(path) or ():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    data = volume.data
    chunks = [c[0] for c in data.chunks]  # the first chunk's size along each axis
    rng = np.random.default_rng(0)
    for _ in range(FINGERPRINT_BLOCKS):
        starts = [int(rng.integers(0, n)) // c * c for n, c in zip(data.shape, chunks)]
        block = tuple(slice(a, min(a + 16, a + c, n)) for a, c, n in zip(starts, chunks, data.shape))
        (values,) = computed(volume, data[block])
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def open_volume(
    spec: str | os.PathLike,
    labels: bool = False,
    label_values: bool | None = None,
    ranks: tuple[int, ...] = (2, 3),
    command: str = "matseg segments",
) -> Volume:
    """Open an image (or, with ``labels=True``, a label) volume lazily and read-only.

    Parameters
    ----------
    spec : str or path
        ``store.zarr`` (Zarr v2/v3 array, group with one array, or OME-Zarr image:
        level 0), ``store.zarr:/path/in/group`` (a level of an OME-Zarr image, e.g. ``:/s1``,
        is read as that image at that level, with its scale), ``file.h5:/dataset``, ``stack.tif``
        or a folder of TIFF files, one slice each (``slices/``: stacked in natural order).
    labels : bool
        When ``spec`` is an OME-Zarr image with a ``labels`` group, open its label
        image (``truth`` if present, else the first) instead of the image.
    label_values : bool, optional
        The array read holds labels, whose missing Zarr chunks are their background (zarr
        does not write chunks equal to the fill value), so they are not refused as missing
        (default: ``labels``). True for a plain label array named as such (``measure --labels``).
    ranks, command : tuple of int, str
        The numbers of axes accepted, and who needs them, for the message (``matseg measure
        needs`` 3-D volumes).

    Returns
    -------
    Volume
        The dask-backed volume, checked for rank (2 or 3), dtype and size.

    Raises
    ------
    MatsegError
        On a missing path, an unreadable or corrupt store, or an unusable array.
    """
    if not isinstance(spec, str | os.PathLike):
        raise MatsegError(f"a volume is named by a path, e.g. 'scan.zarr' or 'file.h5:/data'; got {spec!r}")
    path, inner = split_spec(spec)
    if not path.exists():
        raise MatsegError(f"input not found: {os.fspath(spec)}")
    if path.is_file() and (path.suffix.lower() in HDF5_SUFFIXES or hdf5.is_hdf5(path)):
        volume = _open_hdf5(path, inner, str(spec))
    elif path.is_file() and path.name.lower().endswith(TIFF_SUFFIXES):
        volume = _open_tiff(path, str(spec))
    elif path.is_dir() and not inner and (files := sequence.tiff_files(path)):
        data, voxel_size = sequence.open_sequence(path, files)
        volume = Volume(data=data, source=str(spec), kind="tiff-folder", voxel_size=voxel_size)
    elif path.is_dir():
        volume = _open_zarr(path, inner, str(spec), labels, labels if label_values is None else label_values)
    else:
        raise MatsegError(
            f"cannot read {os.fspath(spec)}: not a Zarr store, HDF5 file, TIFF or folder of TIFF "
            "slices (use store.zarr, file.h5:/dataset, stack.tif or slices/)"
        )
    check_volume(volume, ranks, command)
    return volume


def open_labels(
    spec: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    remedy: str = "give its labels with --labels",
) -> Volume:
    """``labels`` as a label volume or, without it, the label image of the image store ``spec``
    itself (a Zarr store's ``labels`` group: ``truth`` if present, as ``matseg sample`` writes).
    ``remedy``: what the message tells to do instead (the option that gives labels, if any).

    Raises
    ------
    MatsegError
        Without ``labels``, where ``spec`` holds no label image of its own (a TIFF, an HDF5
        dataset, a bare array): the image would be taken for its labels.
    """
    if labels is not None:
        return open_volume(labels, labels=True)
    path, inner = split_spec(spec)
    if path.is_dir() and (inner or not sequence.tiff_files(path)):  # a folder of slices: images only
        try:
            node = zarr.open(LocalStore(path, read_only=True), mode="r", path=inner or "")
        except Exception:  # missing or corrupt: open_volume says which
            return open_volume(spec, labels=True)
        if isinstance(node, zarr.Group) and "labels" in node:
            return open_volume(spec, labels=True)
    if not path.exists():
        return open_volume(spec, labels=True)  # "input not found"
    raise MatsegError(
        f"{os.fspath(spec)} holds no label image of its own (only a Zarr store with a 'labels' "
        f"group does, as 'matseg sample' writes): {remedy}"
    )


def check_volume(volume: Volume, ranks: tuple[int, ...] = (2, 3), command: str = "matseg segments") -> None:
    """Reject volumes matseg cannot segment (or ``command`` cannot use), naming the bad value."""
    data = volume.data
    if data.ndim not in ranks:
        kinds = " or ".join({2: "2-D (Y, X)", 3: "3-D (Z, Y, X)"}[r] for r in ranks)
        raise MatsegError(
            f"{volume.source} has {data.ndim} dimensions {tuple(data.shape)}; {command} {kinds} volumes"
        )
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        raise MatsegError(f"{volume.source} has dtype {dtype}; matseg needs integer or floating-point voxels")
    if data.size == 0:
        raise MatsegError(f"{volume.source} is empty (shape {tuple(data.shape)})")


def _open_hdf5(path: Path, inner: str, source: str) -> Volume:
    handle, node = hdf5.open_dataset(path, inner)
    chunks = node.chunks or "auto"
    data = da.from_array(node, chunks=chunks, lock=True, asarray=True)
    voxel_size = scale.recorded(scale.from_hdf5_attrs, node.attrs, data.ndim, where=str(path))
    return Volume(data=data, source=source, kind="hdf5", handle=handle, voxel_size=voxel_size)


def _open_tiff(path: Path, source: str) -> Volume:
    """A TIFF, read lazily through one file handle (kept open: slices are read as needed)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise MatsegError(f"cannot read TIFF {path}: {err}") from None
    try:
        # samples (S): colour channels. Interleaved (YXS) they would be read as an X axis of 3
        # or 4: refused. Planar (SYX) is also how tifffile saves a 3- or 4-slice stack by
        # default: read as slices, said.
        axes = [s.axes for s in tif.series]
        if any(a.endswith("S") for a in axes):
            raise MatsegError(
                f"TIFF {path} is a colour image (axes {axes[0]}: S holds its red, green, blue... "
                "samples); matseg reads grey levels: convert it to greyscale first"
            )
        if any(a.startswith("S") for a in axes):
            logger.warning(
                "TIFF %s stores its slices as colour samples (axes %s, as tifffile saves a 3- or "
                "4-slice stack by default): read as slices",
                path,
                axes[0],
            )
        shapes = [(tuple(s.shape), s.dtype) for s in tif.series]
        if len(shapes) > 1:  # pages written one by one: a series each
            data = _stacked_pages(tif, path, shapes)
        else:
            node = zarr.open(tif.aszarr(), mode="r")
            if isinstance(node, zarr.Group):  # pyramidal TIFF: level 0
                node = node[sorted(node.array_keys())[0]]
            data = da.from_zarr(node)
        voxel_size = scale.recorded(scale.from_tiff, tif, data.ndim, where=str(path))
    except BaseException as err:
        tif.close()
        if isinstance(err, MatsegError | KeyboardInterrupt | SystemExit):
            raise
        raise MatsegError(f"cannot read TIFF {path}: {err}") from None
    return Volume(data=data, source=source, kind="tiff", handle=tif, voxel_size=voxel_size)


def _stacked_pages(tif, path: Path, shapes: list) -> da.Array:
    """A TIFF whose slices are image series of their own (as a writer of one page at a time
    leaves them): stacked along Z, lazily, when every series is one 2-D image of one shape."""
    if any(len(shape) != 2 for shape, _ in shapes) or len(set(shapes)) != 1:
        listing = ", ".join(f"{shape} {dtype}" for shape, dtype in shapes[:4])
        raise MatsegError(
            f"TIFF {path} holds {len(shapes)} image series ({listing}{', ...' if len(shapes) > 4 else ''}) "
            "that do not stack into one volume; save the volume as one stack"
        )
    return da.stack([da.from_zarr(zarr.open(series.aszarr(), mode="r")) for series in tif.series])


def _open_zarr(path: Path, inner: str, source: str, labels: bool, label_values: bool) -> Volume:
    try:
        node = zarr.open(LocalStore(path, read_only=True), mode="r", path=inner or "")
    except FileNotFoundError:
        where = f"'{inner}' in {path}" if inner else f"{path}, nor any TIFF slice in it"
        raise MatsegError(f"no Zarr array or group at {where}") from None
    except Exception as err:
        raise MatsegError(f"cannot read Zarr store {path}: corrupt metadata ({err})") from None
    kind, phases, voxel_size, offset, squeeze = "zarr", None, None, None, ()
    image = None  # an OME-Zarr multiscale image: (its group, its multiscales, the level read)
    if isinstance(node, zarr.Group):
        if labels:
            node = ome.label_group(node, source)
        multiscales = ome.ome_attrs(node).get("multiscales")
        if multiscales:
            image = (node, multiscales, 0)
        else:
            arrays = sorted(node.array_keys())
            if len(arrays) != 1:
                listing = ", ".join(arrays) or "none"
                raise MatsegError(
                    f"{source} is a Zarr group with {len(arrays)} arrays ({listing}); "
                    f"name one as {path}:/name"
                )
            node = node[arrays[0]]
    elif inner:  # an array named by its path: it may be one level of a multiscale image
        image = ome.image_of_level(path, inner)
    if image is not None:
        group, multiscales, level = image
        kind = "ome-zarr"
        phases = ome.label_phase_names(group)
        node, squeeze = ome.level_array(group, multiscales, level, source)
        voxel_size, offset = ome.placement(path, group, multiscales, level, node.ndim - len(squeeze))
    if not label_values:  # a label image's missing chunks are its background: zarr skips writing those
        check_chunks(node, source)
    try:
        data = da.from_zarr(node)
    except Exception as err:
        raise MatsegError(f"cannot read Zarr array in {source}: {err}") from None
    if squeeze:
        data = data[tuple(0 if i in squeeze else slice(None) for i in range(data.ndim))]
    if phases is None:
        stored = node.attrs.get("matseg", {}).get("phases")
        phases = tuple(stored) if stored else None
    return Volume(data=data, source=source, kind=kind, phases=phases, voxel_size=voxel_size, offset=offset)
