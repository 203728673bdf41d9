"""``matseg.segment``: a volume in, an OME-Zarr of phase labels out, tile by tile.

open -> intensity range (one streaming pass) -> tile grid -> stage 1, per tile:
the cheap pass (labels, uncertainty, selector features) -> the selector picks a
candidate per tile (by λ or under a budget) -> stage 2, only where needed: the
chosen candidates, blended across borders with neighbours that ran another one
-> whole chunks written -> report. With ``model`` set to one candidate, every
tile runs that candidate and nothing is blended (exactly whole-volume inference).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
import zarr

from matseg import __version__
from matseg.errors import MatsegError
from matseg.io.lock import OutputLock
from matseg.io.read import Volume, canonical_source, open_volume
from matseg.io.write import check_output, create_ome_store, remove_store, run_attrs, write_region
from matseg.metrics import confusion_matrix, summarize, volume_fractions
from matseg.models.weights import load_segmenter, normalized_entropy
from matseg.selector.candidates import CANDIDATES, Candidate, Context, multiotsu_thresholds
from matseg.selector.plan import all_expensive_gflops, candidate_grid, make_plan
from matseg.selector.policy import check_pairing, load_selector
from matseg.stitch import BAND, extended_region, neighbour_indices, seam_score
from matseg.tiles import blended_labels, candidate_probs, cheap_pass, tile_input
from matseg.tiling import TileGrid, overlapped_tiles, plan_tiles

MODES = ("auto", *CANDIDATES)
DEFAULT_TILE = (4, 256, 256)
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
    norm = Normalization(float(low), float(high))
    if n_phases:
        norm = Normalization(norm.low, norm.high, multiotsu_thresholds(norm(sample), n_phases))
    return norm


def default_tile(ndim: int) -> tuple[int, ...]:
    return DEFAULT_TILE[-ndim:]


def _write_tile(arrays: dict, grid: TileGrid, index, **values: np.ndarray) -> None:
    region = grid.region(index)
    for name, value in values.items():
        write_region(arrays[name], region, value if len(grid.shape) == 3 else value[0])


def _single_task(block, index, grid, norm, context, candidate: Candidate, k: int, arrays) -> dict:
    """Every tile runs ``candidate``: no selector, no blending."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    probs, gflops = candidate_probs(tile, candidate, context, grid.region(index))
    seconds = time.perf_counter() - started
    labels = probs.argmax(axis=1).astype(np.uint8)
    uncertainty = np.rint(normalized_entropy(probs) * 255).astype(np.uint8)
    _write_tile(
        arrays, grid, index, phases=labels, uncertainty=uncertainty, decisions=np.full_like(labels, k)
    )
    counts = np.bincount(labels.ravel(), minlength=context.n_phases)
    return {"counts": counts, "gflops": gflops, "seconds": {candidate.name: seconds}}


def _cheap_task(block, index, grid, norm, context, arrays) -> dict:
    """Stage 1: the cheap pass on a tile, written as the tile's provisional result."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    result = cheap_pass(tile, context)
    seconds = time.perf_counter() - started
    labels = result["labels"]
    uncertainty = np.rint(result["uncertainty"] * 255).astype(np.uint8)
    _write_tile(arrays, grid, index, phases=labels, uncertainty=uncertainty, decisions=np.zeros_like(labels))
    return {
        "counts": np.bincount(labels.ravel(), minlength=context.n_phases),
        "gflops": result["gflops"],
        "features": result["features"],
        "seconds": {"cheap": seconds},
    }


def _candidate_task(block, index, grid, norm, context, candidate: Candidate, band: int):
    """Stage 2: a costlier candidate on a tile, over its core plus the blending band."""
    tile = tile_input(block, index, grid, norm)
    started = time.perf_counter()
    probs, gflops = candidate_probs(tile, candidate, context, extended_region(grid, index, band))
    return probs, gflops, time.perf_counter() - started


def _finish_task(
    block, index, grid, norm, context, names, band, choice, own, neighbour_probs, arrays
) -> dict:
    """Stage 2: a tile's final labels, blended with neighbours that ran another candidate."""
    index = tuple(index)
    mine = choice[index]
    neighbours = neighbour_indices(grid, index)
    seconds, gflops = {}, 0.0
    others = {}
    needs_cheap = mine == 0 or any(choice[j] == 0 for j in neighbours.values())
    if needs_cheap:
        tile = tile_input(block, index, grid, norm)
        started = time.perf_counter()
        cheap, gflops = candidate_probs(
            tile, CANDIDATES["cheap"], context, extended_region(grid, index, band)
        )
        seconds["cheap"] = time.perf_counter() - started
        others[0] = cheap
    if mine == 0:
        own = others[0]
    else:
        own, own_gflops, own_seconds = own
        gflops += own_gflops
        seconds[names[mine]] = own_seconds
    neighbour_probs = {j: p[0] for j, p in neighbour_probs.items()}
    labels = blended_labels(index, grid, band, choice, own, others, neighbour_probs)
    _write_tile(arrays, grid, index, phases=labels, decisions=np.full_like(labels, mine))
    return {
        "counts": np.bincount(labels.ravel(), minlength=context.n_phases),
        "gflops": gflops,
        "seconds": seconds,
    }


