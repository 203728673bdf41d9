"""OME-NGFF metadata of a Zarr store, as matseg reads it: which array is the image (a label
image, a named pyramid level), the axes to drop, the voxel size and the phase names.

ome-zarr-py parses the axes and transformations; what it leaves (the level an array is,
the label image to take, ``image-label`` phase names) is read from the attributes here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from matseg.errors import MatsegError
from matseg.io import scale
from matseg.io.scale import VoxelSize


def placement(
    path: Path, group: zarr.Group, multiscales: list, level: int, ndim: int
) -> tuple[VoxelSize | None, tuple | None]:
    """The voxel size of the image's ``level`` and where its first voxel lies (physical units,
    None at the origin), from the axes and transformations ome-zarr-py's reader parses (and the
    multiscale's own transformations, which that reader does not apply)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    # a label image without a "source" image makes the reader warn (its voxel size is its own),
    # and an NGFF 0.4 store makes parse_url warn of a "version mismatch" (it reads 0.4 fine)
    reader_log = logging.getLogger("ome_zarr")
    log_level = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        # absolute: ome-zarr-py takes a relative name that starts like a scheme (s3.zarr) for a URL
        where = path.absolute()
        location = parse_url(str(where / group.path) if group.path else str(where), mode="r")
        node = next(iter(Reader(location)()), None) if location else None
    except Exception as err:  # ome-zarr-py raises ValueError, KeyError... on bad axes
        raise MatsegError(f"cannot read the OME-Zarr metadata of {path}: {err}") from None
    finally:
        reader_log.setLevel(log_level)
    if node is None or not any(isinstance(spec, Multiscales) for spec in node.specs):
        return None, None
    per_dataset = node.metadata.get("coordinateTransformations") or []
    own = per_dataset[level] if level < len(per_dataset) else []
    transforms = [own, multiscales[0].get("coordinateTransformations") or []]
    axes = node.metadata["axes"]
    return scale.from_ome(axes, transforms, ndim), scale.offset_from_ome(axes, transforms, ndim)


def ome_attrs(group: zarr.Group) -> dict:
    """NGFF metadata of a group: under ``ome`` (NGFF 0.5) or at the top (0.4)."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def label_group(group: zarr.Group, source: str) -> zarr.Group:
    if "labels" not in group and "image-label" in ome_attrs(group):
        return group  # an NGFF label image itself (e.g. store.zarr:/labels/truth)
    if "labels" not in group:
        raise MatsegError(f"{source} has no 'labels' group; give the label array itself")
    names = ome_attrs(group["labels"]).get("labels") or sorted(group["labels"].group_keys())
    if not names:
        raise MatsegError(f"{source} has an empty 'labels' group")
    name = "truth" if "truth" in names else names[0]
    return group["labels"][name]


def image_of_level(path: Path, inner: str) -> tuple[zarr.Group, list, int] | None:
    """The multiscale image of which the array at ``inner`` is a level (``store.zarr:/s1``), with
    its multiscales and the level's index; None for an array of no multiscale image."""
    parts = inner.strip("/").split("/")
    for cut in range(len(parts) - 1, -1, -1):  # the nearest group that lists it
        try:
            group = zarr.open_group(LocalStore(path, read_only=True), mode="r", path="/".join(parts[:cut]))
        except Exception:  # not a group of ours to read: the array is read as it is
            continue
        multiscales = ome_attrs(group).get("multiscales") or [{}]
        datasets = [d.get("path") for d in multiscales[0].get("datasets", [])]
        if (level := "/".join(parts[cut:])) in datasets:
            return group, multiscales, datasets.index(level)
    return None


def level_array(group: zarr.Group, multiscales: list, level: int, source: str) -> tuple[zarr.Array, tuple]:
    """The array of the image's ``level`` (0: full resolution) and the axes to drop (time, channel)."""
    meta = multiscales[0]
    path = meta["datasets"][level]["path"]
    if path not in group:
        raise MatsegError(f"{source}: OME-Zarr level {level} array '{path}' is missing")
    array = group[path]
    axes = meta.get("axes") or []
    squeeze = []
    for i, axis in enumerate(axes):
        axis_type = axis.get("type") if isinstance(axis, dict) else None
        if axis_type in ("time", "channel"):
            if array.shape[i] != 1:
                raise MatsegError(
                    f"{source} has {array.shape[i]} entries along its {axis_type} axis; "
                    "matseg segments one single-channel volume at a time"
                )
            squeeze.append(i)
    return array, tuple(squeeze)


def label_phase_names(group: zarr.Group) -> tuple[str, ...] | None:
    """Phase names from NGFF ``image-label`` properties (``label-value`` + ``name``)."""
    props = ome_attrs(group).get("image-label", {}).get("properties") or []
    named = {int(p["label-value"]): str(p["name"]) for p in props if "name" in p}
    if not named:
        return None
    return tuple(named.get(i, f"phase{i}") for i in range(max(named) + 1))
