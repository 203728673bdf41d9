"""``matseg train``, ``train-selector`` and ``evaluate``: weights from labelled volumes, and how they do."""

from __future__ import annotations

import click

from matseg.cli.options import (
    TILE_TEXT,
    TRUTH_PHASES_HELP,
    command_line,
    ints,
    names_of,
    progress_bars,
    verbosity_options,
)
from matseg.console import format_evaluation


@click.command()
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
    help="Segmenter(s) to train (repeat the option); default: all three (cheap, medium, expensive).",
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
    default="light",
    show_default=True,
    metavar="none|light|strong|FILE.yaml",
    help="Imaging augmentation of the IMAGES' patches (blur, noise, shading, curtaining, contrast, "
    "...; docs/models.md); "
    "'none' keeps only flips, rotations and a linear intensity jitter (the bundled weights' "
    "training). Not applied by --from-corrections.",
)
@click.option(
    "--from-corrections",
    "from_corrections",
    type=click.Path(),
    help="Fine-tune on a corrections store (saved by the napari plugin) instead of IMAGES: "
    "its corrected slices, from the weights that made the corrected output (or --init).",
)
@click.option(
    "--statistics-only",
    "statistics_only",
    is_flag=True,
    help="Train nothing: record in OUTPUT's manifest the training statistics of IMAGES (what a run "
    "compares a volume with to say whether the weights fit it), for weights trained on IMAGES before.",
)
@verbosity_options
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
    statistics_only,
) -> None:
    """Train the segmenters on labelled IMAGES and write a weights folder.

    Works on any labelled volume that 'matseg segment' reads, with any number
    of phases; use the result with 'matseg segment --weights OUTPUT'. With
    --from-corrections, fine-tune on a reviewer's corrections instead.
    """
    from matseg.augment import load_augmentation
    from matseg.training import train as run_train

    augmentation = load_augmentation(augment)
    if statistics_only:
        from matseg.statistics import statistics_from_volumes

        if not images:
            raise click.UsageError("--statistics-only needs the IMAGES the weights were trained on")
        entry = statistics_from_volumes(list(images), output, ints(slices_text, "--slices"))
        click.echo(f"training statistics of {entry['tiles']} tiles recorded in {output}")
        return
    if from_corrections:
        if images or labels or val or slices_text or phases:
            raise click.UsageError(
                "--from-corrections takes its images, labels and slices from the corrections store; "
                "drop IMAGES, --labels, --val, --slices and --phases"
            )
    # what training and fine-tuning share
    step_counts = {
        m: (steps_expensive if m == "expensive" and steps_expensive else steps)
        for m in models or ("cheap", "medium", "expensive")
    }
    shared = {"steps": step_counts, "batch": batch, "patch": patch, "lr": lr, "seed": seed, "init": init}
    shared |= {"command": command_line(), "progress": progress_bars()}
    if from_corrections:
        _finetune(from_corrections, output, models, shared)
        return
    if not images:
        raise click.UsageError("give the labelled IMAGES to train on, or --from-corrections PATH")
    results = run_train(
        list(images),
        output,
        labels=list(labels) or None,
        models=models or ("cheap", "medium", "expensive"),
        phases=[p.strip() for p in phases.split(",")] if phases else None,
        val=list(val) or None,
        slices=ints(slices_text, "--slices"),
        augment=augmentation,
        **shared,
    )
    for name, r in results.items():
        per_phase = ", ".join(f"{k} {v:.3f}" for k, v in r["iou"].items())
        click.echo(
            f"{name}: validation mIoU {r['miou']:.4f} ({per_phase}); {r['steps']} steps, "
            f"{r['seconds']:.0f} s -> {output}"
        )


