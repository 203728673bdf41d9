"""napari reader: volumes matseg reads, its segmentation outputs and corrections stores.

Everything is opened lazily (dask), so a volume bigger than memory opens. A
segmentation output becomes four layers: the segmented image (when its source
is found), the uncertainty (inferno heat map), the phase labels in fixed colours
(paintable, see ``_editable``) and the decision map (which candidate ran on each
tile). A corrections store becomes the image and the corrected labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap

import matseg
from matseg.io.write import value_colours
from matseg_napari._editable import EditableLabels
from matseg_napari._layers import layer_source

ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
FILE_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".tif", ".tiff")

MASK_COLOUR = (255, 230, 0, 255)


def napari_get_reader(path: str | Sequence[str]):
    """Return :func:`read_matseg` for paths matseg can open, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(os.fspath(path))
    if target.is_dir() and any((target / marker).exists() for marker in ZARR_MARKERS):
        return read_matseg
    if target.is_file() and target.name.lower().endswith(FILE_SUFFIXES):
        return read_matseg
    return None


def read_matseg(path: str | Sequence[str]) -> list[tuple]:
    """Layer data for a matseg output, a corrections store or any volume matseg reads."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    kind = matseg.store_kind(path)
    if kind == "segmentation":
        return _without_open_image(segmentation_layers(path))
    if kind == "corrections":
        return _without_open_image(corrections_layers(path))
    return volume_layers(path)


def _without_open_image(layers: list[tuple]) -> list[tuple]:
    """``layers`` less the image they were made from when the viewer shows it already: opening
    an output or its corrections next to that image added it a second time (``cathode [1]``).
    A reader is given no viewer: napari's current one is where napari adds what it returns."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return layers
    shown = {
        _source_key(s) for layer in viewer.layers if isinstance(layer, Image) if (s := layer_source(layer))
    }
    return [
        (data, kwargs, kind)
        for data, kwargs, kind in layers
        if kwargs.get("metadata", {}).get("matseg", {}).get("role") != "image"
        or _source_key(kwargs["metadata"]["matseg"]["source"]) not in shown
    ]


