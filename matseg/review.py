"""Look at a finished segmentation: its arrays, its tiles by uncertainty, its cost.

What a reviewer (the napari plugin, a notebook) needs from a ``matseg segment``
output, read lazily: the phase labels, the decision map and the uncertainty as
dask arrays with their names, the tiles ordered for review, and what the run
would have cost with one candidate on every tile.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from zarr.storage import LocalStore

from matseg.errors import MatsegError
from matseg.io.ome import label_phase_names, ome_attrs
from matseg.io.read import open_volume, split_spec
from matseg.io.scale import VoxelSize
from matseg.pipeline.report import REPORT_NAME
from matseg.tiling import TileGrid, plan_tiles


@dataclass
class Segmentation:
    """A ``matseg segment`` output, opened lazily and read-only.

    ``phases``, ``decisions`` and ``uncertainty`` are dask arrays of the volume's
    shape; ``uncertainty`` is uint8, 0 certain .. 255 uniform.
    """

    path: Path
    phases: da.Array
    decisions: da.Array
    uncertainty: da.Array
    phase_names: tuple[str, ...]
    candidate_names: tuple[str, ...]
    report: dict
    colours: dict[str, dict[int, tuple[int, int, int, int]]] = field(default_factory=dict)
    voxel_size: VoxelSize | None = None  # physical size of a voxel, as the output records it
    offset: tuple[float, ...] | None = None  # where its first voxel lies (the input's, a --region box's)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.phases.shape)

    @property
    def image_source(self) -> str | None:
        """The segmented image, as an absolute spec when it can be found, else as recorded."""
        source = (self.report.get("input") or {}).get("source")
        return resolve_source(source, self.path.parent) if source else None


def resolve_source(source: str, base: Path) -> str:
    """``source`` as recorded (maybe relative to the run's working folder), made absolute if found."""
    for root in (Path.cwd(), Path(base)):
        path, inner = split_spec(root / str(source))
        if path.exists():
            return f"{path.absolute()}:{inner}" if inner else str(path.absolute())
    return str(source)


def store_kind(path: str | os.PathLike) -> str | None:
    """What matseg wrote at ``path``: ``"segmentation"``, ``"corrections"``, or None (anything else).

    Looks at the root attributes only; opening the store checks the rest.
    """
    try:
        attrs = zarr.open_group(LocalStore(Path(path), read_only=True), mode="r").attrs
    except Exception:  # not a Zarr group: an image file, an array, nothing
        return None
    if "matseg-corrections" in attrs:
        return "corrections"
    labels = Path(path) / "labels"
    if "matseg" in attrs and (labels / "phases").is_dir() and (labels / "decisions").is_dir():
        return "segmentation"
    return None


def open_segmentation(path: str | os.PathLike) -> Segmentation:
    """Open a ``matseg segment`` output lazily and read-only.

    Parameters
    ----------
    path : str or path
        The OME-Zarr store written by :func:`matseg.segment`.

    Returns
    -------
    Segmentation
        Labels, decisions and uncertainty as dask arrays, with the phase and
        candidate names stored in the label metadata and the run's report.

    Raises
    ------
    MatsegError
        If ``path`` is not a finished matseg output.
    """
    path = Path(path)
    try:
        root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        report = dict(root.attrs.get("matseg") or {})
        labels = root["labels"]
        arrays = {
            "phases": labels["phases"]["0"],
            "decisions": labels["decisions"]["0"],
            "uncertainty": root["0"],
        }
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise MatsegError(
            f"{path} is not a matseg segmentation output ({type(err).__name__}: {err})"
        ) from None
    except Exception as err:  # zarr raises many types for stores that are not ours
        raise MatsegError(f"cannot read {path} as a matseg output: {err}") from None
    if not report:
        raise MatsegError(f"{path} has no 'matseg' report attribute; it was not written by matseg segment")
    if report.get("status") not in (None, "complete"):
        raise MatsegError(
            f"{path} is an unfinished matseg run (status '{report.get('status')}'); segment it again"
        )
    phase_names = label_phase_names(labels["phases"]) or tuple(report.get("phases") or ())
    candidate_names = label_phase_names(labels["decisions"]) or ()
    colours = {name: _label_colours(labels[name]) for name in ("phases", "decisions")}
    if (path / REPORT_NAME).is_file() and "gflops" not in report:
        report = json.loads((path / REPORT_NAME).read_text())
    return Segmentation(
        path=path,
        phases=da.from_zarr(arrays["phases"]),
        decisions=da.from_zarr(arrays["decisions"]),
        uncertainty=da.from_zarr(arrays["uncertainty"]),
        phase_names=tuple(phase_names),
        candidate_names=tuple(candidate_names),
        report=report,
        colours=colours,
        **_placement(path),
    )


def _placement(path: Path) -> dict:
    """The output's voxel size and offset (its NGFF scale and translation)."""
    labels = open_volume(f"{path}:labels/phases", labels=False)
    return {"voxel_size": labels.voxel_size, "offset": labels.offset}


def _label_colours(group: zarr.Group) -> dict[int, tuple[int, int, int, int]]:
    """NGFF ``image-label`` colours: label value -> RGBA (0-255)."""
    colours = ome_attrs(group).get("image-label", {}).get("colors") or []
    return {int(c["label-value"]): tuple(int(v) for v in c["rgba"]) for c in colours if "rgba" in c}


@dataclass(frozen=True)
class ReviewTile:
    """One tile of the run's grid: its index, the voxels it owns and its mean uncertainty (0..1)."""

    index: tuple[int, ...]
    region: tuple[slice, ...]
    mean_uncertainty: float

    @property
    def centre(self) -> tuple[float, ...]:
        return tuple((s.start + s.stop - 1) / 2 for s in self.region)


def review_queue(segmentation: Segmentation) -> list[ReviewTile]:
    """The run's tiles, most uncertain first: where a reviewer should look.

    The mean uncertainty of each tile is computed by dask, one tile at a time,
    so the volume is never loaded whole.

    Parameters
    ----------
    segmentation : Segmentation
        From :func:`open_segmentation`.

    Returns
    -------
    list of ReviewTile
        Sorted by decreasing mean uncertainty (ties: grid order).
    """
    shape = segmentation.shape
    grid = tile_grid(segmentation)
    means = (
        segmentation.uncertainty.rechunk(grid.chunks)
        .map_blocks(_block_mean, chunks=(1,) * len(shape), dtype=np.float64)
        .compute()
    )
    tiles = [ReviewTile(tuple(idx), grid.region(idx), float(means[idx]) / 255.0) for idx in grid.indices()]
    return sorted(tiles, key=lambda t: -t.mean_uncertainty)


def tile_grid(segmentation: Segmentation) -> TileGrid:
    """The tile grid the run used (from the tile size and halo in its report)."""
    report = segmentation.report
    shape = segmentation.shape
    # The grid depends on shape, tile and halo only; stride 1 skips the models' stride check.
    return plan_tiles(shape, report.get("tile") or shape, int(report.get("halo") or 0), stride=1)


def _block_mean(block: np.ndarray) -> np.ndarray:
    return np.full((1,) * block.ndim, block.mean(dtype=np.float64))


def gflops_all(report: dict, candidate: str, weights: str | os.PathLike | None = None) -> float:
    """GFLOPs the run's tile grid would have cost with ``candidate`` on every tile.

    The same count :func:`matseg.segment` reports (forward passes on each tile
    with the candidate's own halo; in-plane tiles smaller than that halo grow
    to it), so ``report["gflops"] / gflops_all(report,
    "expensive")`` is the fraction of an all-expensive run that was spent.

    Parameters
    ----------
    report : dict
        A segmentation report (``Segmentation.report``).
    candidate : str
        Segmenter name, e.g. ``"expensive"``.
    weights : path, optional
        Weights folder holding ``candidate``; default: the bundled weights.
    """
    from matseg.models.store import load_segmenter

    model = load_segmenter(candidate, weights)
    shape = tuple(report["input"]["shape"])
    tile = list(report.get("tile") or shape)
    # a tile smaller than this candidate's halo is grown to it, as running it would need
    least = -(-model.halo // model.stride) * model.stride
    tile[-2:] = [max(t, least) for t in tile[-2:]]
    grid = plan_tiles(shape, tile, model.halo, model.stride)
    total = 0.0
    for index in grid.indices():
        region = grid.region(index)
        halo = grid.halo_of(index)
        sizes = [s.stop - s.start + lo + hi for s, (lo, hi) in zip(region, halo)]
        n = sizes[0] if len(sizes) == 3 else 1
        total += model.gflops((n, sizes[-2], sizes[-1]))
    return total
