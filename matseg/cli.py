"""The ``matseg`` command: parse, call the library, report.

Exit codes: 0 success, 2 bad input or usage (one line, no traceback, nothing
changed), 1 internal error.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys

import click

from matseg._version import __version__
from matseg.console import (
    StageBars,
    format_dry_run,
    format_evaluation,
    format_measure,
    format_report,
    setup_logging,
)
from matseg.defaults import DEFAULT_TILE
from matseg.errors import MatsegError

_TILE_TEXT = ",".join(map(str, DEFAULT_TILE))


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 256 or {_TILE_TEXT}, got '{text}'", param_hint=name
        ) from None
    if not values:
        raise click.BadParameter("no sizes given", param_hint=name)
    return values


class _SizesCommand(click.Command):
    """A command whose ``sizes_options`` take 2 or 3 integers: ``--shape 32 256 256``.

    Click has no option with a variable number of values (by design:
    pallets/click#1351), so the integers that follow such an option are joined into
    one value (``32,256,256``) before click parses the arguments.
    """

    sizes_options = ("--shape",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        joined, i = [], 0
        while i < len(args):
            joined.append(args[i])
            if args[i] in self.sizes_options:
                values = []
                while i + 1 < len(args) and args[i + 1].isdigit():
                    values.append(args[i + 1])
                    i += 1
                if values:
                    joined.append(",".join(values))
            i += 1
        return super().parse_args(ctx, joined)


def _sizes(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected integers, got {value}", ctx, param) from None


def _set_verbosity(ctx: click.Context, param, value) -> None:
    """``-v``: debug lines too; ``--quiet``: no progress (bars or per-stage lines), only the
    library's notices (a resumed run, a cluster's dashboard), warnings and errors."""
    if not value or ctx.resilient_parsing:
        return
    if param.name == "quiet":
        logging.getLogger("matseg.progress").setLevel(logging.WARNING)
        ctx.meta["matseg.quiet"] = True
    else:
        logging.getLogger("matseg").setLevel(logging.DEBUG)


def _verbosity_options(command):
    """``-v/--verbose`` and ``--quiet`` on a command."""
    command = click.option(
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_set_verbosity,
        help="No progress bars or per-stage lines; notices, warnings and errors only.",
    )(command)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_set_verbosity,
        help="Debug log lines too.",
    )(command)


def _progress() -> StageBars:
    """Progress bars named by stage, unless ``--quiet`` was given."""
    return StageBars(not click.get_current_context().meta.get("matseg.quiet"))


def _command_line() -> str:
    return "matseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _model_option(help: str):
    """``--model``: the selector (auto) or one candidate on every tile."""
    choices = ["auto", "cheap", "medium", "expensive", "expensive-2x", "classical"]
    return click.option("--model", type=click.Choice(choices), default="auto", show_default=True, help=help)


def _cluster_options(command):
    """``--cluster`` and the settings of the dask cluster it starts."""
    options = [
        click.option(
            "--cluster",
            "kind",
            metavar="local|slurm|tcp://HOST:PORT",
            help="Run on dask.distributed: worker processes here, SLURM jobs (dask-jobqueue), "
            "or a running scheduler (default: threads in this process).",
        ),
        click.option(
            "--cluster-config",
            "config",
            type=click.Path(dir_okay=False),
            help="YAML of cluster settings (SLURMCluster's: queue, account, walltime, cores, memory, "
            "job_extra_directives...; and workers, costly_workers, costly).",
        ),
        click.option(
            "--costly-workers",
            type=click.IntRange(min=0),
            help="A second pool of this many workers (jobs) for the costlier candidates; the cheap "
            "pass and blending stay on the first (dask worker resources).",
        ),
        click.option("--memory", help="Memory per worker (local) or job (slurm), e.g. 4GB."),
        click.option("--cores", type=click.IntRange(min=1), help="slurm: cores per job."),
        click.option("--queue", help="slurm: partition."),
        click.option("--account", help="slurm: account to charge."),
        click.option("--walltime", help="slurm: time limit per worker job, e.g. 01:00:00."),
        click.option(
            "--job-extra",
            "job_extra_directives",
            multiple=True,
            help="slurm: extra #SBATCH directive for worker jobs (repeatable), e.g. '--gres=gpu:1'.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cluster_spec(workers, options: dict):
    from matseg.cluster import ClusterSpec

    options = dict(options)
    return ClusterSpec.from_options(options.pop("kind"), options.pop("config"), workers=workers, **options)


def _voxel_size_options(command):
    """``--voxel-size`` and ``--unit``: the physical size of a voxel, for the output's metadata."""
    command = click.option(
        "--unit",
        help="Unit of --voxel-size: nm, um (default), mm, angstrom or an OME-NGFF unit name.",
    )(command)
    return click.option(
        "--voxel-size",
        "voxel_size_text",
        metavar="Z,Y,X",
        help="Physical voxel size (one value for all axes, or Z,Y,X), recorded as the output's "
        "scale; default: what the input records, if anything.",
    )(command)