def _configure_threads(workers: int) -> None:
    # dask threads x torch threads should not exceed the cores we have.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _check_options(model, lam, budget_gflops, max_expensive_fraction) -> None:
    if model not in MODES:
        raise MatsegError(f"unknown model '{model}'; choose from {', '.join(MODES)}")
    chosen = [n for n, v in (("--lambda", lam), ("--budget-gflops", budget_gflops)) if v is not None]
    if max_expensive_fraction is not None:
        chosen.append("--max-expensive-fraction")
    if model != "auto" and chosen:
        raise MatsegError(f"{', '.join(chosen)} only apply with --model auto (the selector)")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise MatsegError(f"--lambda must be between 0 and 1, got {lam}")
    if lam is not None and len(chosen) > 1:
        raise MatsegError("give either --lambda or a budget (--budget-gflops / --max-expensive-fraction)")
    if budget_gflops is not None and budget_gflops <= 0:
        raise MatsegError(f"--budget-gflops must be positive, got {budget_gflops}")
    if max_expensive_fraction is not None and not 0.0 <= max_expensive_fraction <= 1.0:
        raise MatsegError(f"--max-expensive-fraction must be between 0 and 1, got {max_expensive_fraction}")


def _halo_of(model: str, context: Context, names: Sequence[str]) -> int:
    models = context.models
    if model == "auto":
        return max(CANDIDATES[n].halo(context) for n in names)
    if model == "expensive-2x":
        return 2 * models["expensive"].halo
    if model == "classical":
        return CANDIDATES["classical"].halo(context)
    return models[model].halo


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
    truth: str | os.PathLike | None = None,
    progress: bool = False,
    dry_run: bool = False,
    command: str | None = None,
) -> dict:
    """Segment a volume into phases and write an OME-Zarr of labels, decisions and uncertainty.

    Parameters
    ----------
    input : str or path
        Anything :func:`matseg.open_volume` reads (Zarr, OME-Zarr, ``file.h5:/dataset``, TIFF).
    output : str or path
        OME-Zarr store to create: ``labels/phases`` (uint8 phase labels),
        ``labels/decisions`` (candidate per tile), the cheap pass's uncertainty as
        the image, and with the selector ``selector/`` (features, expected gain
        and choice per tile).
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
        Tile size per axis (default 4 x 256 x 256, in-plane multiples of the stride).
    halo : int, optional
        In-plane halo; default and minimum: the models' receptive radius.
    overwrite : bool
        Replace an existing output (for ``auto``, its stored cheap pass is reused
        when input, weights and tiling match).
    workers : int, optional
        Tiles segmented at once (dask threads); default: number of cores.
    truth : str or path, optional
        Ground-truth labels (or a ``matseg sample`` store) to score the result against.
    progress : bool
        Show dask's progress bar on stderr.
    dry_run : bool
        Run only the cheap pass and the selector (stored in ``output`` for the
        real run to reuse) and return the estimated GFLOPs, time, memory and mix.

    Returns
    -------
    dict
        The report, also saved in the output (``matseg-report.json`` and attributes).
    """
    with ExitStack() as lock:
        return _segment(
            input,
            output,
            model=model,
            lam=lam,
            budget_gflops=budget_gflops,
            max_expensive_fraction=max_expensive_fraction,
            weights=weights,
            tile=tile,
            halo=halo,
            overwrite=overwrite,
            workers=workers,
            truth=truth,
            progress=progress,
            dry_run=dry_run,
            command=command,
            lock=lock,
        )


