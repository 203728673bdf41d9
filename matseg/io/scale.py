"""Physical voxel size: read from the input's own metadata, carried to every output.

Sources, in the order :func:`matseg.open_volume` tries them: the ``scale`` transform of
the OME-Zarr level read (level 0 unless one is named) and axis units; HDF5 dataset
attributes (``element_size_um`` as written by Fiji and ilastik, or ``voxel_size``/
``pixel_size`` with ``unit``/``units``); TIFF's ImageJ ``spacing``/``unit`` and resolution tags, or
OME-TIFF's ``PhysicalSize*``. A user's ``--voxel-size`` overrides them all.
Units are the UDUNITS-2 names OME-NGFF requires (``micrometer``, ``nanometer``...).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from matseg.errors import MatsegError

logger = logging.getLogger(__name__)

# Abbreviations microscopes and file formats write, mapped to OME-NGFF's unit names.
_UNIT_ALIASES = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "\\u00b5m": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "pm": "picometer",
    "a": "angstrom",
    "å": "angstrom",
}
# Sides outside this range (in their unit) make a voxel's volume, or an area per volume, under- or
# overflow float64 (1e-120 cubed is 0); no instrument's voxel is near either end in any length unit.
SMALLEST, LARGEST = 1e-30, 1e30
# metres per unit, for every spatial unit OME-NGFF knows (to compare sizes given in different units)
_PREFIXES = {"yocto": -24, "zepto": -21, "atto": -18, "femto": -15, "pico": -12, "nano": -9, "micro": -6,
             "milli": -3, "centi": -2, "deci": -1, "": 0, "hecto": 2, "kilo": 3, "mega": 6, "giga": 9,
             "tera": 12, "peta": 15, "exa": 18, "zetta": 21, "yotta": 24}  # fmt: skip
_METRES = {f"{p}meter": 10.0**e for p, e in _PREFIXES.items()} | {
    "angstrom": 1e-10,
    "inch": 0.0254,
    "foot": 0.3048,
    "yard": 0.9144,
    "mile": 1609.344,
    "parsec": 3.0856775814913673e16,
}
# TIFF ResolutionUnit: 2 inch, 3 centimetre (1 is "none": no physical size)
_TIFF_RESOLUTION_UNITS = {2: "inch", 3: "centimeter"}


def spatial_units() -> tuple[str, ...]:
    """The spatial unit names OME-NGFF accepts (ome-zarr-py's list)."""
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS

    return tuple(KNOWN_SPATIAL_UNITS)


def unit_name(text: str) -> str:
    """The OME-NGFF name of a unit given as a name or abbreviation (``um`` -> ``micrometer``).

    Raises
    ------
    MatsegError
        If the unit is not a spatial unit OME-NGFF knows.
    """
    key = str(text).strip()
    name = _UNIT_ALIASES.get(key.lower(), key.lower())
    if name not in spatial_units():
        raise MatsegError(
            f"unknown length unit '{text}'; use one of um, nm, mm, angstrom or an OME-NGFF unit name "
            "such as micrometer"
        )
    return name


@dataclass(frozen=True)
class VoxelSize:
    """Size of one voxel along each axis (Z, Y, X or Y, X) in ``unit``."""

    values: tuple[float, ...]
    unit: str | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) and v > 0 for v in self.values):
            raise MatsegError(f"voxel size must be positive and finite, got {list(self.values)}")
        if not all(SMALLEST <= v <= LARGEST for v in self.values):
            raise MatsegError(
                f"voxel size {list(self.values)} is outside {SMALLEST:g} .. {LARGEST:g} per axis: its "
                "volume would under- or overflow; give it in a unit that keeps it in range (e.g. nm, mm)"
            )

    def for_ndim(self, ndim: int) -> VoxelSize:
        """This size for a volume of ``ndim`` axes (a 2-D size drops Z; one value fills every axis)."""
        values = self.values
        if len(values) == 1:
            values = values * ndim
        elif len(values) == 3 and ndim == 2:
            values = values[1:]
        if len(values) != ndim:
            raise MatsegError(
                f"voxel size {list(self.values)} has {len(values)} values; the volume has {ndim} axes"
            )
        return VoxelSize(tuple(values), self.unit)

    def describe(self) -> dict:
        return {"values": list(self.values), "unit": self.unit}


def same_size(a: Sequence[float], a_unit: str | None, b: Sequence[float], b_unit: str | None) -> bool:
    """Whether two voxel sizes are equal, each in its own unit (``50 nm`` is ``0.05 micrometer``);
    a missing or unknown unit is taken as the other's."""
    if len(a) != len(b):
        return False
    factor = 1.0
    if a_unit in _METRES and b_unit in _METRES:
        factor = _METRES[a_unit] / _METRES[b_unit]
    return all(math.isclose(x * factor, y, rel_tol=1e-9) for x, y in zip(a, b))


