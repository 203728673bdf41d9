"""``matseg.segment``: a volume in, an OME-Zarr of phase labels out, tile by tile.

open -> intensity range (one streaming pass) -> tile grid -> stage 1, per tile:
the cheap pass (labels, uncertainty, selector features) -> the selector picks a
candidate per tile (by λ or under a budget) -> stage 2, only where needed: the
chosen candidates, blended across borders with neighbours that ran another one
-> whole chunks written -> report. With ``model`` set to one candidate, every
tile runs that candidate and nothing is blended (exactly whole-volume inference).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
import zarr

from matseg import __version__
from matseg.cluster import CHEAP, COSTLY, Backend, ClusterSpec, SharedResults, backend
from matseg.errors import MatsegError
from matseg.io.chunks import DECLARATION
from matseg.io.guard import building, check_replaceable, remove_output, replace_file, sweep_siblings
from matseg.io.lock import OutputLock
from matseg.io.paths import check_distinct
from matseg.io.progress import TileRecords, WriteBehind
from matseg.io.read import Volume, canonical_source, open_volume
from matseg.io.write import (
    check_output,
    create_ome_store,
    for_tile_writes,
    run_attrs,
)
from matseg.metrics import confusion_matrix, summarize, volume_fractions
from matseg.models.weights import (
    inference_device,
    load_segmenter,
    normalized_entropy,
    phase_counts,
    phase_labels,
)
from matseg.selector.candidates import CANDIDATES, Candidate, Context, multiotsu_thresholds
from matseg.selector.features import FEATURE_NAMES
from matseg.selector.plan import (
    all_expensive_gflops,
    candidate_grid,
    cheap_pass_gflops,
    check_budget,
    make_plan,
)
from matseg.selector.policy import Selector, check_pairing, load_selector
from matseg.stitch import BAND, extended_region, neighbour_indices, seam_score
from matseg.tiles import BorderProbs, blend_sides, blended_labels, candidate_probs, cheap_pass, tile_input
from matseg.tiling import (
    CHUNKS_AT_ONCE,
    TileGrid,
    default_tile,
    group_layers,
    layer_groups,
    plan_tiles,
    shared_nodes,
    slabs,
    tile_blocks,
)
from matseg.validate import check_intensities, check_label_values, check_number

MODES = ("auto", *CANDIDATES)
REPORT_NAME = "matseg-report.json"
PERCENTILES = (0.5, 99.5)
_SUBSAMPLE_VOXELS = 1 << 22


@dataclass(frozen=True)
class Normalization:
    """Maps raw intensities to the models' range: (raw - low) / (high - low)."""

    low: float
    high: float
    thresholds: tuple[float, ...] = ()  # multi-Otsu thresholds between phases, normalised units

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        scale = self.high - self.low if self.high > self.low else 1.0
        return (raw.astype(np.float32) - np.float32(self.low)) / np.float32(scale)


