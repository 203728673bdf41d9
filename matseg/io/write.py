"""Write OME-Zarr (NGFF 0.5, Zarr v3) stores chunk by chunk.

The metadata is written by ome-zarr-py; arrays are created empty with chunks
aligned to matseg's tiles so every tile is written with whole-chunk writes,
in parallel and without holding the volume in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import zarr
from ome_zarr.axes import Axes
from ome_zarr.format import FormatV05
from ome_zarr.writer import add_metadata, write_label_metadata, write_multiscales_metadata
from zarr.codecs import BloscCodec

from matseg.errors import MatsegError
from matseg.io.guard import check_replaceable
from matseg.io.paths import check_distinct
from matseg.io.read import HDF5_SUFFIXES, TIFF_SUFFIXES
from matseg.io.scale import VoxelSize

# Fixed phase colours (RGBA 0-255), so every viewer shows phase i the same way.
PHASE_COLOURS = (
    (40, 40, 60, 255),
    (230, 160, 40, 255),
    (90, 170, 240, 255),
    (200, 60, 60, 255),
    (120, 200, 90, 255),
    (170, 90, 200, 255),
)
# Decision-map colours by candidate name (stored in the output; viewers show what is stored);
# candidates without one take the palette in order.
CANDIDATE_COLOURS = {
    "cheap": (70, 150, 255, 255),
    "medium": (200, 80, 255, 255),
    "expensive": (255, 60, 40, 255),
    "expensive-2x": (255, 170, 0, 255),
    "classical": (80, 220, 120, 255),
}
CANDIDATE_PALETTE = ((255, 255, 80, 255), (80, 255, 255, 255), (255, 120, 200, 255))


def value_colours(values: Sequence[str], candidates: bool = False) -> dict[int, tuple[int, ...]]:
    """Fixed RGBA colours (0-255) of label values: phases by index, candidates by name."""
    if not candidates:
        return {i: PHASE_COLOURS[i % len(PHASE_COLOURS)] for i in range(len(values))}
    others = iter(CANDIDATE_PALETTE * (1 + len(values)))
    return {i: CANDIDATE_COLOURS.get(name) or next(others) for i, name in enumerate(values)}


# Names that promise another format: h5py, tifffile or napari would open the store as one.
FOREIGN_SUFFIXES = {
    **dict.fromkeys(HDF5_SUFFIXES, "HDF5"),
    **dict.fromkeys(TIFF_SUFFIXES, "TIFF"),
    ".n5": "N5",
}


def check_output(
    path: str | os.PathLike,
    overwrite: bool,
    inputs: Sequence = (),
    kinds: tuple[str, ...] = ("segment",),
    writable: bool = True,
) -> Path:
    """Check that ``path`` may be written, before anything is computed or changed.

    Parameters
    ----------
    path : path
        The output.
    overwrite : bool
        Whether an existing output may be replaced (only a matseg output of ``kinds``).
    inputs : sequence
        What the command reads: paths, or (role, path) pairs named in the message.
    kinds : tuple of str
        The kinds of matseg output ``overwrite`` may replace (:data:`matseg.io.guard.KINDS`).
    writable : bool
        Whether to check here that its folder can be written (:func:`check_writable`); a run
        that may find its output finished checks that once it knows it will write.

    Raises
    ------
    MatsegError
        If the output is named as another format (``out.h5``: outputs are Zarr stores),
        overlaps an input, exists without ``overwrite``, is not a matseg output of ``kinds``,
        or its parent folder cannot be written.
    """
    if re.search(r"\.(zarr|h5|hdf5|hdf|n5)/?:", os.fspath(path), re.IGNORECASE):  # store.zarr:/x
        raise MatsegError(
            f"output {os.fspath(path)}: an output is a whole store, not a path inside one; give -o "
            "without ':/inner/path'"
        )
    name = Path(path).name
    suffix = max((s for s in FOREIGN_SUFFIXES if name.lower().endswith(s)), key=len, default=None)
    if suffix:
        raise MatsegError(
            f"output {os.fspath(path)}: matseg writes an OME-Zarr store (a folder), not "
            f"{FOREIGN_SUFFIXES[suffix]}; name it {name[: -len(suffix)]}.zarr"
        )
    check_distinct(path, [s if isinstance(s, tuple) else ("input", s) for s in inputs])
    out = Path(path).absolute()
    if os.path.lexists(out):
        if not overwrite:
            raise MatsegError(f"output {path} exists; pass --overwrite to replace it")
        check_replaceable(out, kinds)
    if writable:
        check_writable(out)
    return out


def check_writable(path: str | os.PathLike) -> None:
    """The folder ``path`` is (or will be) created in can be written."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MatsegError(f"cannot write output {path}: {parent} is not a writable folder")


def run_attrs(path: str | os.PathLike) -> dict:
    """What matseg recorded in a store's root attributes (``status``, provenance); {} if none."""
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs.get("matseg", {}))
    except Exception:  # not a store of ours: the caller treats it as any existing path
        return {}


def axes_for(ndim: int) -> list[str]:
    return ["z", "y", "x"][-ndim:]