def _voxel_size(text: str | None, unit: str | None):
    from matseg.io.scale import parse_voxel_size

    if text is None:
        if unit is not None:
            raise MatsegError(f"--unit {unit} needs --voxel-size (the size of a voxel in that unit)")
        return None
    return parse_voxel_size(text, unit)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="matseg")
def cli() -> None:
    """Segment materials-microscopy volumes (FIB-SEM, X-ray CT) into phases.

    \b
    Typical use:
      matseg sample cathode.zarr --shape 32 256 256 --seed 1
      matseg segment cathode.zarr -o phases.zarr --truth cathode.zarr
      matseg train image.zarr --labels labels.zarr -o my-weights/

    Inputs are read lazily and never changed: Zarr v2/v3 (store.zarr or
    store.zarr:/path), OME-Zarr (level 0), HDF5 (file.h5:/dataset), TIFF.
    """


@cli.command(cls=_SizesCommand)
@click.argument("output", type=click.Path())
@click.option(
    "--shape",
    "shape",
    callback=_sizes,
    required=True,
    metavar="Z Y X",
    help="Volume shape: Z Y X, or Y X for 2-D (e.g. --shape 32 256 256).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same volume.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML of generator settings (see data/sample.yaml).",
)
@click.option(
    "--profile",
    type=click.Choice(["train", "test", "wide"]),
    default=None,
    help="Imaging-parameter ranges: 'test' ranges are disjoint from 'train'; 'wide' spans much "
    "more (half the contrast, strong blur, noise, shading), to test robustness.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_voxel_size_options
@_verbosity_options
def sample(output, shape, seed, config_path, profile, overwrite, voxel_size_text, unit) -> None:
    """Write a synthetic 3-phase battery-cathode volume with ground truth.

    OUTPUT is an OME-Zarr image (uint8) whose ground truth is the label image
    'truth' (0 pore, 1 carbon-binder, 2 active); 'difficulty' maps clean (0)
    to artefact-heavy (1) regions.
    """
    import dataclasses

    from matseg.sample import load_sample_config, write_sample

    if len(shape) not in (2, 3) or min(shape) < 1:
        raise click.UsageError(f"--shape takes 2 (Y X) or 3 (Z Y X) positive sizes, got {shape}")
    config = load_sample_config(config_path)
    if profile:
        config = dataclasses.replace(config, profile=profile)
    voxel_size = _voxel_size(voxel_size_text, unit)
    path = write_sample(output, shape, seed, config, overwrite=overwrite, voxel_size=voxel_size)
    click.echo(f"wrote {path} (shape {' x '.join(map(str, shape))}, seed {seed})")


@cli.command()
@click.argument("input", type=str)
@click.option("-o", "--output", required=True, type=click.Path(), help="OME-Zarr store to create.")
@_model_option("auto: the selector picks a candidate per tile; otherwise this candidate on every tile.")
@click.option(
    "--lambda",
    "lam",
    type=float,
    help="Accuracy/cost trade-off in [0, 1] for --model auto; higher spends less "
    "(default: the selector's own, recorded when it was trained).",
)
@click.option("--budget-gflops", type=float, help="Instead of --lambda: never spend more GFLOPs than this.")
@click.option(
    "--max-expensive-fraction",
    type=float,
    help="Instead of --lambda: at most this fraction of tiles gets a costlier candidate.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the cheap pass and the selector only; print the expected GFLOPs, time, memory "
    "and mix. The cheap pass is kept in OUTPUT and reused by the real run.",
)
@click.option(
    "--weights",
    type=click.Path(file_okay=False),
    help="Weights folder from 'matseg train' (default: bundled weights).",
)
@click.option("--tile", "tile_text", help=f"Tile size: 256 (in-plane) or Z,Y,X (default {_TILE_TEXT}).")
@click.option("--halo", type=int, help="In-plane halo in voxels (default: the models' receptive radius).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Tiles processed at once (default: cores); with --cluster: worker processes (local) "
    "or jobs (slurm).",
)
@click.option("--truth", help="Ground-truth labels (or a 'matseg sample' store) to score against.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUTPUT if it is finished or of other settings (reusing its cheap pass).",
)
@click.option(
    "--no-bars", is_flag=True, help="No progress bars: a log line as each stage ends (for batch job logs)."
)
@_voxel_size_options
@_verbosity_options
@_cluster_options
def segment(
    input,
    output,
    model,
    lam,
    budget_gflops,
    max_expensive_fraction,
    dry_run,
    weights,
    tile_text,
    halo,
    workers,
    truth,
    overwrite,
    no_bars,
    voxel_size_text,
    unit,
    **cluster,
) -> None:
    """Segment INPUT into phases and write OUTPUT (OME-Zarr).

    OUTPUT holds labels/phases (uint8 phase labels), labels/decisions (the
    candidate used on each tile), the cheap pass's uncertainty (uint8, 0
    certain .. 255 uniform) as its image, the selector's per-tile features,
    expected gain and choice (selector/), per-tile progress records
    (progress/) and the provenance report (matseg-report.json and attributes).

    A run that was killed resumes when the same command is run again: only
    its unfinished tiles are computed, and the result is the same as an
    uninterrupted run's.

    \b
    On a cluster (dask.distributed):
      matseg segment big.zarr -o phases.zarr --cluster local --workers 4
      matseg segment big.zarr -o phases.zarr --cluster slurm --cluster-config cluster.yaml
      matseg segment big.zarr -o phases.zarr --cluster tcp://scheduler:8786
    """
    from matseg.pipeline.run import segment as run_segment
    from matseg.pipeline.settings import Settings
    from matseg.tiling import default_tile

    tile = _ints(tile_text, "--tile")
    if tile is not None and len(tile) == 1:
        tile = tile * 2
    if tile is not None and len(tile) == 2:
        tile = _tile_for(input, tile, default_tile)
    settings = Settings(model, lam, budget_gflops, max_expensive_fraction, weights, tile, halo)
    voxel_size = _voxel_size(voxel_size_text, unit)
    bars = StageBars(not no_bars and not click.get_current_context().meta.get("matseg.quiet"))
    try:
        report = run_segment(
            input,
            output,
            settings,
            dry_run=dry_run,
            overwrite=overwrite,
            workers=workers if not cluster["kind"] else None,
            cluster=_cluster_spec(workers, cluster),
            truth=truth,
            voxel_size=voxel_size,
            progress=bars,
            command=_command_line(),
        )
    finally:
        bars.close()
    click.echo(format_dry_run(report) if dry_run else format_report(report))


@cli.command()
@click.argument("images", nargs=-1, required=False)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Weights folder to write (manifest.json + <model>.pt).",
)
@click.option(
    "--labels",
    multiple=True,
    help="Label volume for each IMAGE, in order (255 = unlabelled). "
    "Default: the image store's own label image, e.g. 'truth' of a sample.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    type=click.Choice(["cheap", "medium", "expensive"]),
    help="Segmenter(s) to train (repeat the option); default: both.",
)
@click.option(
    "--phases",
    help="Phase names for label values 0, 1, ... e.g. background,particle "
    "(default: from the label metadata).",
)
@click.option(
    "--val", multiple=True, help="Labelled validation volume(s); default: every 10th slice held out."
)
@click.option("--slices", "slices_text", help="Only these Z slices are labelled, e.g. 0,10,20.")
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Optimiser steps for each model.",
)
@click.option(
    "--steps-expensive", type=click.IntRange(min=1), help="Steps for the expensive model, if different."
)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Patches per step.")
@click.option(
    "--patch", type=click.IntRange(min=8), default=128, show_default=True, help="Patch size (pixels)."
)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and sampling.")
@click.option("--init", type=click.Path(file_okay=False), help="Fine-tune from this weights folder.")
@click.option(
    "--augment",
    default="none",
    show_default=True,
    metavar="none|light|strong|FILE.yaml",
    help="Imaging augmentation of the IMAGES' patches (blur, noise, shading, curtaining, contrast, "
    "...; docs/models.md); "
    "'none' keeps only flips, rotations and a linear intensity jitter.",
)
@click.option(
    "--from-corrections",
    "from_corrections",
    type=click.Path(),
    help="Fine-tune on a corrections store (saved by the napari plugin) instead of IMAGES: "
    "its corrected slices, from the weights that made the corrected output (or --init).",
)
@_verbosity_options
def train(
    images,
    output,
    labels,
    models,
    phases,
    val,
    slices_text,
    steps,
    steps_expensive,
    batch,
    patch,
    lr,
    seed,
    init,
    augment,
    from_corrections,
) -> None:
    """Train the segmenters on labelled IMAGES and write a weights folder.

    Works on any labelled volume that 'matseg segment' reads, with any number
    of phases; use the result with 'matseg segment --weights OUTPUT'. With
    --from-corrections, fine-tune on a reviewer's corrections instead.
    """
    from matseg.augment import load_augmentation
    from matseg.training import train as run_train

    augmentation = load_augmentation(augment)
    if from_corrections:
        if images or labels or val or slices_text or phases:
            raise click.UsageError(
                "--from-corrections takes its images, labels and slices from the corrections store; "
                "drop IMAGES, --labels, --val, --slices and --phases"
            )
        _finetune(from_corrections, output, models, steps, steps_expensive, batch, patch, lr, seed, init)
        return
    if not images:
        raise click.UsageError("give the labelled IMAGES to train on, or --from-corrections PATH")
    models = models or ("cheap", "medium", "expensive")
    step_counts = {m: (steps_expensive if m == "expensive" and steps_expensive else steps) for m in models}
    results = run_train(
        list(images),
        output,
        labels=list(labels) or None,
        models=models,
        phases=[p.strip() for p in phases.split(",")] if phases else None,
        val=list(val) or None,
        slices=_ints(slices_text, "--slices"),
        steps=step_counts,
        batch=batch,
        patch=patch,
        lr=lr,
        seed=seed,
        init=init,
        command=_command_line(),
        log=lambda m: click.echo(m, err=True),
        progress=_progress(),
        augment=augmentation,
    )
    for name, r in results.items():
        per_phase = ", ".join(f"{k} {v:.3f}" for k, v in r["iou"].items())
        click.echo(
            f"{name}: validation mIoU {r['miou']:.4f} ({per_phase}); {r['steps']} steps, "
            f"{r['seconds']:.0f} s -> {output}"
        )