def parse_voxel_size(text: str, unit: str | None = None) -> VoxelSize:
    """``"10,5,5"`` (or ``"10x5x5"``, ``"5"``), with an optional unit (default micrometer)."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise MatsegError(f"--voxel-size expects numbers like 10,5,5 or 5, got '{text}'") from None
    if not values or len(values) > 3:
        raise MatsegError(f"--voxel-size expects 1 to 3 numbers (Z,Y,X), got '{text}'")
    return VoxelSize(values, unit_name(unit) if unit else "micrometer")


def offset_from_ome(axes: Sequence, transforms: Sequence[Sequence[Mapping]], ndim: int) -> tuple | None:
    """Where the first voxel of one level lies, in physical units (the ``translation`` transforms,
    each scaled by the ``scale`` transforms after it), for the spatial axes; None at the origin."""
    offset = [0.0] * len(axes)
    for steps in transforms:
        for step in steps or []:
            kind, values = step.get("type"), step.get(step.get("type") or "", [])
            if kind in ("scale", "translation") and len(values) == len(axes):
                if kind == "scale":
                    offset = [o * float(v) for o, v in zip(offset, values)]
                else:
                    offset = [o + float(v) for o, v in zip(offset, values)]
    dropped = [isinstance(ax, Mapping) and ax.get("type") in ("time", "channel") for ax in axes]
    spatial = tuple(o for o, drop in zip(offset, dropped) if not drop)
    if len(spatial) != ndim or not all(map(math.isfinite, spatial)) or not any(spatial):
        return None
    return spatial


def from_ome(axes: Sequence, transforms: Sequence[Sequence[Mapping]], ndim: int) -> VoxelSize | None:
    """Voxel size of one level from OME-NGFF ``axes`` and coordinate transformations.

    ``transforms`` holds the dataset's own list and, if any, the multiscale's
    (applied after it); only ``scale`` transforms change a voxel's size. Time and
    channel axes are dropped, as :func:`matseg.open_volume` drops them.
    """
    scale = [1.0] * len(axes)
    for steps in transforms:
        for step in steps or []:
            if step.get("type") == "scale" and len(step.get("scale", [])) == len(axes):
                scale = [a * float(b) for a, b in zip(scale, step["scale"])]
    spatial = [
        (s, ax.get("unit")) if isinstance(ax, Mapping) else (s, None)
        for s, ax in zip(scale, axes)
        if not (isinstance(ax, Mapping) and ax.get("type") in ("time", "channel"))
    ]
    if len(spatial) != ndim:
        return None
    units = {u for _, u in spatial if u}
    if len(units) > 1:
        logger.warning("axes have different units %s; voxel size kept without a unit", sorted(units))
    unit = units.pop() if len(units) == 1 else None
    if all(s == 1.0 for s, _ in spatial) and unit is None:
        return None  # the NGFF default: no physical size was recorded
    return _checked(tuple(s for s, _ in spatial), unit, "OME-Zarr metadata", ndim)


def recorded(read: Callable[..., VoxelSize | None], *args, where: str) -> VoxelSize | None:
    """The voxel size a file records, read by ``read(*args)``; what cannot be read (text where
    numbers belong, a unit OME-NGFF does not know, too few values) is said in a warning and
    ignored: a file's metadata never makes its image unreadable (``--voxel-size`` gives it)."""
    try:
        return read(*args)
    except (MatsegError, ValueError, TypeError) as err:
        logger.warning("ignoring the voxel size recorded in %s (%s); give --voxel-size to set it", where, err)
        return None


def from_hdf5_attrs(attrs: Mapping, ndim: int) -> VoxelSize | None:
    """Voxel size from an HDF5 dataset's attributes (``element_size_um``, ``voxel_size`` + ``unit``).
    (A ``resolution`` is not read: it is as often pixels per unit as a size.)"""
    if "element_size_um" in attrs:
        return _checked(_floats(attrs["element_size_um"], ndim), "micrometer", "element_size_um", ndim)
    for key in ("voxel_size", "pixel_size", "spacing"):
        if key in attrs:
            unit = attrs.get("unit", attrs.get("units"))
            unit = unit.decode() if isinstance(unit, bytes) else unit
            return _checked(_floats(attrs[key], ndim), unit_name(unit) if unit else None, key, ndim)
    return None


def from_tiff(tif, ndim: int) -> VoxelSize | None:
    """Voxel size from a :class:`tifffile.TiffFile`: OME-XML, ImageJ metadata, or resolution tags."""
    ome = _from_ome_xml(tif.ome_metadata, ndim) if tif.is_ome and tif.ome_metadata else None
    if ome is not None:
        return ome
    page = tif.pages.first
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    x_res, y_res = (_rational(tags[name].value) for name in ("XResolution", "YResolution"))
    if not x_res or not y_res:
        return None
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    if unit:
        unit = unit_name(unit)
    else:
        resolution_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        unit = _TIFF_RESOLUTION_UNITS.get(resolution_unit)
        if unit is None or (x_res == 1.0 and y_res == 1.0 and "ResolutionUnit" not in tags):
            return None
    in_plane = (1.0 / y_res, 1.0 / x_res)
    if ndim == 2:
        return _checked(in_plane, unit, "TIFF resolution tags", ndim)
    if "spacing" not in ij:
        logger.warning(
            "the TIFF records its pixel size but not its slice spacing: Z taken as Y (%g %s); give "
            "--voxel-size Z,Y,X if the slices are spaced otherwise",
            in_plane[0],
            unit,
        )
    return _checked((float(ij.get("spacing", in_plane[0])), *in_plane), unit, "TIFF resolution tags", ndim)


def _from_ome_xml(xml: str, ndim: int) -> VoxelSize | None:
    import xml.etree.ElementTree as ElementTree

    pixels = next((e for e in ElementTree.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    axes = ("Z", "Y", "X")[-ndim:]
    values = tuple(float(pixels.attrib.get(f"PhysicalSize{a}", pixels.attrib["PhysicalSizeX"])) for a in axes)
    unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")
    return _checked(values, unit_name(unit), "OME-TIFF metadata", ndim)


def _rational(value) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _floats(value, ndim: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (value if hasattr(value, "__len__") else [value]))
    return values[-ndim:] if len(values) > ndim else values


def _checked(values: tuple[float, ...], unit: str | None, where: str, ndim: int) -> VoxelSize | None:
    if len(values) not in (1, ndim):
        raise MatsegError(f"{where} holds {len(values)} values for {ndim} axes")
    try:
        return VoxelSize(tuple(values), unit)
    except MatsegError as err:
        logger.warning("ignoring the voxel size in %s: %s", where, err)
        return None