def _finetune(corrections, output, models, shared: dict) -> None:
    from matseg.finetune import finetune_from_corrections

    results = finetune_from_corrections(corrections, output, models=models or None, **shared)
    selector = results.pop("selector")
    for name, r in results.items():
        before = "scratch" if r["miou_before"] is None else f"{r['miou_before']:.4f}"
        click.echo(
            f"{name}: mIoU on the {len(r['slices'])} corrected slice(s) {before} -> "
            f"{r['miou_after']:.4f}; {r['steps']} steps, {r['seconds']:.0f} s -> {output}"
        )
    click.echo(
        f"selector: retrained for them on {selector['tiles']} corrected tiles (default lambda "
        f"{selector['default_lambda']:g})"
        if selector["trained"]
        else f"selector: none in {output} ({selector['reason']}); segment with --model, or train one "
        "with 'matseg train-selector'"
    )


@click.command("train-selector")
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
    "(default: cheap, medium, expensive, expensive-2x, classical, as far as --weights holds them; "
    "medium-tta and expensive-tta, the nets averaged over flips, only when named).",
)
@click.option("--tile", "tile_text", default=TILE_TEXT, show_default=True, help="Tile size Z,Y,X.")
@click.option("--steps", type=click.IntRange(min=1), default=4000, show_default=True, help="REINFORCE steps.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and sampling.")
@click.option(
    "--default-lambda-only",
    is_flag=True,
    help="Keep the trained selector of --weights; only pick its default lambda again on IMAGES "
    "(the largest whose plan loses at most 0.01 mIoU to all-expensive on their tiles; without an "
    "expensive net, to the candidate of the best mean tile IoU).",
)
@verbosity_options
def train_selector(
    images, weights, labels, slices_text, candidates, tile_text, steps, seed, default_lambda_only
) -> None:
    """Train the per-tile selector on labelled IMAGES for the segmenters in --weights.

    Every candidate runs on every tile of IMAGES (use volumes the segmenters
    were not trained on); the policy then learns by REINFORCE which candidate
    pays at each lambda. It needs at least 2 labelled tiles: for a stack of
    separate 2-D images, a tile one slice deep (--tile 1,256,256).
    """
    from matseg.selector.train import train_selector as run

    record = run(
        list(images),
        weights,
        labels=list(labels) or None,
        slices=ints(slices_text, "--slices"),
        candidates=[c.strip() for c in candidates.split(",")] if candidates else None,
        tile=ints(tile_text, "--tile"),
        steps=steps,
        seed=seed,
        command=command_line(),
        default_lambda_only=default_lambda_only,
    )
    if default_lambda_only:
        click.echo(
            f"selector: default lambda {record['default_lambda']:g} "
            f"(picked on {len(images)} volume(s)) -> {weights}"
        )
        return
    last = record["history"][-1]
    rewards = ", ".join(f"{k[7:]} {v:+.4f}" for k, v in last.items() if k.startswith("reward@"))
    click.echo(
        f"selector: {record['tiles']} tiles, {record['steps']} steps, {record['seconds']:.0f} s; "
        f"greedy reward by lambda: {rewards} -> {weights}"
    )


@click.command()
@click.argument("volumes", nargs=-1, required=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the results."
)
@click.option("--truth", "truths", multiple=True, help="Label volume for each VOLUME (default: its own).")
@click.option(
    "--truth-phases", "truth_phases_text", metavar="A,B,C", help=TRUTH_PHASES_HELP + " Every --truth alike."
)
@click.option("--weights", type=click.Path(file_okay=False), help="Weights folder (default: bundled).")
@click.option(
    "--lambdas",
    default="0,0.002,0.005,0.01,0.015,0.02,0.03,0.05,0.1,0.3,1",
    show_default=True,
    help="λ sweep (the selector's default λ is always added).",
)
@click.option("--tile", "tile_text", default=TILE_TEXT, show_default=True, help="Tile size Z,Y,X.")
@click.option("--no-real-run", is_flag=True, help="Skip the real segment runs (table numbers only).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it is an earlier evaluation's folder.")
@verbosity_options
def evaluate(
    volumes, output, truths, truth_phases_text, weights, lambdas, tile_text, no_real_run, overwrite
) -> None:
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
        truth_phases=names_of(truth_phases_text, "--truth-phases"),
        weights=weights,
        lambdas=sweep,
        tile=ints(tile_text, "--tile"),
        real_run=not no_real_run,
        overwrite=overwrite,
    )
    click.echo(format_evaluation(result))