def _finetune(corrections, output, models, steps, steps_expensive, batch, patch, lr, seed, init) -> None:
    from matseg.corrections import finetune_from_corrections

    results = finetune_from_corrections(
        corrections,
        output,
        models=models or None,
        init=init,
        steps={"cheap": steps, "expensive": steps_expensive or steps},
        batch=batch,
        patch=patch,
        lr=lr,
        seed=seed,
        command=_command_line(),
        log=lambda m: click.echo(m, err=True),
        progress=_progress(),
    )
    for name, r in results.items():
        click.echo(
            f"{name}: mIoU on the {len(r['slices'])} corrected slice(s) {r['miou_before']:.4f} -> "
            f"{r['miou_after']:.4f}; {r['steps']} steps, {r['seconds']:.0f} s -> {output}"
        )


@cli.command()
@click.argument("manifest", required=False)
@click.option(
    "--glob", "pattern", help="Instead of MANIFEST: every input matching this pattern, e.g. 'scans/*.zarr'."
)
@click.option(
    "--output-dir", type=click.Path(file_okay=False), help="With --glob: outputs go here as NAME-phases.zarr."
)
@click.option(
    "--index", type=click.IntRange(min=0), help="Run only job INDEX (0-based), e.g. $SLURM_ARRAY_TASK_ID."
)
@_model_option("As for 'matseg segment'.")
@click.option("--lambda", "lam", type=float, help="As for 'matseg segment'.")
@click.option("--weights", type=click.Path(file_okay=False), help="Weights folder (default: bundled).")
@click.option("--tile", "tile_text", help=f"Tile size Z,Y,X (default {_TILE_TEXT}).")
@click.option("--workers", type=click.IntRange(min=1), help="Tiles processed at once (default: cores).")
@_verbosity_options
def batch(manifest, pattern, output_dir, index, model, lam, weights, tile_text, workers) -> None:
    """Segment many volumes: the jobs of MANIFEST (YAML list of {input, output},
    or CSV with columns input,output) or of --glob; finished outputs are skipped.

    \b
    Examples:
      matseg batch jobs.yaml
      matseg batch --glob 'scans/*.zarr' --output-dir phases/
      matseg batch jobs.csv --index $SLURM_ARRAY_TASK_ID     # one job per array task
    """
    from matseg.batch import batch as run
    from matseg.batch import glob_jobs, read_jobs

    if bool(manifest) == bool(pattern):
        raise click.UsageError("give a MANIFEST or --glob PATTERN (with --output-dir), not both")
    if pattern and not output_dir:
        raise click.UsageError("--glob needs --output-dir")
    jobs = read_jobs(manifest) if manifest else glob_jobs(pattern, output_dir)
    results = run(
        jobs,
        index=index,
        model=model,
        lam=lam,
        weights=weights,
        tile=_ints(tile_text, "--tile"),
        workers=workers,
        command=_command_line(),
        log=lambda m: click.echo(m, err=True),
    )
    states = [r["state"] for r in results]
    click.echo(", ".join(f"{states.count(s)} {s}" for s in ("done", "skipped", "failed")))
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        raise MatsegError(f"{len(failed)} of {len(results)} jobs failed; first: {failed[0]['error']}")


