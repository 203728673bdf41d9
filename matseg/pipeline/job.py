"""A prepared run: its volume, models, tile grid and identity, checked before anything is written."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from matseg._version import __version__
from matseg.candidates.registry import CANDIDATES, Context
from matseg.errors import MatsegError
from matseg.io.paths import check_distinct
from matseg.io.read import Volume, canonical_source, fingerprint, open_volume
from matseg.io.region import Region, as_pairs, crop, parse_region, whole
from matseg.io.scale import VoxelSize
from matseg.io.write import check_output
from matseg.metrics import match_truth
from matseg.models.inference import inference_device
from matseg.models.store import default_weights_dir, load_segmenter, read_manifest
from matseg.pipeline.settings import Settings
from matseg.selector.plan import cheap_pass_gflops, check_budget
from matseg.selector.policy import Selector, check_pairing, load_selector
from matseg.tiling import TileGrid, default_tile, plan_tiles
from matseg.validate import check_label_values


@dataclass(frozen=True)
class Job:
    """A run's inputs and settings, checked before anything is written."""

    input: str | os.PathLike
    output: Path
    settings: Settings
    volume: Volume
    selector: Selector | None
    names: tuple[str, ...]  # the candidates (``(model,)`` for one model on every tile)
    models: dict
    phases: tuple[str, ...]
    context: Context
    tile: tuple[int, ...]
    halo: int
    grid: TileGrid
    truth: str | os.PathLike | None
    truth_phases: tuple[str, ...] | None  # --truth-phases: the names of the truth's values 0, 1, ...
    identity: dict  # an unfinished output with the same identity is resumed
    cheap_identity: dict | None  # what a stored cheap pass depends on (reused across λ and budgets)
    region: Region | None = None  # --region: the box of the input segmented (``volume`` is cut to it)

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def indices(self) -> list[tuple[int, ...]]:
        return list(self.grid.indices())


def halo_of(model: str, context: Context, names: Sequence[str]) -> int:
    """A run's default and least halo: for ``auto``, the largest of its candidates' (each at
    least the blending band); for one model on every tile, what makes tiling exact, with no
    band to add: the net's radius, twice the expensive net's for ``expensive-2x`` (it runs at
    half scale, where the candidate's own halo leaves the rest to blending), the classical
    candidate's halo, and a flip-averaged net's own radius (mirroring keeps it)."""
    models = context.models
    if model == "auto":
        return max(CANDIDATES[n].halo(context) for n in names)
    if model == "expensive-2x":
        return 2 * models["expensive"].halo
    if model == "classical":
        return CANDIDATES["classical"].halo(context)
    return models[CANDIDATES[model].needs[0]].halo


def weights_phases(weights) -> tuple[str, ...]:
    """The phases the segmenters of ``weights`` (default: bundled) name, read from the manifest alone."""
    entries = read_manifest(weights if weights is not None else default_weights_dir()).values()
    named = [tuple(e["phases"]) for e in entries if isinstance(e, dict) and e.get("phases")]
    if not named:
        raise MatsegError(f"weights {weights} name no phases; give the volume's phases with --phases")
    return named[0]


def recorded_phase_order(weights, settings: Settings) -> tuple[int, ...]:
    """The phases' order from dark to bright that the weights' selector recorded from its
    labelled data (the classical candidate's classes, darkest first, are these phases), for a
    run without the selector: ``--model classical`` on a lab's weights whose phases are not in
    intensity order. None recorded, or phases named with ``--phases``: their given order."""
    if settings.phases is not None:
        return ()
    entry = read_manifest(weights if weights is not None else default_weights_dir()).get("selector")
    return tuple(entry.get("phase_order", ())) if isinstance(entry, dict) else ()