def _stem(path: str | os.PathLike) -> str:
    name = Path(os.fspath(path).split(":")[0] if not Path(path).exists() else path).name
    for suffix in (".corrections.zarr", ".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _store_stem(path: str | os.PathLike) -> str:
    """The name of a matseg output or corrections store without its Zarr suffix only: a store is
    Zarr whatever its name, so ``out.h5`` stays ``out.h5`` (as ``_stem`` it opened under the layer
    names of ``out.zarr``)."""
    name = Path(path).name
    for suffix in (".corrections.zarr", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def label_colormap(colours: dict[int, Sequence[int]]) -> DirectLabelColormap:
    """Fixed colours for label values (RGBA 0-255); values not listed are transparent."""
    color_dict = {int(k): np.asarray(v, dtype=float) / 255.0 for k, v in colours.items()}
    color_dict[None] = np.zeros(4)
    return DirectLabelColormap(color_dict=color_dict)


def phase_colours(names: Sequence[str], stored: dict[int, Sequence[int]] | None = None) -> dict:
    stored = stored or {}
    defaults = value_colours(names)
    return {i: tuple(stored.get(i, defaults[i])) for i in range(len(names))}


def candidate_colours(names: Sequence[str], stored: dict[int, Sequence[int]] | None = None) -> dict:
    """The decision map's colours as the output stores them (matseg's defaults where it has none)."""
    defaults = value_colours(names, candidates=True)
    return {i: tuple((stored or {}).get(i, defaults[i])) for i in range(len(names))}


def physical_scale(voxel_size, offset=None) -> dict:
    """napari's ``scale`` and ``units`` of a layer, from a :class:`matseg.io.scale.VoxelSize`, and its
    ``translate`` where ``offset`` (physical units: an OME-Zarr translation, a ``--region`` box's
    place in its image) puts its first voxel away from the origin."""
    scale = {} if voxel_size is None else {"scale": list(voxel_size.values)}
    if voxel_size is not None and voxel_size.unit:
        scale["units"] = voxel_size.unit
    if offset:
        scale["translate"] = list(offset)
    return scale


def image_layer(source: str, name: str | None = None) -> tuple:
    """The segmented image, lazily, as an Image layer, at its physical scale if it records one."""
    volume = matseg.open_volume(source)
    meta = {"matseg": {"role": "image", "source": str(source)}}
    kwargs = {
        "name": name or _stem(source),
        "metadata": meta,
        **physical_scale(volume.voxel_size, volume.offset),
    }
    return (volume.data, kwargs, "image")


def phases_layer(
    labels, names: Sequence[str], colours: dict, name: str, meta: dict, scale: dict | None = None
) -> tuple:
    """Paintable phase labels with fixed colours and the phase names as features."""
    kwargs = {
        **(scale or {}),
        "name": name,
        "colormap": label_colormap(colours),
        "features": {"index": list(range(len(names))), "phase": list(names)},
        "opacity": 0.6,
        "metadata": {"matseg": {"role": "phases", "phases": list(names), **meta}},
    }
    return (EditableLabels(labels), kwargs, "labels")


def segmentation_layers(path: str | os.PathLike, include_image: bool = True) -> list[tuple]:
    """Layers of a ``matseg segment`` output: image, uncertainty, phases, decisions."""
    segmentation = matseg.open_segmentation(path)
    stem = _store_stem(path)
    output = str(Path(path).absolute())
    common = {"output": output, "report": segmentation.report}
    layers = []
    scale = physical_scale(segmentation.voxel_size, segmentation.offset)
    source = segmentation.image_source
    if include_image and source and _exists(source):
        layers.append(image_layer(source))
    layers.append(
        (
            segmentation.uncertainty,
            {
                "name": f"{stem} uncertainty",
                "colormap": "inferno",
                "contrast_limits": (0, 255),
                "opacity": 0.5,
                "blending": "translucent",
                "visible": False,
                "metadata": {"matseg": {"role": "uncertainty", **common}},
                **scale,
            },
            "image",
        )
    )
    names = segmentation.phase_names
    layers.append(
        phases_layer(
            segmentation.phases,
            names,
            phase_colours(names, segmentation.colours.get("phases")),
            f"{stem} phases",
            {**common, "corrections": None},
            scale,
        )
    )
    candidates = segmentation.candidate_names
    layers.append(
        (
            segmentation.decisions,
            {
                "name": f"{stem} decisions",
                "colormap": label_colormap(
                    candidate_colours(candidates, segmentation.colours.get("decisions"))
                ),
                "features": {"index": list(range(len(candidates))), "candidate": list(candidates)},
                "opacity": 0.4,
                "visible": False,
                "metadata": {"matseg": {"role": "decisions", "candidates": list(candidates), **common}},
                **scale,
            },
            "labels",
        )
    )
    return layers


def corrections_layers(path: str | os.PathLike) -> list[tuple]:
    """Layers of a corrections store: the image, the corrected phases and the mask of changes."""
    corrections = matseg.load_corrections(path)
    stem = _store_stem(path)
    layers = []
    if corrections.image and _exists(corrections.image):
        layers.append(image_layer(corrections.image))
    names = corrections.phases
    meta = {
        "output": corrections.output,
        "corrections": str(Path(path).absolute()),
        "session": corrections.attrs.get("session"),
        "reviewed": [list(t) for t in corrections.reviewed],
        "weights": corrections.attrs.get("weights"),
        "report": {"models": corrections.attrs.get("models") or []},
    }
    placed = corrections_placement(corrections)
    layers.append(
        phases_layer(
            corrections.labels, names, phase_colours(names), f"{stem} corrected phases", meta, placed
        )
    )
    layers.append(
        (
            corrections.mask,
            {
                "name": f"{stem} corrections mask",
                "colormap": label_colormap({1: MASK_COLOUR}),
                "opacity": 0.5,
                "visible": False,
                "metadata": {"matseg": {"role": "mask", "corrections": meta["corrections"]}},
                **placed,
            },
            "labels",
        )
    )
    return layers


def corrections_placement(corrections) -> dict:
    """The scale and translation of the output the corrections belong to (its voxel size, and
    its place, as a ``--region`` output's): they lie where that output's layers do."""
    if corrections.output and _exists(corrections.output):
        try:
            segmentation = matseg.open_segmentation(corrections.output)
            return physical_scale(segmentation.voxel_size, segmentation.offset)
        except matseg.MatsegError:  # moved or replaced since: voxels, from the origin
            pass
    return {}


def volume_layers(path: str | os.PathLike) -> list[tuple]:
    """Any volume :func:`matseg.open_volume` reads; an OME-Zarr's label image comes along."""
    volume = matseg.open_volume(path)
    layers = [image_layer(_absolute(path))]
    if volume.kind == "ome-zarr" and (Path(os.fspath(path)) / "labels").is_dir():
        try:
            labels = matseg.open_volume(path, labels=True)
        except matseg.MatsegError:
            return layers
        names = labels.phases or ()
        kwargs = {
            "name": f"{_stem(path)} labels",
            "opacity": 0.5,
            "visible": False,
            **physical_scale(labels.voxel_size, labels.offset),
        }
        if names:
            kwargs["colormap"] = label_colormap(phase_colours(names))
            kwargs["features"] = {"index": list(range(len(names))), "phase": list(names)}
        layers.append((labels.data, kwargs, "labels"))
    return layers


def _absolute(spec: str | os.PathLike) -> str:
    """``spec`` with its file part made absolute (``scan.h5:/data`` keeps its dataset)."""
    text = os.fspath(spec)
    if Path(text).exists():
        return str(Path(text).absolute())
    outer, sep, inner = text.rpartition(":")
    return f"{Path(outer).absolute()}:{inner}" if sep and Path(outer).exists() else text


def _source_key(spec: str) -> str:
    """One spelling of a source (absolute, links resolved, a dataset kept): two layers read the
    same file or dataset when their keys are equal."""
    text = _absolute(spec)
    outer, sep, inner = text.rpartition(":")
    if sep and not Path(text).exists() and Path(outer).exists():
        return f"{os.path.realpath(outer)}:{inner}"
    return os.path.realpath(text)


def _exists(spec: str) -> bool:
    path = Path(spec)
    return path.exists() or Path(spec.rsplit(":", 1)[0]).exists()