@cli.command("train-selector")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--weights",
    required=True,
    type=click.Path(file_okay=False),
    help="Weights folder from 'matseg train'; the selector is written into it.",
)
@click.option("--labels", multiple=True, help="Label volume for each IMAGE (255 = unlabelled).")
@click.option("--slices", "slices_text", help="Only these Z slices are labelled, e.g. 0,10,20.")
@click.option(
    "--candidates",
    help="Candidates to choose from, cheap first, e.g. cheap,expensive,classical "
    "(default: cheap, medium, expensive, expensive-2x, classical, as far as --weights holds them).",
)
@click.option("--tile", "tile_text", default=_TILE_TEXT, show_default=True, help="Tile size Z,Y,X.")
@click.option("--steps", type=click.IntRange(min=1), default=4000, show_default=True, help="REINFORCE steps.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and sampling.")
@_verbosity_options
def train_selector(images, weights, labels, slices_text, candidates, tile_text, steps, seed) -> None:
    """Train the per-tile selector on labelled IMAGES for the segmenters in --weights.

    Every candidate runs on every tile of IMAGES (use volumes the segmenters
    were not trained on); the policy then learns by REINFORCE which candidate
    pays at each lambda.
    """
    from matseg.selector.train import train_selector as run

    record = run(
        list(images),
        weights,
        labels=list(labels) or None,
        slices=_ints(slices_text, "--slices"),
        candidates=[c.strip() for c in candidates.split(",")] if candidates else None,
        tile=_ints(tile_text, "--tile"),
        steps=steps,
        seed=seed,
        command=_command_line(),
        log=lambda m: click.echo(m, err=True),
    )
    last = record["history"][-1]
    rewards = ", ".join(f"{k[7:]} {v:+.4f}" for k, v in last.items() if k.startswith("reward@"))
    click.echo(
        f"selector: {record['tiles']} tiles, {record['steps']} steps, {record['seconds']:.0f} s; "
        f"greedy reward by lambda: {rewards} -> {weights}"
    )