def prepare(
    input,
    output,
    settings: Settings,
    truth,
    voxel_size: VoxelSize | None = None,
    truth_phases: Sequence[str] | None = None,
    region: str | Sequence | None = None,
) -> Job:
    """The run ``settings`` ask for on ``input``, with everything it needs loaded and checked
    (``voxel_size``, if given, replaces the one the input records; ``truth_phases`` names the
    values of a ``truth`` that names none; ``region``, :func:`matseg.io.region.parse_region`,
    cuts the input, and a truth of the input's shape, to a box)."""
    if truth_phases is not None and truth is None:
        raise MatsegError("--truth-phases names the phases of a --truth: give the truth too")
    model, lam, budget_gflops = settings.model, settings.lam, settings.budget_gflops
    max_expensive_fraction, weights = settings.max_expensive_fraction, settings.weights
    tile, halo = settings.tile, settings.halo
    check_distinct(output, [("input", input), ("--truth", truth), ("--weights", weights)])
    inference_device()  # a bad $MATSEG_DEVICE fails here, before anything is written
    whole_volume = open_volume(input)
    if voxel_size is not None:
        # the input's recorded offset is in its recorded units: dropped with them
        whole_volume = replace(whole_volume, voxel_size=voxel_size.for_ndim(whole_volume.ndim), offset=None)
    if region is not None:
        region = parse_region(region, whole_volume.shape)
        region = None if whole(region, whole_volume.shape) else region
    volume = crop(whole_volume, region) if region else whole_volume
    selector = load_selector(weights) if model == "auto" else None
    names = tuple(selector.candidates) if selector else (model,)
    needed = {m for n in names for m in CANDIDATES[n].needs}
    if selector is not None:
        needed.add("cheap")
    models = {m: load_segmenter(m, weights) for m in sorted(needed)}
    if selector is not None:
        check_pairing(selector, models)
        if settings.reference is None:
            settings = replace(settings, reference=selector.most_accurate())
        if settings.audit_fraction > 0 and settings.reference not in names:
            raise MatsegError(
                f"--reference {settings.reference} is not one of the selector's candidates "
                f"({', '.join(names[1:])}); choose one of them, or --audit-fraction 0"
            )
    # the classical candidate alone loads no network: its phases are named, or those of the weights
    phases = (
        tuple(next(iter(models.values())).phases) if models else settings.phases or weights_phases(weights)
    )
    if truth is not None:
        truth_volume = open_volume(truth, labels=True)
        if truth_volume.shape != whole_volume.shape:
            raise MatsegError(
                f"truth {truth} has shape {truth_volume.shape}; the input has {whole_volume.shape}"
                + (" (the truth is cut to --region as the input is)" if region else "")
            )
        match_truth(truth_volume.phases, phases, str(truth), truth_phases)  # other names: refused
        truth_data = truth_volume.data[region] if region else truth_volume.data
        check_label_values(truth_data, len(phases), str(truth), "--truth")
    phase_order = selector.phase_order if selector else ()
    if model == "classical":
        phase_order = recorded_phase_order(weights, settings)
    context = Context(models, phase_order=phase_order, phases=phases)
    tile = tuple(tile) if tile else default_tile(volume.ndim)
    min_halo = halo_of(model, context, names)
    if halo is None:
        halo = min_halo
    elif halo < min_halo:
        raise MatsegError(
            f"halo {halo} is smaller than the receptive radius of --model {model}; use {min_halo}"
        )
    stride = max((m.stride for m in models.values()), default=1)
    grid = plan_tiles(volume.shape, tile, halo, stride)
    if budget_gflops is not None:  # known before anything runs: the cheap pass's cost is its tiles' shapes
        check_budget(
            budget_gflops, float(cheap_pass_gflops(grid, context).sum()) + selector.gflops(grid.n_tiles)
        )
    out = Path(str(output))
    # not an input; whether it can be written matters once the run knows it will write
    check_output(out, overwrite=True, inputs=[str(input)], writable=False)
    identity = {
        "input": canonical_source(input),
        "input_contents": fingerprint(whole_volume),  # the same name written again is another input
        "shape": list(volume.shape),
        "dtype": str(volume.data.dtype),
        "model": model,
        "candidates": list(names),
        "weights_sha256": {name: m.sha256 for name, m in models.items()},
        "selector_sha256": selector.sha256 if selector else None,
        "tile": list(tile),
        "halo": halo,
        # λ as the plan takes it: the selector's default spelt out (--lambda 0.1) is the same run
        "lambda": selector.default_lambda
        if lam is None and selector is not None and budget_gflops is None and max_expensive_fraction is None
        else lam,
        "budget_gflops": budget_gflops,
        "max_expensive_fraction": max_expensive_fraction,
        "version": __version__,
        # the output's scale and units: a run given another voxel size is another run (refused
        # without --overwrite), never a finished one that keeps the old scale and says "these settings"
        "voxel_size": volume.voxel_size.describe() if volume.voxel_size else None,
    }
    if volume.offset:  # where the output lies (the input's translation, the box's place)
        identity["offset"] = list(volume.offset)
    if region:  # a box of the input: another run than the whole (the key only then: older outputs resume)
        identity["region"] = as_pairs(region)
    if settings.phases is not None:
        identity["phases"] = list(phases)
    if model == "classical" and phase_order:
        identity["phase_order"] = list(phase_order)
    if selector is not None:
        identity["audit"] = {
            "fraction": settings.audit_fraction,
            "reference": settings.reference,
            "seed": settings.audit_seed,
            "tolerance": settings.tolerance,
            "recalibrate": settings.recalibrate,
        }
    cheap_identity = None  # what a cheap pass depends on: the run's settings but λ, budget, costlier weights
    if selector is not None:
        kept = ("input", "input_contents", "candidates", "shape", "dtype", "tile", "halo", "version")
        kept += ("region",)
        cheap_identity = {k: identity[k] for k in kept if k in identity}
        cheap_identity["cheap_sha256"] = models["cheap"].sha256
    return Job(
        input, out, settings, volume, selector, names, models, phases, context, tile, halo, grid,
        truth, tuple(truth_phases) if truth_phases is not None else None, identity, cheap_identity, region,
    )  # fmt: skip
