"""The ``matseg`` command: parse, call the library, report.

Exit codes: 0 success, 2 bad input or usage (one line, no traceback, nothing
changed), 1 internal error.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys

import click

from matseg import __version__
from matseg.errors import MatsegError
from matseg.tiling import DEFAULT_TILE

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


class _SizesOption(click.Option):
    """An option followed by 2 or 3 integers: ``--shape 32 256 256`` or ``--shape 256 256``."""

    def add_to_parser(self, parser, ctx):
        result = super().add_to_parser(parser, ctx)
        option = parser._long_opt[self.opts[0]]
        process = option.process

        def greedy(value, state):
            values = [value]
            while state.rargs and state.rargs[0].lstrip("-").isdigit() and not state.rargs[0].startswith("-"):
                values.append(state.rargs.pop(0))
            process(values, state)

        option.process = greedy
        return result

    def type_cast_value(self, ctx, value):
        if value is None:
            return None
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise click.BadParameter(f"expected integers, got {' '.join(value)}", ctx, self) from None


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


@cli.command()
@click.argument("output", type=click.Path())
@click.option(
    "--shape",
    "shape",
    cls=_SizesOption,
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
    type=click.Choice(["train", "test"]),
    default=None,
    help="Imaging-parameter ranges: 'test' ranges are disjoint from 'train'.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def sample(output, shape, seed, config_path, profile, overwrite) -> None:
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
    path = write_sample(output, shape, seed, config, overwrite=overwrite)
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
@click.option("--quiet", is_flag=True, help="No progress bar.")
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
    quiet,
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
    from matseg.segment import default_tile
    from matseg.segment import segment as run_segment

    tile = _ints(tile_text, "--tile")
    if tile is not None and len(tile) == 1:
        tile = tile * 2
    if tile is not None and len(tile) == 2:
        tile = _tile_for(input, tile, default_tile)
    report = run_segment(
        input,
        output,
        model=model,
        lam=lam,
        budget_gflops=budget_gflops,
        max_expensive_fraction=max_expensive_fraction,
        dry_run=dry_run,
        weights=weights,
        tile=tile,
        halo=halo,
        overwrite=overwrite,
        workers=workers if not cluster["kind"] else None,
        cluster=_cluster_spec(workers, cluster),
        truth=truth,
        progress=not quiet,
        command=_command_line(),
        log=lambda m: click.echo(m, err=True),
    )
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
    "--from-corrections",
    "from_corrections",
    type=click.Path(),
    help="Fine-tune on a corrections store (saved by the napari plugin) instead of IMAGES: "
    "its corrected slices, from the weights that made the corrected output (or --init).",
)
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
    from_corrections,
) -> None:
    """Train the segmenters on labelled IMAGES and write a weights folder.

    Works on any labelled volume that 'matseg segment' reads, with any number
    of phases; use the result with 'matseg segment --weights OUTPUT'. With
    --from-corrections, fine-tune on a reviewer's corrections instead.
    """
    from matseg.train import train as run_train

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


def format_report(report: dict) -> str:
    """The end-of-run summary a user reads."""
    shape = " x ".join(map(str, report["input"]["shape"]))
    models = ", ".join(
        f"{m['name']} ({m['params'] / 1e3:,.1f} K params, sha256 {m['sha256'][:10]})"
        for m in report["models"]
    )
    t = report["timings"]
    lines = [
        f"matseg segment: {report['input']['source']} -> {report['output']}",
        f"  model      {models}",
        f"  voxels     {report['voxels']:,} ({shape}) in {report['tiles']} tiles",
        f"  time       {t['total_s']:.1f} s total, {t['segment_s']:.1f} s segmenting "
        f"({t['voxels_per_s']:,.0f} voxels/s)",
        f"  GFLOPs     {report['gflops']:,.1f} ({report['gflops_per_megavoxel']:.1f} per megavoxel)",
        "  phases     " + "  ".join(f"{k} {v:.3f}" for k, v in report["volume_fractions"].items()),
    ]
    run = report.get("run", {})
    if run.get("devices"):
        lines.insert(3, "  device     " + "; ".join(run["devices"]))
    if run.get("started_as") == "finished":
        lines.insert(2, "  finished   earlier, with these settings: nothing computed now (stored summary)")
    if run.get("started_as") == "resume":
        done = ", ".join(f"{n} {stage}" for stage, n in run["computed_tiles"].items())
        lines.insert(2, f"  resumed    from its finished tiles; computed now: {done} tiles")
    if run.get("scheduler") not in (None, "threads"):
        lines.insert(
            2,
            f"  cluster    {run['scheduler']} at {run['address']}: {run['workers']} workers, "
            f"{run['threads']} threads" + (", placement by cost" if run["placement_by_cost"] else ""),
        )
    if "selector" in report:
        s = report["selector"]
        mix = ", ".join(f"{n} {c}" for n, c in report["decisions"].items())
        trade = f"lambda {s['lambda']}" if s["lambda"] is not None else _budget_text(s)
        lines.insert(2, f"  selector   {trade}: {mix} tiles; expected gain {s['expected_gain']:+.4f}")
        lines.append(
            f"  cost       {100 * report['gflops_fraction_of_all_expensive']:.1f} % of an all-expensive "
            f"run ({report['all_expensive_gflops']:,.1f} GFLOPs)"
        )
    lines.append(f"  seams      score {report['seam']['score']:.2f} (1 = no seam at tile borders)")
    metrics = report.get("metrics")
    if metrics:
        per_phase = ", ".join(f"{k} {v:.3f}" for k, v in metrics["iou"].items() if v is not None)
        lines.append(f"  mIoU       {metrics['miou']:.4f} ({per_phase})")
        if "hard" in metrics:
            lines.append(
                f"             hard regions {metrics['hard']['miou']:.4f}, "
                f"clean regions {metrics['clean']['miou']:.4f}"
            )
    return "\n".join(lines)


def format_evaluation(result: dict) -> str:
    """The evaluation table: every method's mIoU, GFLOPs and IoU/GFLOP gain over all-expensive."""
    lines = [f"{'method':<14}{'lambda':>7}{'mIoU':>8}{'GFLOPs':>10}{'% exp':>7}{'IoU/GF x':>10}"]

    def row(name, lam, p):
        lines.append(
            f"{name:<14}{lam:>7}{p['miou']:>8.4f}{p['gflops']:>10.1f}"
            f"{100 * p['gflops_fraction']:>7.1f}{p['gain_over_all_expensive']:>10.2f}"
        )

    row("all-cheap", "", result["all_cheap"])
    row("all-expensive", "", result["all_expensive"])
    for r in result["sweep"]:
        for method in ("selector", "cascade", "random", "oracle"):
            row(method, f"{r['lambda']:g}", r[method])
    for model, run in result.get("real", {}).items():
        lines.append(
            f"real run --model {model}: mIoU {run['miou']:.4f}, {run['gflops']:.1f} GFLOPs, "
            f"{run['seconds']:.1f} s, seam score {max(run['seam']):.2f}"
        )
    return "\n".join(lines)


def _budget_text(selector: dict) -> str:
    if selector["budget_gflops"] is not None:
        return f"budget {selector['budget_gflops']:g} GFLOPs"
    return f"at most {selector['max_expensive_fraction']:g} of tiles upgraded"


def format_dry_run(report: dict) -> str:
    """What a --dry-run expects the real run to cost."""
    e = report["estimate"]
    mix = ", ".join(f"{n} {c}" for n, c in report["decisions"].items())
    return "\n".join(
        [
            f"matseg segment --dry-run: {report['input']['source']} ({report['tiles']} tiles)",
            f"  mix        {mix}",
            f"  GFLOPs     {e['gflops']:,.1f} expected "
            f"({report['cheap_pass_gflops']:,.1f} spent on the cheap pass)",
            f"  time       ~{e['seconds']:.1f} s more for the costlier candidates and blending",
            f"  memory     ~{e['peak_rss_mb']:,.0f} MB peak",
            f"  cheap pass kept in {report['output']}: the real run reuses it",
        ]
    )


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
    from matseg.cluster import tune_malloc

    tune_malloc()  # before any thread starts
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
