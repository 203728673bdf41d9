"""What a run did, in one place: the report saved beside its output (``matseg-report.json``
and the store's attributes), and the score against ground truth."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matseg._version import __version__
from matseg.io.read import open_volume
from matseg.io.region import as_pairs
from matseg.metrics import confusion_matrix, match_truth, summarize, truth_as_phases, volume_fractions
from matseg.monitor import Monitor
from matseg.normalize import PERCENTILES, Normalization
from matseg.stitch import BAND
from matseg.tiling import CHUNKS_AT_ONCE, slabs

if TYPE_CHECKING:  # the report's name is read without the models (matseg.review)
    from matseg.pipeline.job import Job

REPORT_NAME = "matseg-report.json"


def run_report(job: Job, norm: Normalization, plan, stats, counts, command) -> dict:
    """What a run did, the same whether it ran at one go or was resumed (timings and ``run`` aside)."""
    from matseg.selector.plan import all_expensive_gflops

    grid = job.grid
    voxels = int(np.prod(job.volume.shape))
    report = {
        "command": command or "matseg.segment",
        "input": {
            "source": str(job.input),
            "kind": job.volume.kind,
            "shape": list(job.volume.shape),
            "dtype": str(job.volume.data.dtype),
            "voxel_size": job.volume.voxel_size.describe() if job.volume.voxel_size else None,
            **({"region": as_pairs(job.region)} if job.region else {}),
        },
        "output": str(job.output),
        "model": job.model,
        # the folder the models came from (None: the bundled weights): fine-tuning starts there
        "weights": str(Path(job.settings.weights).absolute()) if job.settings.weights else None,
        "models": [m.describe() for m in job.models.values()],
        "tile": list(job.tile),
        "halo": job.halo,
        "grid": list(grid.grid_shape),
        "normalization": {"percentiles": list(PERCENTILES), **norm.as_dict()},
        "candidates": list(job.names),
        "tiles": grid.n_tiles,
        "voxels": voxels,
        "gflops": stats["gflops"],
        "gflops_per_megavoxel": stats["gflops"] / (voxels / 1e6),
        "phases": list(job.phases),
        "volume_fractions": volume_fractions(counts, job.phases),
        "versions": versions(),
    }
    if plan is None:
        report["decisions"] = {job.model: grid.n_tiles}
        return report
    report["decisions"] = {n: int((plan["choice"] == k).sum()) for k, n in enumerate(job.names)}
    report["selector"] = {
        **job.selector.describe(),
        "lambda": plan["lambda"],
        "budget_gflops": job.settings.budget_gflops,
        "max_expensive_fraction": job.settings.max_expensive_fraction,
        "expected_gain": float(plan["gain"][np.arange(grid.n_tiles), plan["choice"]].mean()),
        "band": BAND,
    }
    report["gflops_breakdown"] = stats["breakdown"]
    # (the keys keep their name; "cost_reference" says which candidate ran everywhere)
    report["cost_reference"], report["all_expensive_gflops"] = all_expensive_gflops(
        grid, job.context, list(job.names)
    )
    report["gflops_fraction_of_all_expensive"] = stats["gflops"] / report["all_expensive_gflops"]
    return report


def computed_text(computed: dict[str, int]) -> str:
    """The tiles a run computed, stage by stage, in words ("16 tiles" for one model on every
    tile; "0 cheap-pass tiles, 7 audited-cell tiles, ..." for a selector run)."""
    names = {
        "tiles": "",
        "cheap": "cheap-pass ",
        "candidates": "candidate ",
        "audited cells": "audited-cell ",
    }
    return ", ".join(
        f"{n} {names.get(stage, stage + ' ')}tile{'' if n == 1 else 's'}" for stage, n in computed.items()
    )


def score_labels(
    pred,
    truth: str | os.PathLike,
    phases: Sequence[str],
    monitor: Monitor | None = None,
    truth_phases: Sequence[str] | None = None,
    region: tuple[slice, ...] | None = None,
) -> dict:
    """mIoU and per-phase IoU of ``pred`` against ``truth`` (cut to ``region``, if given), overall and, for a
    ``matseg sample`` store, on its hard and clean regions.

    Parameters
    ----------
    pred : Zarr or dask array
        Phase labels.
    truth : str or path
        Ground-truth labels (255 = unlabelled), or a ``matseg sample`` store. Where it names
        its phases (or ``truth_phases`` names them) they are matched with ``phases`` by name,
        else by label value.
    phases : sequence of str
        Phase names for label values 0, 1, ...
    monitor : Monitor, optional
        Reports the stage ``scoring`` slab by slab.
    truth_phases : sequence of str, optional
        The names of the truth's values 0, 1, ... (``--truth-phases``).
    region : tuple of slices, optional
        The box of the truth ``pred`` covers (``--region``); default the whole.

    Returns
    -------
    dict
        ``miou``, ``iou`` per phase, ``absent_from_truth`` (see docs/metrics.md), ``truth_match``
        (how truth values were matched with ``phases``); ``hard`` and ``clean`` for a sample.
    """
    import dask.array as da

    truth_volume = open_volume(truth, labels=True)
    pred = pred if isinstance(pred, da.Array) else da.from_zarr(pred)
    match = match_truth(truth_volume.phases, phases, str(truth), truth_phases)
    box = region or ()
    truth_data = truth_as_phases(truth_volume.data[box], match).rechunk(pred.chunksize)
    difficulty = _difficulty(truth)
    difficulty = None if difficulty is None else difficulty[box]
    runs = len(slabs(pred.chunks, CHUNKS_AT_ONCE))
    stage = (monitor or Monitor()).stage("scoring", runs * (1 if difficulty is None else 3))
    metrics = summarize(confusion_matrix(pred, truth_data, len(phases), advance=stage.advance), phases)
    if difficulty is not None:
        hard = difficulty.rechunk(pred.chunksize) > 0.5
        for name, mask in (("hard", hard), ("clean", ~hard)):
            cm = confusion_matrix(pred, truth_data, len(phases), mask, advance=stage.advance)
            metrics[name] = summarize(cm, phases)
    metrics["truth_match"] = match
    stage.finish()
    return metrics


def _difficulty(spec: str | os.PathLike):
    path = Path(str(spec))
    if (path / "difficulty").is_dir():
        return open_volume(f"{path}:difficulty").data
    return None


def versions() -> dict:
    """The versions of matseg and the libraries whose numbers a run's result depends on."""
    import dask
    import ome_zarr
    import torch
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
