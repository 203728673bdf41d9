"""``matseg sample``, ``segment`` and ``batch``: volumes in, phase labels out."""

from __future__ import annotations

import click

from matseg.cli.options import (
    TILE_TEXT,
    TRUTH_PHASES_HELP,
    SizesCommand,
    cluster_options,
    cluster_spec,
    command_line,
    ints,
    model_option,
    names_of,
    sizes,
    tile_for,
    tolerance_of,
    verbosity_options,
    voxel_size_of,
    voxel_size_options,
)
from matseg.console import format_dry_run, format_report
from matseg.defaults import DEFAULT_TOLERANCE
from matseg.errors import MatsegError
from matseg.terminal import StageBars, fit_warning_in_summary


@click.command(cls=SizesCommand)
@click.argument("output", type=click.Path())
@click.option(
    "--shape",
    "shape",
    callback=sizes,
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
@voxel_size_options
@verbosity_options
def sample(output, shape, seed, config_path, profile, overwrite, voxel_size_text, unit) -> None:
    """Write a synthetic 3-phase battery-cathode volume with ground truth.

    OUTPUT is an OME-Zarr image (uint8) whose ground truth is the label image
    'truth' (0 pore, 1 carbon-binder, 2 active); 'difficulty' maps clean (0)
    to artefact-heavy (1) regions.
    """
    import dataclasses

    from matseg.sample import load_sample_config, write_sample

    config = load_sample_config(config_path)
    if profile:
        config = dataclasses.replace(config, profile=profile)
    voxel_size = voxel_size_of(voxel_size_text, unit)
    path = write_sample(output, shape, seed, config, overwrite=overwrite, voxel_size=voxel_size)
    click.echo(f"wrote {path} (shape {' x '.join(map(str, shape))}, seed {seed})")


@click.command()
@click.argument("input", type=str)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="OME-Zarr store (a folder) to create, e.g. phases.zarr; not out.h5 or out.tif.",
)
@model_option("auto: the selector picks a candidate per tile; otherwise this candidate on every tile.")
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
@click.option("--tile", "tile_text", help=f"Tile size: 256 (in-plane) or Z,Y,X (default {TILE_TEXT}).")
@click.option("--halo", type=int, help="In-plane halo in voxels (default: the models' receptive radius).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Tiles processed at once (default: cores); with --cluster: worker processes (local) "
    "or jobs (slurm).",
)
@click.option(
    "--truth",
    help="Ground-truth labels (or a 'matseg sample' store) to score against; phases matched by name "
    "where it names them (or --truth-phases does), else by label value (the summary says so).",
)
@click.option("--truth-phases", "truth_phases_text", metavar="A,B,C", help=TRUTH_PHASES_HELP)
@click.option(
    "--region",
    metavar="Z0:Z1,Y0:Y1,X0:X1",
    help="Segment this box of INPUT only, e.g. 100:300,512:1536,512:1536 (voxel indices, the stop "
    "left out; ':' or nothing for a whole axis; Y0:Y1,X0:X1 for an image): to try settings on a few "
    "slices, or to leave out the margins around a scan. The box is segmented as a volume of its own "
    "(the labels of the box saved alone: its intensity range, no context beyond its edges); OUTPUT "
    "holds it, placed where it lies in INPUT (its NGFF translation); a --truth of INPUT's shape is "
    "cut to it too.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUTPUT if it is finished or of other settings (reusing its cheap pass).",
)
@click.option(
    "--no-bars", is_flag=True, help="No progress bars: a log line as each stage ends (for batch job logs)."
)
@click.option(
    "--phases",
    help="With --model classical: the volume's phase names, dark to bright, e.g. particle,background "
    "(as many as it has intensity classes); no network weights are needed. Default: the weights' phases.",
)
@click.option(
    "--audit-fraction",
    type=float,
    default=0.03,
    show_default=True,
    help="With --model auto: the fraction of the cells not sent to --reference that it also runs on "
    "(a stratified random draw; its answer is kept there), to estimate how far the run's mIoU falls "
    "below an all-reference run's, with a 95 % interval. 0: no audit.",
)
@click.option(
    "--reference",
    help="The candidate the audit measures against (the most accurate one). Default: the one that "
    "scored best on the selector's own labelled training tiles (expensive for the bundled weights).",
)
@click.option(
    "--tolerance",
    "tolerance_text",
    default="off" if DEFAULT_TOLERANCE is None else str(DEFAULT_TOLERANCE),
    show_default=True,
    help="With --model auto, e.g. 0.01: the most mIoU the run may lose against an all-reference run, "
    "at 95 % confidence. Where the audit's interval reaches lower, strata of tiles move to costlier "
    "candidates until it does not. 'off': --recalibrate decides.",
)
@click.option(
    "--recalibrate/--no-recalibrate",
    default=True,
    show_default=True,
    help="With --model auto, an audit, λ and no --tolerance: each stratum of tiles takes the candidate "
    "the selector's own λ trade-off picks with the gains the audit measured on this volume instead of "
    "the ones the policy predicted. --no-recalibrate: the selector's plan stands whatever the audit finds.",
)
@voxel_size_options
@verbosity_options
@cluster_options
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
    truth_phases_text,
    region,
    overwrite,
    no_bars,
    phases,
    audit_fraction,
    reference,
    tolerance_text,
    recalibrate,
    voxel_size_text,
    unit,
    **cluster,
) -> None:
    """Segment INPUT into phases and write OUTPUT (OME-Zarr).

    INPUT is a Zarr or OME-Zarr store (store.zarr, store.zarr:/path), an HDF5
    dataset (file.h5:/dataset), a TIFF stack, or a folder of TIFF files, one
    slice each (stacked in natural order).

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

    tile = ints(tile_text, "--tile")
    if tile is not None and len(tile) == 1:
        tile = tile * 2
    if tile is not None and len(tile) == 2:
        tile = tile_for(input, tile, default_tile)
    names = tuple(p.strip() for p in phases.split(",")) if phases else None
    truth_phases = names_of(truth_phases_text, "--truth-phases")
    settings = Settings(
        model=model,
        lam=lam,
        budget_gflops=budget_gflops,
        max_expensive_fraction=max_expensive_fraction,
        weights=weights,
        tile=tile,
        halo=halo,
        phases=names,
        audit_fraction=audit_fraction,
        reference=reference,
        tolerance=tolerance_of(tolerance_text),
        recalibrate=recalibrate,
    )
    voxel_size = voxel_size_of(voxel_size_text, unit)
    bars = StageBars(not no_bars and not click.get_current_context().meta.get("matseg.quiet"))
    try:
        with fit_warning_in_summary():  # said once, in the summary's fit line
            report = run_segment(
                input,
                output,
                settings,
                dry_run=dry_run,
                overwrite=overwrite,
                workers=workers if not cluster["kind"] else None,
                cluster=cluster_spec(workers, cluster),
                truth=truth,
                truth_phases=truth_phases,
                voxel_size=voxel_size,
                region=region,
                progress=bars,
                command=command_line(),
            )
    finally:
        bars.close()
    # a dry run of a finished output: nothing to estimate, the finished run's report is shown
    click.echo(format_dry_run(report) if dry_run and "expected" in report else format_report(report))


@click.command()
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
@model_option("As for 'matseg segment'.")
@click.option("--lambda", "lam", type=float, help="As for 'matseg segment'.")
@click.option("--weights", type=click.Path(file_okay=False), help="Weights folder (default: bundled).")
@click.option("--tile", "tile_text", help=f"Tile size Z,Y,X (default {TILE_TEXT}).")
@click.option("--workers", type=click.IntRange(min=1), help="Tiles processed at once (default: cores).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace outputs that hold other runs (finished ones of other settings included); without "
    "it they fail, and only finished runs of these settings are skipped.",
)
@click.option("--count", is_flag=True, help="Print the number of jobs and run none (for a job array's size).")
@verbosity_options
def batch(
    manifest, pattern, output_dir, index, model, lam, weights, tile_text, workers, overwrite, count
) -> None:
    """Segment many volumes: the jobs of MANIFEST (YAML list of {input, output},
    or CSV with columns input,output) or of --glob. A finished output of the same
    input and settings is skipped, an unfinished one resumed; an output of other
    settings fails unless --overwrite.

    \b
    Examples:
      matseg batch jobs.yaml
      matseg batch --glob 'scans/*.zarr' --output-dir phases/
      matseg batch jobs.csv --index $SLURM_ARRAY_TASK_ID     # one job per array task
      sbatch --array=0-$(( $(matseg batch jobs.csv --count) - 1 )) segment-array.sbatch jobs.csv
    """
    from matseg.batch import batch as run
    from matseg.batch import glob_jobs, read_jobs

    if bool(manifest) == bool(pattern):
        raise click.UsageError("give a MANIFEST or --glob PATTERN (with --output-dir), not both")
    if pattern and not output_dir:
        raise click.UsageError("--glob needs --output-dir")
    jobs = read_jobs(manifest) if manifest else glob_jobs(pattern, output_dir)
    if count:
        click.echo(len(jobs))
        return
    results = run(
        jobs,
        index=index,
        model=model,
        lam=lam,
        weights=weights,
        tile=ints(tile_text, "--tile"),
        workers=workers,
        overwrite=overwrite,
        progress=StageBars(False),  # a line as each stage of a job ends: a batch's log is a file
        command=command_line(),
    )
    states = [r["state"] for r in results]
    click.echo(", ".join(f"{states.count(s)} {s}" for s in ("done", "skipped", "failed")))
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        raise MatsegError(f"{len(failed)} of {len(results)} jobs failed; first: {failed[0]['error']}")