@cli.command()
@click.argument("volumes", nargs=-1, required=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the results."
)
@click.option("--truth", "truths", multiple=True, help="Label volume for each VOLUME (default: its own).")
@click.option("--weights", type=click.Path(file_okay=False), help="Weights folder (default: bundled).")
@click.option(
    "--lambdas",
    default="0,0.002,0.005,0.01,0.015,0.02,0.03,0.05,0.1,0.3,1",
    show_default=True,
    help="λ sweep (the selector's default λ is always added).",
)
@click.option("--tile", "tile_text", default=_TILE_TEXT, show_default=True, help="Tile size Z,Y,X.")
@click.option("--no-real-run", is_flag=True, help="Skip the real segment runs (table numbers only).")
@_verbosity_options
def evaluate(volumes, output, truths, weights, lambdas, tile_text, no_real_run) -> None:
    """Compare the selector with all-cheap, all-expensive, random, cascade and oracle.

    Writes OUTPUT/evaluation.json and the Pareto plot OUTPUT/pareto.png.
    """
    from matseg.evaluate import evaluate as run

    try:
        sweep = [float(v) for v in lambdas.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {lambdas!r}") from None
    result = run(
        list(volumes),
        output,
        truths=list(truths) or None,
        weights=weights,
        lambdas=sweep,
        tile=_ints(tile_text, "--tile"),
        real_run=not no_real_run,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(format_evaluation(result))


def _tile_for(input, tile, default_tile):
    from matseg.io.read import open_volume

    ndim = open_volume(input).ndim
    return tile if ndim == 2 else default_tile(3)[:1] + tuple(tile)


@cli.command()
@click.argument("store", type=str)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Folder for measure.json, measure.csv and the plots "
    "(default: STORE's name with -measure, beside it).",
)
@click.option(
    "--labels",
    "as_labels",
    is_flag=True,
    help="STORE is any integer label volume (or a sample's truth), not a matseg output.",
)
@_voxel_size_options
@click.option("--phase", help="Phase of the diffusion solve, by name or index (default: pore, else 0).")
@click.option(
    "--tpb",
    "tpb_text",
    metavar="A,B,C",
    help="Phases of the triple-phase boundary (default: the three of a 3-phase volume).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Label volumes drawn from the uncertainty for the intervals (0: none).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option(
    "--max-radius",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Largest inscribed-sphere radius of the size distributions, in voxels.",
)
@click.option("--no-transport", is_flag=True, help="Skip the diffusion solves (tortuosity).")
@click.option("--no-connectivity", is_flag=True, help="Skip the connectivity (its global labelling).")
@click.option("--no-rev", is_flag=True, help="Skip the representative-volume curves.")
@click.option(
    "--tol",
    type=float,
    default=1e-8,
    show_default=True,
    help="Relative residual at which the diffusion solve stops.",
)
@click.option("--overwrite", is_flag=True, help="Replace the output folder's files if it exists.")
def measure(
    store,
    output,
    as_labels,
    voxel_size_text,
    unit,
    phase,
    tpb_text,
    samples,
    seed,
    max_radius,
    no_transport,
    no_connectivity,
    no_rev,
    tol,
    overwrite,
) -> None:
    """Microstructure metrics of a segmentation, with intervals from its uncertainty.

    Volume fractions, specific surface and interfacial areas, connectivity,
    tortuosity factor, size distributions (local thickness), triple-phase
    boundary density and representative-volume curves, in the store's physical
    units (see docs/measure.md for every definition).
    """
    from pathlib import Path

    import matseg

    given = _voxel_size(voxel_size_text, unit)
    voxel_size = given.for_ndim(3).values if given is not None else None
    tpb = tuple(p.strip() for p in tpb_text.split(",")) if tpb_text else None
    folder = (
        Path(output)
        if output
        else Path(store.rstrip("/")).with_name(Path(store.rstrip("/")).stem + "-measure")
    )
    if folder.exists() and not overwrite:
        raise MatsegError(
            f"output {folder} exists; pass --overwrite to replace its files, or -o another folder"
        )
    report = matseg.measure(
        store,
        labels=as_labels,
        voxel_size=voxel_size,
        unit=given.unit if given is not None else None,
        phase=phase,
        tpb=tpb,
        samples=samples,
        seed=seed,
        max_radius=max_radius,
        transport=not no_transport,
        connectivity=not no_connectivity,
        rev=not no_rev,
        tol=tol,
        log=lambda m: click.echo(m, err=True),
    )
    from matseg.microstructure import write_report

    files = write_report(report, folder)
    click.echo(format_measure(report))
    click.echo("wrote " + ", ".join(str(f) for f in files))


def _killed_worker() -> tuple[type, ...]:
    """dask.distributed's KilledWorker (a worker died on a task, again and again), if in use."""
    if "distributed" not in sys.modules:  # not imported: no cluster ran
        return ()
    from distributed import KilledWorker

    return (KilledWorker,)


def _gpu_out_of_memory() -> type:
    import torch

    return torch.OutOfMemoryError


# faults of the machine, not of matseg: said in one line, and the run is resumable
_FAULTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space within the quota",
    errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    errno.EROFS: "write to a writable file system",
}


