"""``matseg.segment``: a volume in, an OME-Zarr of phase labels out, tile by tile.

open -> intensity range (one streaming pass) -> tile grid -> per tile: normalise,
segment slice-wise, crop the halo, write whole chunks -> report.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch

from matseg import __version__
from matseg.errors import MatsegError
from matseg.io.read import Volume, open_volume
from matseg.io.write import check_output, create_ome_store, remove_store, write_region
from matseg.metrics import confusion_matrix, summarize, volume_fractions
from matseg.models.weights import Segmenter, load_segmenter, segment_tile
from matseg.tiling import TileGrid, overlapped_tiles, plan_tiles

CANDIDATES = ("cheap", "expensive")
DEFAULT_TILE = (4, 256, 256)
REPORT_NAME = "matseg-report.json"
PERCENTILES = (0.5, 99.5)
_SUBSAMPLE_VOXELS = 1 << 22


@dataclass(frozen=True)
class Normalization:
    """Maps raw intensities to the models' range: (raw - low) / (high - low)."""

    low: float
    high: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        scale = self.high - self.low if self.high > self.low else 1.0
        return (raw.astype(np.float32) - np.float32(self.low)) / np.float32(scale)


def intensity_range(volume: Volume) -> Normalization:
    """Robust intensity range of a volume in one streaming pass over all its chunks.

    The pass also proves every chunk is readable and finite, so bad data is
    refused before any output exists. Percentiles come from a fixed strided
    subsample, so they do not depend on tiling.
    """
    data = volume.data
    steps = [1] * data.ndim
    while np.prod([-(-s // k) for s, k in zip(data.shape, steps)]) > _SUBSAMPLE_VOXELS:
        axis = int(np.argmax([s / k for s, k in zip(data.shape, steps)]))
        steps[axis] *= 2
    subsample = data[tuple(slice(None, None, k) for k in steps)]
    if np.issubdtype(data.dtype, np.floating):
        finite = da.isfinite(data).all()
    else:
        finite = data.max() >= data.min()  # reads every chunk all the same
    try:
        all_finite, sample = dask.compute(finite, subsample)
    except MatsegError:
        raise
    except Exception as err:
        raise MatsegError(f"cannot read {volume.source}: {type(err).__name__}: {err}") from None
    if not all_finite:
        raise MatsegError(f"{volume.source} contains NaN or infinite values; clean or mask them first")
    low, high = np.percentile(sample.astype(np.float64), PERCENTILES)
    return Normalization(float(low), float(high))


def default_tile(ndim: int) -> tuple[int, ...]:
    return DEFAULT_TILE[-ndim:]


def _segment_block(
    block, index, grid: TileGrid, model: Segmenter, norm: Normalization, arrays: dict, candidate: int
) -> dict:
    """Segment one tile with its halo, crop the halo, write its chunks; return its stats."""
    halo = grid.halo_of(index)
    x = norm(block)
    if x.ndim == 2:
        x = x[None]
    started = time.perf_counter()
    probs, uncertainty = segment_tile(model, x)
    seconds = time.perf_counter() - started
    (y0, y1), (x0, x1) = halo[-2:]
    crop = (slice(None), slice(y0, probs.shape[-2] - y1), slice(x0, probs.shape[-1] - x1))
    labels = probs.argmax(axis=1).astype(np.uint8)[crop]
    uncertainty = np.rint(uncertainty[crop] * 255).astype(np.uint8)
    if len(grid.shape) == 2:
        labels, uncertainty = labels[0], uncertainty[0]
    region = grid.region(index)
    write_region(arrays["phases"], region, labels)
    write_region(arrays["uncertainty"], region, uncertainty)
    write_region(arrays["decisions"], region, np.full(labels.shape, candidate, np.uint8))
    return {
        "index": list(index),
        "candidate": candidate,
        "gflops": model.gflops(x.shape),
        "model_seconds": seconds,
        "counts": np.bincount(labels.ravel(), minlength=len(model.phases)),
    }


def _configure_threads(workers: int) -> None:
    # dask threads x torch threads should not exceed the cores we have.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def segment(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str = "expensive",
    weights: str | os.PathLike | None = None,
    tile: Sequence[int] | None = None,
    halo: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    truth: str | os.PathLike | None = None,
    progress: bool = False,
    command: str | None = None,
) -> dict:
    """Segment a volume into phases and write an OME-Zarr of labels, decisions and uncertainty.

    Parameters
    ----------
    input : str or path
        Anything :func:`matseg.open_volume` reads (Zarr, OME-Zarr, ``file.h5:/dataset``, TIFF).
    output : str or path
        OME-Zarr store to create: ``labels/phases`` (uint8 phase labels),
        ``labels/decisions`` (candidate per tile), uncertainty as the image.
    model : {"cheap", "expensive"}
        The segmenter to run on every tile.
    weights : path, optional
        A folder written by ``matseg train``; default: the bundled weights.
    tile : sequence of int, optional
        Tile size per axis (default 4 x 256 x 256, in-plane multiples of the stride).
    halo : int, optional
        In-plane halo; default and minimum: the model's receptive radius.
    overwrite : bool
        Replace an existing output.
    workers : int, optional
        Tiles segmented at once (dask threads); default: number of cores.
    truth : str or path, optional
        Ground-truth labels (or a ``matseg sample`` store) to score the result against.
    progress : bool
        Show dask's progress bar on stderr.

    Returns
    -------
    dict
        The report, also saved in the output (``matseg-report.json`` and attributes).
    """
    if model not in CANDIDATES:
        raise MatsegError(f"unknown model '{model}'; choose from {', '.join(CANDIDATES)}")
    started = time.perf_counter()
    volume = open_volume(input)
    out = check_output(output, overwrite, inputs=[str(input)])
    segmenter = load_segmenter(model, weights)
    truth_volume = open_volume(truth, labels=True) if truth is not None else None
    if truth_volume is not None and truth_volume.shape != volume.shape:
        raise MatsegError(f"truth {truth} has shape {truth_volume.shape}; the input has {volume.shape}")
    tile = tuple(tile) if tile else default_tile(volume.ndim)
    if halo is None:
        halo = segmenter.halo
    elif halo < segmenter.halo:
        raise MatsegError(
            f"halo {halo} is smaller than the {model} model's receptive radius; use at least {segmenter.halo}"
        )
    grid = plan_tiles(volume.shape, tile, halo, segmenter.stride)
    norm = intensity_range(volume)

    workers = int(workers or os.cpu_count() or 1)
    _configure_threads(workers)
    if out.exists():
        remove_store(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    phases = segmenter.phases
    root = create_ome_store(
        out,
        volume.shape,
        grid.write_chunks,
        image=("uncertainty", "uint8"),
        labels={"phases": phases, "decisions": CANDIDATES},
        attrs={"status": "running", "version": __version__},
    )
    arrays = {
        "uncertainty": root["0"],
        "phases": root["labels/phases/0"],
        "decisions": root["labels/decisions/0"],
    }
    blocks = overlapped_tiles(volume.data, grid).to_delayed()
    candidate = CANDIDATES.index(model)
    tasks = [
        dask.delayed(_segment_block)(
            blocks[idx],
            idx,
            grid,
            segmenter,
            norm,
            arrays,
            candidate,
            dask_key_name=f"matseg-tile-{'-'.join(map(str, idx))}",
        )
        for idx in grid.indices()
    ]
    compute_started = time.perf_counter()
    try:
        with _progress(progress):
            results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    except BaseException:
        remove_store(out)  # nothing half-written is left behind
        raise
    compute_seconds = time.perf_counter() - compute_started

    counts = np.sum([r["counts"] for r in results], axis=0)
    voxels = int(np.prod(volume.shape))
    gflops = float(sum(r["gflops"] for r in results))
    report = {
        "command": command or "matseg.segment",
        "input": {
            "source": str(input),
            "kind": volume.kind,
            "shape": list(volume.shape),
            "dtype": str(volume.data.dtype),
        },
        "output": str(output),
        "models": [segmenter.describe()],
        "tile": list(tile),
        "halo": halo,
        "grid": list(grid.grid_shape),
        "normalization": {"percentiles": list(PERCENTILES), "low": norm.low, "high": norm.high},
        "decisions": {model: grid.n_tiles},
        "tiles": grid.n_tiles,
        "voxels": voxels,
        "gflops": gflops,
        "gflops_per_megavoxel": gflops / (voxels / 1e6),
        "timings": {
            "total_s": None,
            "segment_s": compute_seconds,
            "model_s": float(sum(r["model_seconds"] for r in results)),
        },
        "workers": workers,
        "phases": list(phases),
        "volume_fractions": volume_fractions(counts, phases),
        "versions": _versions(),
    }
    if truth_volume is not None:
        report["truth"] = str(truth)
        report["metrics"] = evaluate(root["labels/phases/0"], truth, phases)
    total = time.perf_counter() - started
    report["timings"]["total_s"] = total
    report["voxels_per_s"] = voxels / compute_seconds
    root.attrs["matseg"] = {**report, "status": "complete"}
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate(pred, truth: str | os.PathLike, phases: Sequence[str]) -> dict:
    """mIoU and per-phase IoU of ``pred`` against ``truth``, overall and, for a
    ``matseg sample`` store, on its hard and clean regions."""
    truth_volume = open_volume(truth, labels=True)
    pred = pred if isinstance(pred, da.Array) else da.from_zarr(pred)
    truth_data = truth_volume.data.rechunk(pred.chunksize)
    metrics = summarize(confusion_matrix(pred, truth_data, len(phases)), phases)
    difficulty = _difficulty(truth)
    if difficulty is not None:
        hard = difficulty.rechunk(pred.chunksize) > 0.5
        for name, mask in (("hard", hard), ("clean", ~hard)):
            metrics[name] = summarize(confusion_matrix(pred, truth_data, len(phases), mask), phases)
    return metrics


def _difficulty(spec: str | os.PathLike) -> da.Array | None:
    path = Path(str(spec))
    if (path / "difficulty").is_dir():
        return open_volume(f"{path}:difficulty").data
    return None


def _progress(enabled: bool):
    from contextlib import nullcontext

    from dask.diagnostics import ProgressBar

    return ProgressBar(out=sys.stderr, minimum=1.0) if enabled else nullcontext()


def _versions() -> dict:
    import ome_zarr
    import zarr

    return {
        "matseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "ome_zarr": getattr(ome_zarr, "__version__", "?"),
    }