def _segment(
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
    truth: str | os.PathLike | None = None,
    progress: bool = False,
    dry_run: bool = False,
    command: str | None = None,
    lock: ExitStack,
) -> dict:
    """The body of :func:`segment`; ``lock`` holds the output lock once taken."""
    _check_options(model, lam, budget_gflops, max_expensive_fraction)
    if dry_run and model != "auto":
        raise MatsegError("--dry-run estimates a selector run; use it with --model auto")
    started = time.perf_counter()
    volume = open_volume(input)
    selector = load_selector(weights) if model == "auto" else None
    names = selector.candidates if selector else (model,)
    needed = {m for n in names for m in CANDIDATES[n].needs} or {"cheap"}
    if selector is not None:
        needed.add("cheap")
    models = {m: load_segmenter(m, weights) for m in sorted(needed)}
    if selector is not None:
        check_pairing(selector, models)
    phases = next(iter(models.values())).phases
    truth_volume = open_volume(truth, labels=True) if truth is not None else None
    if truth_volume is not None and truth_volume.shape != volume.shape:
        raise MatsegError(f"truth {truth} has shape {truth_volume.shape}; the input has {volume.shape}")
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
    fingerprint = _fingerprint(input, volume, models["cheap"], names, tile, halo) if selector else None
    out = Path(str(output))
    stored = _stored_cheap_pass(out, fingerprint, overwrite) if selector else None
    if stored is None:
        check_output(output, overwrite, inputs=[str(input)])
        needs_thresholds = "classical" in names
        norm = intensity_range(volume, len(phases) if needs_thresholds else None)
    else:
        saved = stored["normalization"]
        norm = Normalization(saved["low"], saved["high"], tuple(saved.get("thresholds", ())))
    context = Context(models, norm.thresholds, context.phase_order)

    workers = int(workers or os.cpu_count() or 1)
    _configure_threads(workers)
    indices = list(grid.indices())
    compute_started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock.enter_context(OutputLock(out))  # one writer at a time, from here on
    if stored is None:
        check_output(output, overwrite, inputs=[str(input)])  # again: another run may have finished it
        if out.exists():
            remove_store(out)
        root = create_ome_store(
            out,
            volume.shape,
            grid.write_chunks,
            image=("uncertainty", "uint8"),
            labels={"phases": phases, "decisions": names},
            attrs={"status": "running", "version": __version__, "input": {"source": str(input)}},
        )
    else:
        root = zarr.open_group(str(out), mode="r+")
    arrays = {
        "uncertainty": root["0"],
        "phases": root["labels/phases/0"],
        "decisions": root["labels/decisions/0"],
    }

    try:
        if selector is None:
            candidate = CANDIDATES[model]
            blocks = overlapped_tiles(volume.data, grid).to_delayed()
            tasks = [
                dask.delayed(_single_task)(
                    blocks[i], i, grid, norm, context, candidate, 0, arrays, dask_key_name=_key("tile", i)
                )
                for i in indices
            ]
            with _progress(progress):
                results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
            stats = _sum_stats(results)
            counts, plan = stats["counts"], None
        else:
            if stored is None:
                # the cheap pass needs only its own receptive radius: its own, smaller halo
                cheap_grid = grid.with_halo(models["cheap"].halo)
                cheap_blocks = overlapped_tiles(volume.data, cheap_grid).to_delayed()
                cheap = _run_cheap_pass(
                    root, cheap_blocks, indices, cheap_grid, norm, context, arrays, workers, progress
                )
                root.attrs["matseg"] = {
                    "status": "cheap-pass",
                    "version": __version__,
                    "cheap_pass": fingerprint,
                    "normalization": _norm_dict(norm),
                    "rewritten": [],
                }
            else:
                cheap = _load_cheap_pass(root)
            plan = make_plan(
                selector, cheap, grid, context, names, lam, budget_gflops, max_expensive_fraction
            )
            root["selector/gain"][:] = plan["gain"]
            root["selector/choice"][:] = plan["choice"].astype(np.uint8)
            if dry_run:
                estimate = _estimate(plan, cheap, volume.data, grid, norm, context, names, workers)
                # what is kept is a cheap pass for the real run to finish (a finished output
                # given with --overwrite becomes one too: its rewritten tiles are redone)
                root.attrs["matseg"] = {**root.attrs["matseg"], "status": "cheap-pass"}
                return _dry_run_report(
                    input, output, volume, grid, halo, tile, plan, cheap, estimate, names, models, selector
                )
            previous = set(map(tuple, root.attrs["matseg"].get("rewritten", [])))
            rewrite = {indices[t] for t in np.flatnonzero(plan["rewritten"])} | previous
            attrs = dict(root.attrs["matseg"])
            attrs.update(status="running-candidates", rewritten=sorted(map(list, rewrite)))
            root.attrs["matseg"] = attrs
            stats = _run_stage2(
                plan,
                rewrite,
                cheap,
                volume.data,
                indices,
                grid,
                norm,
                context,
                names,
                arrays,
                workers,
                progress,
            )
            counts = stats["counts"]
    except BaseException:
        if stored is None:
            remove_store(out)  # nothing half-written is left behind
        raise
    compute_seconds = time.perf_counter() - compute_started

    voxels = int(np.prod(volume.shape))
    report = {
        "command": command or "matseg.segment",
        "input": {
            "source": str(input),
            "kind": volume.kind,
            "shape": list(volume.shape),
            "dtype": str(volume.data.dtype),
        },
        "output": str(output),
        "model": model,
        "models": [m.describe() for m in models.values()],
        "tile": list(tile),
        "halo": halo,
        "grid": list(grid.grid_shape),
        "normalization": {"percentiles": list(PERCENTILES), **_norm_dict(norm)},
        "candidates": list(names),
        "tiles": grid.n_tiles,
        "voxels": voxels,
        "gflops": stats["gflops"],
        "gflops_per_megavoxel": stats["gflops"] / (voxels / 1e6),
        "timings": {"total_s": None, "segment_s": compute_seconds, "model_s": stats["seconds"]},
        "workers": workers,
        "phases": list(phases),
        "volume_fractions": volume_fractions(counts, phases),
        "versions": _versions(),
    }
    if plan is None:
        report["decisions"] = {model: grid.n_tiles}
    else:
        report["decisions"] = {n: int((plan["choice"] == k).sum()) for k, n in enumerate(names)}
        report["selector"] = {
            **selector.describe(),
            "lambda": plan["lambda"],
            "budget_gflops": budget_gflops,
            "max_expensive_fraction": max_expensive_fraction,
            "expected_gain": float(plan["gain"][np.arange(grid.n_tiles), plan["choice"]].mean()),
            "cheap_pass_reused": stored is not None,
            "band": BAND,
        }
        report["gflops_breakdown"] = stats["breakdown"]
        report["all_expensive_gflops"] = all_expensive_gflops(grid, context)
        report["gflops_fraction_of_all_expensive"] = stats["gflops"] / report["all_expensive_gflops"]
    report["seam"] = seam_score(da.from_zarr(arrays["phases"]), grid)
    if truth_volume is not None:
        report["truth"] = str(truth)
        report["metrics"] = score_labels(arrays["phases"], truth, phases)
    report["timings"]["total_s"] = time.perf_counter() - started
    report["voxels_per_s"] = voxels / compute_seconds
    root.attrs["matseg"] = {
        **report,
        "status": "complete",
        "cheap_pass": fingerprint,
        "rewritten": root.attrs["matseg"].get("rewritten", []) if plan is not None else [],
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _key(stage: str, index) -> str:
    return f"matseg-{stage}-{'-'.join(map(str, index))}"


def _norm_dict(norm: Normalization) -> dict:
    return {"low": norm.low, "high": norm.high, "thresholds": list(norm.thresholds)}


def _sum_stats(results) -> dict:
    seconds: dict[str, float] = {}
    for r in results:
        for name, s in r["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + s
    return {
        "counts": np.sum([r["counts"] for r in results], axis=0),
        "gflops": float(sum(r["gflops"] for r in results)),
        "seconds": seconds,
    }


def _fingerprint(input, volume: Volume, cheap, names, tile, halo) -> dict:
    """What a stored cheap pass depends on: the same input, cheap weights, candidates and tiling."""
    return {
        "input": canonical_source(input),
        "candidates": list(names),
        "shape": list(volume.shape),
        "dtype": str(volume.data.dtype),
        "cheap_sha256": cheap.sha256,
        "tile": list(tile),
        "halo": halo,
        "version": __version__,
    }


def _stored_cheap_pass(out: Path, fingerprint: dict, overwrite: bool) -> dict | None:
    """The attributes of a reusable cheap pass in ``out``, or None to start afresh."""
    attrs = run_attrs(out)
    if attrs.get("cheap_pass") != fingerprint or attrs.get("status") not in (
        "cheap-pass",
        "running-candidates",
        "complete",
    ):
        return None
    if attrs["status"] != "cheap-pass" and not overwrite:
        raise MatsegError(
            f"output {out} exists; pass --overwrite to replace it (its cheap pass will be reused)"
        )
    return attrs


def _run_cheap_pass(root, blocks, indices, grid, norm, context, arrays, workers, progress) -> dict:
    tasks = [
        dask.delayed(_cheap_task)(blocks[i], i, grid, norm, context, arrays, dask_key_name=_key("cheap", i))
        for i in indices
    ]
    with _progress(progress):
        results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    cheap = {
        "features": np.stack([r["features"] for r in results]),
        "counts": np.stack([r["counts"] for r in results]).astype(np.int64),
        "gflops": np.array([r["gflops"] for r in results]),
        "seconds": np.array([r["seconds"]["cheap"] for r in results]),
    }
    group = root.require_group("selector")
    for name, values in cheap.items():
        group.create_array(name, data=values, overwrite=True)
    n_cand = len(root["labels/decisions"].attrs["matseg"]["candidates"])
    group.create_array("gain", shape=(len(indices), n_cand), dtype="float32", overwrite=True)
    group.create_array("choice", shape=(len(indices),), dtype="uint8", overwrite=True)
    return cheap


def _load_cheap_pass(root) -> dict:
    group = root["selector"]
    return {name: group[name][:] for name in ("features", "counts", "gflops", "seconds")}


def _halo_blocks(data: da.Array, grid: TileGrid) -> tuple[TileGrid, np.ndarray]:
    return grid, overlapped_tiles(data, grid).to_delayed()


def _run_stage2(
    plan, rewrite, cheap, data, indices, grid, norm, context, names, arrays, workers, progress
) -> dict:
    choice = {idx: int(c) for idx, c in zip(indices, plan["choice"])}
    # every candidate reads its tiles with its own halo; blending needs the band only
    tiles = {n: _halo_blocks(data, candidate_grid(grid, n, context)) for n in names}
    costly = {
        idx: dask.delayed(_candidate_task)(
            tiles[names[k]][1][idx],
            idx,
            tiles[names[k]][0],
            norm,
            context,
            CANDIDATES[names[k]],
            BAND,
            dask_key_name=_key("candidate", idx),
        )
        for idx, k in choice.items()
        if k > 0
    }
    tasks = []
    for idx in sorted(rewrite):
        mine = choice[idx]
        neighbours = {
            j: costly[j] for j in neighbour_indices(grid, idx).values() if choice[j] not in (0, mine)
        }
        tasks.append(
            dask.delayed(_finish_task)(
                tiles["cheap"][1][idx],
                idx,
                tiles["cheap"][0],
                norm,
                context,
                names,
                BAND,
                choice,
                costly.get(idx),
                neighbours,
                arrays,
                dask_key_name=_key("finish", idx),
            )
        )
    with _progress(progress):
        results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    position = {idx: t for t, idx in enumerate(indices)}
    counts = cheap["counts"].copy()
    for idx, r in zip(sorted(rewrite), results):
        counts[position[idx]] = r["counts"]
    stage2 = _sum_stats(results) if results else {"gflops": 0.0, "seconds": {}}
    seconds = dict(stage2["seconds"])
    seconds["cheap"] = seconds.get("cheap", 0.0) + float(cheap["seconds"].sum())
    cheap_gflops = float(cheap["gflops"].sum())
    breakdown = {
        "cheap_pass": cheap_gflops,
        "selector": plan["policy_gflops"],
        "candidates_and_blending": stage2["gflops"],
    }
    return {
        "counts": counts.sum(axis=0),
        "gflops": cheap_gflops + plan["policy_gflops"] + stage2["gflops"],
        "seconds": seconds,
        "breakdown": breakdown,
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
        own_grid, blocks = _halo_blocks(data, candidate_grid(grid, names[k], context))
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


def _dry_run_report(
    input, output, volume, grid, halo, tile, plan, cheap, estimate, names, models, selector
) -> dict:
    return {
        "dry_run": True,
        "input": {"source": str(input), "shape": list(volume.shape)},
        "output": str(output),
        "models": [m.describe() for m in models.values()],
        "selector": selector.describe() | {"lambda": plan["lambda"]},
        "tile": list(tile),
        "halo": halo,
        "tiles": grid.n_tiles,
        "voxels": int(np.prod(volume.shape)),
        "decisions": {n: int((plan["choice"] == k).sum()) for k, n in enumerate(names)},
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