def percentiles(sample: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``np.percentile(sample.astype(np.float64), q)``, bit for bit; from a histogram for
    8- and 16-bit integers (no sort of a float copy of the sample: 5x faster)."""
    if sample.dtype.kind not in "ui" or sample.dtype.itemsize > 2:
        return np.percentile(sample.astype(np.float64), q)
    smallest = int(np.iinfo(sample.dtype).min)
    flat = sample.ravel()
    counts = np.zeros(1 << (8 * sample.dtype.itemsize), np.int64)
    for start in range(0, flat.size, 1 << 20):  # bincount copies to intp: 8 MB at a time
        part = flat[start : start + (1 << 20)]
        part = part if smallest == 0 else part.astype(np.int32) - smallest
        counts += np.bincount(part, minlength=counts.size)
    cumulative = np.cumsum(counts)
    # numpy's "linear" method: the order statistics either side of (n - 1) q, and its lerp
    virtual = (flat.size - 1) * np.true_divide(np.asarray(q, np.float64), 100)
    before = np.floor(virtual)
    gamma = virtual - before
    a, b = (
        np.searchsorted(cumulative, k.astype(np.int64), side="right").astype(np.float64) + smallest
        for k in (before, np.minimum(before + 1, flat.size - 1))
    )
    return np.where(gamma >= 0.5, b - (b - a) * (1 - gamma), a + (b - a) * gamma)


def intensity_range(volume: Volume, n_phases: int | None = None) -> Normalization:
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
    parts, smallest, largest = [], math.inf, -math.inf
    # slab by slab of whole chunks along the first axis: a reduction's graph is some 13 kB a
    # chunk, 13 GB for the million chunks of a terabyte if made at once
    for start, stop in slabs(data.chunks, CHUNKS_AT_ONCE):
        slab = data[start:stop]  # (dask gives the array itself for its whole extent)
        extremes = (slab.min(), slab.max())  # reads every chunk; NaN and infinities show in them
        # the slab's part of one strided subsample of the whole volume
        first = -(-start // steps[0]) * steps[0]
        subsample = data[(slice(first, stop, steps[0]), *(slice(None, None, k) for k in steps[1:]))]
        try:
            (lo, hi), part = dask.compute(extremes, subsample)
        except MatsegError:
            raise
        except Exception as err:
            raise MatsegError(f"cannot read {volume.source}: {type(err).__name__}: {err}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise MatsegError(f"{volume.source} contains NaN or infinite values; clean or mask them first")
        smallest, largest = min(smallest, float(lo)), max(largest, float(hi))
        parts.append(part)
    sample = parts[0] if len(parts) == 1 else np.concatenate(parts)
    low, high = percentiles(sample, PERCENTILES)
    check_intensities(volume.source, smallest, largest, float(low), float(high))
    norm = Normalization(float(low), float(high))
    if n_phases:
        norm = Normalization(norm.low, norm.high, multiotsu_thresholds(norm(sample), n_phases))
    return norm


def _outputs(arrays: dict, grid: TileGrid, index, **values: np.ndarray) -> list:
    """(array, region, values) of a tile's output chunks, for :meth:`TileRecords.write`."""
    region = grid.region(index)
    return [(arrays[n], region, v if len(grid.shape) == 3 else v[0]) for n, v in values.items()]


# Each task writes its tile's output chunks, then its progress record (the tile is done).


def _single_task(block, t, index, grid, norm, context, candidate: Candidate, arrays, records) -> None:
    """Every tile runs ``candidate``: no selector, no blending."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    probs, gflops = candidate_probs(tile, candidate, context, grid.region(index))
    seconds = time.perf_counter() - started
    labels = phase_labels(probs)
    uncertainty = np.rint(normalized_entropy(probs) * 255).astype(np.uint8)
    out = _outputs(
        arrays, grid, index, phases=labels, uncertainty=uncertainty, decisions=np.zeros_like(labels)
    )
    records.write(t, out, gflops=gflops, counts=_counts(labels, context), seconds=[seconds])


def _cheap_task(block, t, index, grid, norm, context, arrays, records) -> None:
    """Stage 1: the cheap pass on a tile, written as the tile's provisional result."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    result = cheap_pass(tile, context)
    seconds = time.perf_counter() - started
    labels = result["labels"]
    uncertainty = np.rint(result["uncertainty"] * 255).astype(np.uint8)
    # decisions stay at the fill value, 0 (cheap), until stage 2 rewrites the tile
    records.write(
        t,
        _outputs(arrays, grid, index, phases=labels, uncertainty=uncertainty),
        gflops=result["gflops"],
        counts=_counts(labels, context),
        seconds=[seconds],
        features=result["features"],
    )


def _candidate_task(block, index, grid, norm, context, candidate: Candidate, band: int, sides=None):
    """Stage 2: a costlier candidate on a tile, over its core plus the blending band; kept
    as the tile's labels and its probabilities near the borders towards ``sides`` (what
    blending reads: :func:`matseg.tiles.blend_sides`; default all of them)."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    here = extended_region(grid, index, band)
    probs, gflops = candidate_probs(tile, candidate, context, here)
    seconds = time.perf_counter() - started
    return BorderProbs.of(probs, here, grid.region(index), band, sides), gflops, seconds


def _shared_candidate_task(shared: SharedResults, block, index, *args):
    """:func:`_candidate_task`, run once however many batches of tiles need it."""
    return shared.get(tuple(index), _candidate_task, block, index, *args)


def _finish_task(
    block, t, index, grid, norm, context, names, band, choice, own, neighbour_probs, arrays, records,
    shared: SharedResults | None = None,
) -> None:  # fmt: skip
    """Stage 2: a tile's final labels, blended with neighbours that ran another candidate.

    ``choice`` maps the tile and its in-plane neighbours to their candidates;
    ``block`` (the tile's input) is given only when the cheap net runs here again;
    ``shared`` holds candidates' results across batches (released here once used).
    """
    index = tuple(index)
    mine = choice[index]
    seconds, gflops = np.zeros(len(names)), 0.0
    others = {}
    if block is not None:
        tile = tile_input(block, index, grid, norm)
        started = time.perf_counter()
        cheap, gflops = candidate_probs(
            tile, CANDIDATES["cheap"], context, extended_region(grid, index, band)
        )
        seconds[0] = time.perf_counter() - started
        others[0] = cheap
    if mine == 0:
        own = others[0]
    else:
        own, own_gflops, seconds[mine] = own
        gflops += own_gflops
    neighbour_probs = {j: p[0] for j, p in neighbour_probs.items()}
    labels = blended_labels(index, grid, band, choice, own, others, neighbour_probs)
    if shared is not None:
        for j in ([index] if mine else []) + list(neighbour_probs):
            shared.release(j)
    out = _outputs(arrays, grid, index, phases=labels, decisions=np.full_like(labels, mine))
    records.write(t, out, gflops=gflops, counts=_counts(labels, context), seconds=seconds)


def _counts(labels: np.ndarray, context: Context) -> np.ndarray:
    return phase_counts(labels, context.n_phases)


def _check_options(model, lam, budget_gflops, max_expensive_fraction) -> None:
    if model not in MODES:
        raise MatsegError(f"unknown model '{model}'; choose from {', '.join(MODES)}")
    chosen = [n for n, v in (("--lambda", lam), ("--budget-gflops", budget_gflops)) if v is not None]
    if max_expensive_fraction is not None:
        chosen.append("--max-expensive-fraction")
    if model != "auto" and chosen:
        raise MatsegError(f"{', '.join(chosen)} only apply with --model auto (the selector)")
    check_number("--lambda", lam, low=0.0, high=1.0)
    check_number("--budget-gflops", budget_gflops, low=0.0, open_low=True)
    check_number("--max-expensive-fraction", max_expensive_fraction, low=0.0, high=1.0)
    if lam is not None and len(chosen) > 1:
        raise MatsegError("give either --lambda or a budget (--budget-gflops / --max-expensive-fraction)")


def _halo_of(model: str, context: Context, names: Sequence[str]) -> int:
    """A run's default and least halo: for ``auto``, the largest of its candidates' (each at
    least the blending band); for one model on every tile, what makes tiling exact, with no
    band to add: the net's radius, twice the expensive net's for ``expensive-2x`` (it runs at
    half scale, where the candidate's own halo leaves the rest to blending), and the classical
    candidate's halo."""
    models = context.models
    if model == "auto":
        return max(CANDIDATES[n].halo(context) for n in names)
    if model == "expensive-2x":
        return 2 * models["expensive"].halo
    if model == "classical":
        return CANDIDATES["classical"].halo(context)
    return models[model].halo


@dataclass
class _Job:
    """A run's inputs and settings, checked before anything is written."""

    input: str | os.PathLike
    output: Path
    volume: Volume
    model: str
    selector: Selector | None
    names: tuple[str, ...]
    models: dict
    phases: tuple[str, ...]
    context: Context
    tile: tuple[int, ...]
    halo: int
    grid: TileGrid
    lam: float | None
    budget_gflops: float | None
    max_expensive_fraction: float | None
    truth: str | os.PathLike | None
    identity: dict  # an unfinished output with the same identity is resumed
    cheap_identity: dict | None  # what a stored cheap pass depends on (reused across λ and budgets)

    @property
    def indices(self) -> list[tuple[int, ...]]:
        return list(self.grid.indices())


def segment(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str = "auto",
    lam: float | None = None,
    budget_gflops: float | None = None,
    max_expensive_fraction: float | None = None,
    weights: str | os.PathLike | None = None,
    tile: Sequence[int] | None = None,
    halo: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    cluster: str | ClusterSpec | None = None,
    truth: str | os.PathLike | None = None,
    progress: bool = False,
    dry_run: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Segment a volume into phases and write an OME-Zarr of labels, decisions and uncertainty.

    A run killed at any point (kill -9, a job's time limit) is resumed by the
    same call: an unfinished output of the same input and settings is
    recognised from its provenance and only its unfinished tiles are computed;
    the result equals an uninterrupted run's.

    Parameters
    ----------
    input : str or path
        Anything :func:`matseg.open_volume` reads (Zarr, OME-Zarr, ``file.h5:/dataset``, TIFF).
    output : str or path
        OME-Zarr store to create: ``labels/phases`` (uint8 phase labels),
        ``labels/decisions`` (candidate per tile), the cheap pass's uncertainty as
        the image, with the selector ``selector/`` (features, expected gain
        and choice per tile), and ``progress/`` (per-tile records for resuming).
    model : str
        ``auto`` (default): the cheap pass everywhere and, where the selector
        says so, a costlier candidate. Or one candidate for every tile:
        ``cheap``, ``medium``, ``expensive``, ``expensive-2x``, ``classical``.
    lam : float, optional
        Accuracy/cost trade-off λ in [0, 1] for ``auto``: higher spends less.
        Default: the selector's own, picked at training time as the largest λ
        that stayed within 0.01 mIoU of all-expensive on its training tiles.
    budget_gflops : float, optional
        Instead of λ: a hard cap on the GFLOPs of the whole run.
    max_expensive_fraction : float, optional
        Instead of λ: at most this fraction of tiles runs a costlier candidate.
    weights : path, optional
        A folder written by ``matseg train`` (and ``train-selector``); default: the bundled weights.
    tile : sequence of int, optional
        Tile size per axis (default 8 x 256 x 256, in-plane multiples of the stride).
    halo : int, optional
        In-plane halo; default and minimum: the models' receptive radius.
    overwrite : bool
        Replace an existing output of other settings or a finished one (for
        ``auto``, its stored cheap pass is reused when input, weights and tiling match).
    workers : int, optional
        Without ``cluster``: tiles segmented at once (dask threads); default: number of cores.
    cluster : str or ClusterSpec, optional
        ``local``, ``slurm`` or ``tcp://host:port`` to run on dask.distributed
        (see :class:`matseg.cluster.ClusterSpec` for workers, memory, SLURM
        settings and a costly-candidate pool); default: threads in this process.
    truth : str or path, optional
        Ground-truth labels (or a ``matseg sample`` store) to score the result against.
    progress : bool
        Show dask's progress bar on stderr.
    dry_run : bool
        Run only the cheap pass and the selector (stored in ``output`` for the
        real run to reuse) and return the estimated GFLOPs, time, memory and mix.
    log : callable, optional
        Receives one-line messages (resumed tiles, the cluster's dashboard).

    Returns
    -------
    dict
        The report, also saved in the output (``matseg-report.json`` and attributes).
    """
    started = time.perf_counter()
    job = _prepare(
        input, output, model, lam, budget_gflops, max_expensive_fraction, weights, tile, halo, truth
    )
    if dry_run and model != "auto":
        raise MatsegError("--dry-run estimates a selector run; use it with --model auto")
    spec = cluster if isinstance(cluster, ClusterSpec) else ClusterSpec(kind=cluster)
    spec.check()
    start, stored = _start_of(job, overwrite)
    if start == "finished":
        return _finished_report(job, log)
    if stored is None:
        norm = intensity_range(job.volume, len(job.phases) if "classical" in job.names else None)
    else:
        saved = stored["normalization"]
        norm = Normalization(saved["low"], saved["high"], tuple(saved.get("thresholds", ())))
    job.context = Context(job.models, norm.thresholds, job.context.phase_order)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(job.output):  # one writer at a time, from here on
        if _start_of(job, overwrite)[0] != start:  # another run changed it meanwhile
            raise MatsegError(f"output {output} changed while this run started; run it again")
        sweep_siblings(job.output)  # what runs that died while creating or deleting it left
        root = _open_output(job, start, norm)
        try:
            with backend(spec, workers, log) as runner, _tile_writes(runner) as writes:
                return _run(job, root, start, norm, runner, writes, progress, dry_run, command, started, log)
        except BaseException:
            if start == "new" and run_attrs(job.output).get("status") == "running" and not _any_done(root):
                remove_output(job.output, ("segment",))  # nothing finished: nothing half-written is left
            raise


def _prepare(input, output, model, lam, budget_gflops, max_expensive_fraction, weights, tile, halo, truth):
    check_distinct(output, [("input", input), ("--truth", truth), ("--weights", weights)])
    _check_options(model, lam, budget_gflops, max_expensive_fraction)
    inference_device()  # a bad $MATSEG_DEVICE fails here, before anything is written
    volume = open_volume(input)
    selector = load_selector(weights) if model == "auto" else None
    names = tuple(selector.candidates) if selector else (model,)
    needed = {m for n in names for m in CANDIDATES[n].needs} or {"cheap"}
    if selector is not None:
        needed.add("cheap")
    models = {m: load_segmenter(m, weights) for m in sorted(needed)}
    if selector is not None:
        check_pairing(selector, models)
    phases = tuple(next(iter(models.values())).phases)
    if truth is not None:
        truth_volume = open_volume(truth, labels=True)
        if truth_volume.shape != volume.shape:
            raise MatsegError(f"truth {truth} has shape {truth_volume.shape}; the input has {volume.shape}")
        check_label_values(truth_volume.data, len(phases), str(truth), "--truth")
    context = Context(models, phase_order=selector.phase_order if selector else ())
    tile = tuple(tile) if tile else default_tile(volume.ndim)
    min_halo = _halo_of(model, context, names)
    if halo is None:
        halo = min_halo
    elif halo < min_halo:
        raise MatsegError(
            f"halo {halo} is smaller than the receptive radius of --model {model}; use {min_halo}"
        )
    stride = max(m.stride for m in models.values())
    grid = plan_tiles(volume.shape, tile, halo, stride)
    if budget_gflops is not None:  # known before anything runs: the cheap pass's cost is its tiles' shapes
        check_budget(
            budget_gflops, float(cheap_pass_gflops(grid, context).sum()) + selector.gflops(grid.n_tiles)
        )
    out = Path(str(output))
    check_output(out, overwrite=True, inputs=[str(input)])  # not an input, and writable
    identity = {
        "input": canonical_source(input),
        "shape": list(volume.shape),
        "dtype": str(volume.data.dtype),
        "model": model,
        "candidates": list(names),
        "weights_sha256": {name: m.sha256 for name, m in models.items()},
        "selector_sha256": selector.sha256 if selector else None,
        "tile": list(tile),
        "halo": halo,
        "lambda": lam,
        "budget_gflops": budget_gflops,
        "max_expensive_fraction": max_expensive_fraction,
        "version": __version__,
    }
    cheap_identity = None  # what a cheap pass depends on: the run's settings but λ, budget, costlier weights
    if selector is not None:
        kept = ("input", "candidates", "shape", "dtype", "tile", "halo", "version")
        cheap_identity = {k: identity[k] for k in kept} | {"cheap_sha256": models["cheap"].sha256}
    return _Job(
        input, out, volume, model, selector, names, models, phases, context, tile, halo, grid,
        lam, budget_gflops, max_expensive_fraction, truth, identity, cheap_identity,
    )  # fmt: skip


def _start_of(job: _Job, overwrite: bool) -> tuple[str, dict | None]:
    """How a run starts on what is at its output: ``new``, ``resume`` (the same run,
    unfinished) or ``reuse-cheap`` (a selector run over a stored cheap pass); with the
    stored attributes when something is kept.

    Raises
    ------
    MatsegError
        If the output holds something else and ``overwrite`` is not given.
    """
    out = job.output
    if not out.exists():
        return "new", None
    attrs = run_attrs(out)
    status = attrs.get("status")
    unfinished = status in ("running", "cheap-pass", "running-candidates")
    if unfinished and attrs.get("settings") == job.identity and "normalization" in attrs:
        return "resume", attrs
    if status == "complete" and attrs.get("settings") == job.identity and not overwrite:
        return "finished", attrs  # a requeued job, or the same command again: nothing to do
    # a cheap pass is kept with its records (outputs of earlier versions have none)
    cheap_kept = (
        status in ("cheap-pass", "running-candidates", "complete") and (out / "progress/cheap").is_dir()
    )
    if job.cheap_identity and cheap_kept and attrs.get("cheap_pass") == job.cheap_identity:
        if status == "cheap-pass" or overwrite:
            return "reuse-cheap", attrs
    if overwrite:
        check_replaceable(out, ("segment",))
        return "new", None
    if unfinished:
        stored = attrs.get("settings") or {}
        differs = sorted(k for k, v in job.identity.items() if stored.get(k) != v)
        raise MatsegError(
            f"output {out} is an unfinished matseg run with other settings ({', '.join(differs)}); "
            "run its own command to resume it, or pass --overwrite to start again"
        )
    if status == "complete" and job.cheap_identity and attrs.get("cheap_pass") == job.cheap_identity:
        raise MatsegError(
            f"output {out} exists; pass --overwrite to replace it (its cheap pass will be reused)"
        )
    raise MatsegError(f"output {out} exists; pass --overwrite to replace it")


def _open_output(job: _Job, start: str, norm: Normalization) -> zarr.Group:
    """The output store, created for a new run; progress records reset where they no longer hold."""
    if start != "new":
        root = zarr.open_group(str(job.output), mode="r+")
        if start == "reuse-cheap":  # a new plan: the previous candidates' records do not hold
            TileRecords.create(root, "finish", job.grid.n_tiles, _finish_fields(job))
            root.attrs["matseg"] = {**root.attrs["matseg"], "status": "cheap-pass", "settings": job.identity}
        return root
    remove_output(job.output, ("segment",))
    with building(job.output) as temp:  # visible at its path only once its identity is recorded
        _create_output(job, temp, norm)
    return zarr.open_group(str(job.output), mode="r+")


def _create_output(job: _Job, path: Path, norm: Normalization) -> None:
    """A new output store at ``path``: empty arrays, progress records and the run's identity."""
    root = create_ome_store(
        path,
        job.volume.shape,
        job.grid.write_chunks,
        image=("uncertainty", "uint8"),
        labels={"phases": job.phases, "decisions": job.names},
    )
    n = job.grid.n_tiles
    if job.selector is None:
        TileRecords.create(root, "tiles", n, {"gflops": 1, "counts": len(job.phases), "seconds": 1})
    else:
        fields = {"gflops": 1, "counts": len(job.phases), "seconds": 1, "features": len(FEATURE_NAMES)}
        TileRecords.create(root, "cheap", n, fields)
        TileRecords.create(root, "finish", n, _finish_fields(job))
    root.attrs["matseg"] = {
        "status": "running",
        "version": __version__,
        "input": {"source": str(job.input)},
        "settings": job.identity,
        "cheap_pass": job.cheap_identity,
        "normalization": _norm_dict(norm),
        "rewritten": [],
    }
    # decisions stay at the fill value (0, cheap) where stage 2 never rewrites a tile
    root["labels/decisions/0"].attrs[DECLARATION[0]] = DECLARATION[1]


def _finish_fields(job: _Job) -> dict:
    return {"gflops": 1, "counts": len(job.phases), "seconds": len(job.names)}


def _any_done(root) -> bool:
    return any(TileRecords(a).done().any() for _, a in root["progress"].arrays())


def _todo(records: TileRecords, indices, wanted=None) -> list[tuple[int, tuple[int, ...]]]:
    """(position, index) of the tiles still to compute (of ``wanted``, if given)."""
    done = records.done()
    return [(t, idx) for t, idx in enumerate(indices) if not done[t] and (wanted is None or idx in wanted)]


def _set_status(root, **changes) -> None:
    root.attrs["matseg"] = {**root.attrs["matseg"], **changes}


def _tile_writes(runner: Backend) -> contextlib.AbstractContextManager[WriteBehind | None]:
    """Write-behind for a run on threads (two waiting writes a worker); a cluster's workers
    write their tiles themselves."""
    return WriteBehind(2 * runner.workers) if runner.client is None else contextlib.nullcontext()


def _run(
    job: _Job, root, start, norm, runner: Backend, writes, progress, dry_run, command, started, log
) -> dict:
    """The stages of a run on an open output; each computes only the tiles not yet recorded."""
    grid, indices, context = job.grid, job.indices, job.context
    paths = {"uncertainty": "0", "phases": "labels/phases/0", "decisions": "labels/decisions/0"}
    arrays = {name: for_tile_writes(root[path]) for name, path in paths.items()}
    compute_started = time.perf_counter()
    computed, done_now = {}, set()  # tiles per stage, and every tile, computed by this run
    ctx, out = shared_nodes(context, arrays)
    if job.selector is None:
        records = TileRecords.open(root, "tiles", writes)
        todo = _todo(records, indices)
        computed["tiles"] = len(todo)
        done_now.update(idx for _, idx in todo)
        cost = CHEAP if job.model in ("cheap", "classical") else COSTLY

        def tasks(group, layers):
            blocks = tile_blocks(job.volume.data, grid, layers)
            with runner.annotate(cost):
                return _tile_tasks(
                    _single_task, "tile", blocks, group, grid, norm, ctx, CANDIDATES[job.model], out, records
                )

        _compute_tiles(runner, todo, tasks, progress, records)
        rows = records.read()
        counts, plan = rows["counts"].sum(axis=0), None
        stats = {"gflops": float(rows["gflops"].sum()), "seconds": {job.model: float(rows["seconds"].sum())}}
    else:
        cheap_records = TileRecords.open(root, "cheap", writes)
        todo = _todo(cheap_records, indices)
        computed["cheap"] = len(todo)
        done_now.update(idx for _, idx in todo)
        if todo:
            # the cheap pass needs only its own receptive radius: its own, smaller halo
            cheap_grid = grid.with_halo(job.models["cheap"].halo)

            def tasks(group, layers):
                blocks = tile_blocks(job.volume.data, cheap_grid, layers)
                with runner.annotate(CHEAP):
                    return _tile_tasks(
                        _cheap_task, "cheap", blocks, group, cheap_grid, norm, ctx, out, cheap_records
                    )

            _compute_tiles(runner, todo, tasks, progress, cheap_records)
        cheap = _cheap_results(root, cheap_records)
        if root.attrs["matseg"]["status"] == "running":
            _set_status(root, status="cheap-pass")
        plan = make_plan(
            job.selector, cheap, grid, context, job.names, job.lam, job.budget_gflops,
            job.max_expensive_fraction,
        )  # fmt: skip
        attrs = root.attrs["matseg"]
        if attrs["status"] == "running-candidates":
            if not np.array_equal(root["selector/choice"][:], plan["choice"]):
                raise MatsegError(
                    f"output {job.output}: the selector's plan differs from the stored one; "
                    "pass --overwrite to start the candidates again"
                )
            rewrite = set(map(tuple, attrs["rewritten"]))
        else:
            root["selector/gain"][:] = plan["gain"]
            root["selector/choice"][:] = plan["choice"].astype(np.uint8)
            if dry_run:
                estimate = _estimate(
                    plan, cheap, job.volume.data, grid, norm, context, job.names, runner.workers
                )
                # what is kept is a cheap pass for the real run to finish (a finished output
                # given with --overwrite becomes one too: its rewritten tiles are redone)
                _set_status(root, status="cheap-pass")
                return _dry_run_report(job, plan, cheap, estimate)
            previous = set(map(tuple, attrs.get("rewritten", [])))
            rewrite = {indices[t] for t in np.flatnonzero(plan["rewritten"])} | previous
            _set_status(root, status="running-candidates", rewritten=sorted(map(list, rewrite)))
        finish_records = TileRecords.open(root, "finish", writes)
        todo = _todo(finish_records, indices, rewrite)
        computed["candidates"] = len(todo)
        done_now.update(idx for _, idx in todo)
        _run_stage2(job, plan, todo, norm, ctx, out, finish_records, runner, progress)
        stats = _selector_stats(job, plan, cheap, finish_records, rewrite)
        counts = stats["counts"]
    if log and start == "resume":
        log(f"resumed {job.output}: computed " + ", ".join(f"{n} {s} tiles" for s, n in computed.items()))
    compute_seconds = time.perf_counter() - compute_started
    report = _report(job, norm, plan, stats, counts, command)
    report["seam"] = seam_score(arrays["phases"], grid, runner.compute)
    if job.truth is not None:
        report["truth"] = str(job.truth)
        report["metrics"] = score_labels(arrays["phases"], job.truth, job.phases)
    # this run's own work: a resumed run counts only the tiles it computed (model_s: every run's)
    voxels_now = sum(int(np.prod([r.stop - r.start for r in grid.region(i)])) for i in done_now)
    report["timings"] = {
        "total_s": time.perf_counter() - started,
        "segment_s": compute_seconds,
        "model_s": stats["seconds"],
        "voxels_computed": voxels_now,
        "voxels_per_s": voxels_now / compute_seconds,
    }
    report["run"] = {**runner.description, "started_as": start, "computed_tiles": computed}
    if plan is not None:
        report["run"]["cheap_pass_reused"] = computed["cheap"] == 0
    # the report first: a run killed between the two is resumed, never "complete" without it
    replace_file(job.output / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    root.attrs["matseg"] = {**root.attrs["matseg"], **report, "status": "complete"}
    return report


def _finished_report(job: _Job, log) -> dict:
    """The stored report of a finished run of the same settings (scored anew against another truth)."""
    try:
        report = json.loads((job.output / REPORT_NAME).read_text())
    except (OSError, ValueError) as err:
        raise MatsegError(
            f"output {job.output} is finished but its {REPORT_NAME} is unreadable ({err}); "
            "pass --overwrite to run it again"
        ) from None
    if job.truth is not None and report.get("truth") != str(job.truth):
        phases = zarr.open_group(str(job.output), mode="r")["labels/phases/0"]
        report["truth"] = str(job.truth)
        report["metrics"] = score_labels(phases, job.truth, job.phases)
    report["run"] = {**report.get("run", {}), "started_as": "finished"}
    if log:
        log(f"{job.output} is already a finished run of these settings: nothing to compute")
    return report


def _report(job: _Job, norm: Normalization, plan, stats, counts, command) -> dict:
    """What a run did, the same whether it ran at one go or was resumed (timings and ``run`` aside)."""
    grid = job.grid
    voxels = int(np.prod(job.volume.shape))
    report = {
        "command": command or "matseg.segment",
        "input": {
            "source": str(job.input),
            "kind": job.volume.kind,
            "shape": list(job.volume.shape),
            "dtype": str(job.volume.data.dtype),
        },
        "output": str(job.output),
        "model": job.model,
        "models": [m.describe() for m in job.models.values()],
        "tile": list(job.tile),
        "halo": job.halo,
        "grid": list(grid.grid_shape),
        "normalization": {"percentiles": list(PERCENTILES), **_norm_dict(norm)},
        "candidates": list(job.names),
        "tiles": grid.n_tiles,
        "voxels": voxels,
        "gflops": stats["gflops"],
        "gflops_per_megavoxel": stats["gflops"] / (voxels / 1e6),
        "phases": list(job.phases),
        "volume_fractions": volume_fractions(counts, job.phases),
        "versions": _versions(),
    }
    if plan is None:
        report["decisions"] = {job.model: grid.n_tiles}
        return report
    report["decisions"] = {n: int((plan["choice"] == k).sum()) for k, n in enumerate(job.names)}
    report["selector"] = {
        **job.selector.describe(),
        "lambda": plan["lambda"],
        "budget_gflops": job.budget_gflops,
        "max_expensive_fraction": job.max_expensive_fraction,
        "expected_gain": float(plan["gain"][np.arange(grid.n_tiles), plan["choice"]].mean()),
        "band": BAND,
    }
    report["gflops_breakdown"] = stats["breakdown"]
    report["all_expensive_gflops"] = all_expensive_gflops(grid, job.context)
    report["gflops_fraction_of_all_expensive"] = stats["gflops"] / report["all_expensive_gflops"]
    return report


def _tile_tasks(function, stage: str, blocks, todo, grid: TileGrid, *args) -> list:
    """One task per tile of ``todo`` (position, index): ``function(block, t, index, grid, *args)``."""
    shared = shared_nodes(grid, *args)
    return [dask.delayed(function)(blocks[i], t, i, *shared, dask_key_name=_key(stage, i)) for t, i in todo]


def _compute_tiles(
    runner: Backend, todo, tasks: Callable[[list, range | None], list], progress: bool, records: TileRecords
) -> None:
    """The tasks ``tasks(group, layers)`` makes for the tiles of ``todo`` (position, index),
    made and computed group by group of whole layers (:func:`matseg.tiling.layer_groups`;
    ``layers``: :func:`matseg.tiling.group_layers`, for :func:`matseg.tiling.tile_blocks`);
    when it returns, every tile the tasks wrote to ``records`` is written."""
    groups = (tasks(group, group_layers(group)) for group in layer_groups(todo, runner.group_tiles))
    try:
        runner.compute_groups(groups, len(todo), progress)
    except BaseException:
        with contextlib.suppress(Exception):  # the tiles already done stay recorded; the error stands
            records.flush()
        raise
    records.flush()


def _key(stage: str, index) -> str:
    return f"matseg-{stage}-{'-'.join(map(str, index))}"


def _norm_dict(norm: Normalization) -> dict:
    return {"low": norm.low, "high": norm.high, "thresholds": list(norm.thresholds)}


def _cheap_results(root, records: TileRecords) -> dict:
    """The cheap pass of every tile from its records, also kept as ``selector/`` arrays."""
    rows = records.read()
    cheap = {
        "features": rows["features"].astype(np.float32),
        "counts": rows["counts"].astype(np.int64),
        "gflops": rows["gflops"][:, 0],
        "seconds": rows["seconds"][:, 0],
    }
    group = root.require_group("selector")
    if "choice" not in group:
        for name, values in cheap.items():
            group.create_array(name, data=values, overwrite=True)
        n_tiles, n_cand = len(cheap["gflops"]), len(root["labels/decisions"].attrs["matseg"]["candidates"])
        group.create_array("gain", shape=(n_tiles, n_cand), dtype="float32", overwrite=True)
        group.create_array("choice", shape=(n_tiles,), dtype="uint8", overwrite=True)
    return cheap


def _run_stage2(job: _Job, plan, todo, norm, ctx, arrays, records, runner: Backend, progress) -> None:
    """The tiles of ``todo`` (position, index): their candidates, blended with their neighbours'."""
    if not todo:
        return
    grid, names, context = job.grid, job.names, job.context
    grid_choice = plan["choice"].reshape(grid.grid_shape)  # each tile's candidate, by its index

    def near(idx) -> dict:
        """The candidates of tile ``idx`` and its in-plane neighbours."""
        return {j: int(grid_choice[j]) for j in neighbour_indices(grid, idx).values()}

    # every candidate that runs reads its tiles with its own halo; blending needs the band only
    used = {names[k] for k in np.unique(plan["choice"]).tolist() if k} | {"cheap"}
    grids = {n: candidate_grid(grid, n, context) for n in used}
    shared_grids = dict(zip(grids, shared_nodes(*grids.values())))
    shared_norm, shared_records, shared_names = shared_nodes(norm, records, names)
    run = dict(zip(used, shared_nodes(*(CANDIDATES[n] for n in used))))
    # on threads, tiles go in batches (separate computations): a candidate whose
    # neighbours fall into two batches is computed once and held for both
    shared = SharedResults() if runner.client is None else None
    (shared_results,) = shared_nodes(shared)

    def tasks(group, layers) -> list:
        """The finishing tasks of a group's tiles, with the candidates they take."""
        blocks = {n: tile_blocks(job.volume.data, g, layers) for n, g in grids.items()}
        around = {idx: near(idx) for _, idx in group}
        needed = {j for choice in around.values() for j, k in choice.items() if k > 0}
        with runner.annotate(COSTLY):
            costly = {}
            for idx in sorted(needed):
                name = names[grid_choice[idx]]
                # only the strips of probabilities that blending will read are held
                # (a neighbour already done on resume is needed but has no entry in ``around``)
                sides = blend_sides(grid, idx, around.get(idx) or near(idx))
                args = (blocks[name][idx], idx, shared_grids[name], shared_norm, ctx, run[name], BAND, sides)
                key = _key("candidate", idx)
                if shared is not None:
                    args = (shared_results, *args)
                task = _candidate_task if shared is None else _shared_candidate_task
                costly[idx] = dask.delayed(task)(*args, dask_key_name=key)
        out = []
        with runner.annotate(CHEAP):
            for t, idx in group:
                choice = around[idx]
                mine = choice[idx]
                # the choices of the tile and its neighbours only: a task that carried the whole
                # plan would make the graph grow with the square of the number of tiles. The cheap
                # net runs again here (and reads the input) only where one of them kept the cheap pass (0)
                neighbours = {j: costly[j] for j, k in choice.items() if k not in (0, mine)}
                if shared is not None:  # the candidates this task takes, released when it is done
                    shared.expect(([idx] if mine else []) + list(neighbours))
                out.append(
                    dask.delayed(_finish_task)(
                        blocks["cheap"][idx] if 0 in choice.values() else None,
                        t,
                        idx,
                        shared_grids["cheap"],
                        shared_norm,
                        ctx,
                        shared_names,
                        BAND,
                        choice,
                        costly.get(idx),
                        neighbours,
                        arrays,
                        shared_records,
                        shared_results,
                        dask_key_name=_key("finish", idx),
                    )  # fmt: skip
                )
        return out

    _compute_tiles(runner, todo, tasks, progress, records)


def _selector_stats(job: _Job, plan, cheap, records: TileRecords, rewrite) -> dict:
    """Counts, GFLOPs and model seconds of a selector run: the cheap pass, then the rewritten tiles."""
    rows = records.read()
    rewritten = np.array([idx in rewrite for idx in job.indices])
    if not records.done(rows)[rewritten].all():
        raise MatsegError(f"output {job.output}: some tiles were not finished; run the same command again")
    counts = cheap["counts"].copy()
    counts[rewritten] = rows["counts"][rewritten]
    stage2_gflops = float(rows["gflops"][rewritten].sum())
    seconds = dict(zip(job.names, rows["seconds"][rewritten].sum(axis=0).tolist()))
    seconds["cheap"] = seconds.get("cheap", 0.0) + float(cheap["seconds"].sum())
    cheap_gflops = float(cheap["gflops"].sum())
    return {
        "counts": counts.sum(axis=0),
        "gflops": cheap_gflops + plan["policy_gflops"] + stage2_gflops,
        "seconds": {n: s for n, s in seconds.items() if s},
        "breakdown": {
            "cheap_pass": cheap_gflops,
            "selector": plan["policy_gflops"],
            "candidates_and_blending": stage2_gflops,
        },
    }


def _estimate(plan, cheap, data, grid, norm, context, names, workers) -> dict:
    """Expected cost of stage 2: GFLOPs exactly from the plan; time and memory from one
    sampled tile per candidate."""
    import resource

    indices = list(grid.indices())
    per_gflop = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in sorted(set(plan["choice"].tolist()) - {0}):
        t = int(np.flatnonzero(plan["choice"] == k)[0])
        idx = indices[t]
        own_grid = candidate_grid(grid, names[k], context)
        blocks = tile_blocks(data, own_grid, range(idx[0], idx[0] + 1))  # its layer's graph only
        _, gflops, seconds = _candidate_task(
            blocks[idx].compute(), idx, own_grid, norm, context, CANDIDATES[names[k]], BAND
        )
        per_gflop[names[k]] = seconds / max(gflops, 1e-9)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cheap_rate = float(cheap["seconds"].sum()) / max(float(cheap["gflops"].sum()), 1e-9)
    seconds = 0.0
    for t, k in enumerate(plan["choice"]):
        if k:
            seconds += plan["candidate_gflops"][t, k] * per_gflop[names[k]]
    blend_gflops = plan["stage2_gflops"] - sum(
        plan["candidate_gflops"][t, k] for t, k in enumerate(plan["choice"]) if k
    )
    seconds += blend_gflops * cheap_rate
    return {
        "gflops": float(cheap["gflops"].sum()) + plan["policy_gflops"] + plan["stage2_gflops"],
        "stage2_gflops": plan["stage2_gflops"],
        "seconds": seconds / workers,
        "peak_rss_mb": (rss_after + (workers - 1) * max(0, rss_after - rss_before)) / 1024,
        "sampled_seconds_per_gflop": per_gflop,
    }


def _dry_run_report(job: _Job, plan, cheap, estimate) -> dict:
    return {
        "dry_run": True,
        "input": {"source": str(job.input), "shape": list(job.volume.shape)},
        "output": str(job.output),
        "models": [m.describe() for m in job.models.values()],
        "selector": job.selector.describe() | {"lambda": plan["lambda"]},
        "tile": list(job.tile),
        "halo": job.halo,
        "tiles": job.grid.n_tiles,
        "voxels": int(np.prod(job.volume.shape)),
        "decisions": {n: int((plan["choice"] == k).sum()) for k, n in enumerate(job.names)},
        "cheap_pass_gflops": float(cheap["gflops"].sum()),
        "estimate": estimate,
    }


def score_labels(pred, truth: str | os.PathLike, phases: Sequence[str]) -> dict:
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