def _fault_text(err: OSError) -> str | None:
    """One line for a disk-full or permission fault (None: not such a fault)."""
    if err.errno not in _FAULTS:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"{err.strerror or os.strerror(err.errno)}{where}; {_FAULTS[err.errno]} and run the same command "
        "again: a segment run keeps its finished tiles and resumes"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: map MatsegError to one line and exit code 2."""
    from matseg.malloc import tune_malloc

    tune_malloc()  # before any thread starts
    setup_logging()
    try:
        cli.main(args=argv, prog_name="matseg", standalone_mode=False)
    except MatsegError as err:
        click.echo("matseg: error: " + " ".join(str(err).split()), err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("matseg: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("matseg: interrupted", err=True)
        sys.exit(130)
    except OSError as err:
        text = _fault_text(err)
        if text is None:
            raise
        click.echo(f"matseg: error: {text}", err=True)
        sys.exit(2)
    except _killed_worker() as err:
        click.echo(
            f"matseg: error: a dask worker died running {err.args[0] if err.args else 'a task'} "
            "(killed, or out of memory); the finished tiles are kept: run the same command again",
            err=True,
        )
        sys.exit(2)
    except (MemoryError, _gpu_out_of_memory()) as err:
        # not bad input, but nothing a traceback explains better: a segment run keeps its finished tiles
        where = "this machine" if isinstance(err, MemoryError) else "the GPU"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        click.echo(
            f"matseg: error: {where} ran out of memory ({first}); a segment run keeps its finished "
            "tiles and resumes when run again, with fewer --workers (or MATSEG_DEVICE=cpu)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