# Tiles are written as they finish, so compression sits on the run's critical path: Blosc's
# zstd at level 1 on bit-shuffled bytes writes a tile 2.5x faster than zarr's default (zstd
# level 3) and gives smaller label chunks (measured on 4 x 256 x 256 uint8 tiles).
CODEC = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def _multiscale(
    group: zarr.Group, name: str, shape, chunks, dtype, voxel_size: VoxelSize | None, offset=None
) -> zarr.Array:
    array = group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        compressors=CODEC,
        dimension_names=axes_for(len(shape)),
    )
    axes, transforms = _placement(len(shape), voxel_size, offset)
    datasets = [{"path": "0", "coordinateTransformations": transforms}]
    write_multiscales_metadata(group, datasets=datasets, axes=axes, name=name, fmt=FormatV05())
    return array


def _placement(ndim: int, voxel_size: VoxelSize | None, offset) -> tuple[list, list]:
    """NGFF axes (with units) and coordinate transformations (scale; a translation where
    ``offset``, in physical units, places the first voxel away from the origin) of an image."""
    names = axes_for(ndim)
    units = {n: voxel_size.unit for n in names} if voxel_size is not None and voxel_size.unit else None
    size = list(voxel_size.values) if voxel_size is not None else [1.0] * ndim
    transforms = [{"type": "scale", "scale": size}]
    if offset is not None and any(offset):
        transforms.append({"type": "translation", "translation": [float(o) for o in offset]})
    return Axes(names, units, FormatV05()).to_list(FormatV05()), transforms


def place(root: zarr.Group, voxel_size: VoxelSize | None, offset=None) -> None:
    """Set the voxel size and placement of a store :func:`create_ome_store` made (its image and
    label images), as a run that keeps the store (resumed, or reusing its cheap pass) states
    them anew: a store keeps none that the run now giving its labels does not."""
    groups = [root] + [root["labels"][name] for name in root["labels"].group_keys()]
    for group in groups:
        ome = dict(group.attrs["ome"])
        ndim = group["0"].ndim
        axes, transforms = _placement(ndim, voxel_size.for_ndim(ndim) if voxel_size else None, offset)
        multiscales = [dict(m) for m in ome["multiscales"]]
        multiscales[0]["axes"] = axes
        level = dict(multiscales[0]["datasets"][0], coordinateTransformations=transforms)
        multiscales[0]["datasets"] = [level]
        group.attrs["ome"] = ome | {"multiscales": multiscales}


def create_ome_store(
    path: str | os.PathLike,
    shape: Sequence[int],
    chunks: Sequence[int],
    image: tuple[str, str],
    labels: Mapping[str, Sequence[str]],
    attrs: Mapping | None = None,
    voxel_size: VoxelSize | None = None,
    offset: Sequence[float] | None = None,
) -> zarr.Group:
    """Create an empty OME-Zarr (NGFF 0.5) image with label images, chunked for tiled writes.

    Parameters
    ----------
    path : path
        The store to create (must not exist).
    shape, chunks : sequence of int
        Shape of the volume and of one write (a tile).
    image : (name, dtype)
        The image at the root of the store.
    labels : mapping
        Label image name -> names of its values (``labels/<name>/0``, uint8).
    attrs : mapping, optional
        Stored under the root's ``matseg`` attribute.
    voxel_size : VoxelSize, optional
        Physical size of a voxel (the ``scale`` of every image and label image, and
        the axes' unit); default: one unit-less voxel.
    offset : sequence of float, optional
        Where the volume's first voxel lies (the input's own translation, a ``--region`` box's
        place in it), in physical units: recorded as every image's NGFF translation.
    """
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    if voxel_size is not None:
        voxel_size = voxel_size.for_ndim(len(shape))
    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    _multiscale(root, image[0], shape, chunks, image[1], voxel_size, offset)
    label_root = root.require_group("labels")
    for name, values in labels.items():
        group = label_root.require_group(name)
        _multiscale(group, name, shape, chunks, "uint8", voxel_size, offset)
        colours = [
            {"label-value": i, "rgba": list(rgba)}
            for i, rgba in value_colours(values, candidates=name == "decisions").items()
        ]
        properties = [{"label-value": i, "name": str(v)} for i, v in enumerate(values)]
        # ours first: write_label_metadata then updates the group through its own handle
        group.attrs["matseg"] = (
            {"phases": list(values)} if name != "decisions" else {"candidates": list(values)}
        )
        write_label_metadata(
            label_root,
            name,
            colors=colours,
            properties=properties,
            fmt=fmt,
            source={"image": "../../"},
        )
    # write_label_metadata records the label names but not the labels group's own NGFF
    # version, which NGFF 0.5 requires of every group with "ome" attributes
    add_metadata(label_root, {"version": fmt.version}, fmt=fmt)
    if attrs:
        root.attrs["matseg"] = dict(attrs)
    return root


def for_tile_writes(array: zarr.Array) -> zarr.Array:
    """``array`` set to store every chunk it is given: by default zarr first compares each
    chunk with the fill value (to skip storing it), a tenth of the cost of a tile's write."""
    return array.with_config({"write_empty_chunks": True})
