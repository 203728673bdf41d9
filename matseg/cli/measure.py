"""``matseg measure``: microstructure metrics of a segmentation, with intervals."""

from __future__ import annotations

import os

import click
from click.core import ParameterSource

from matseg.cli.options import voxel_size_of, voxel_size_options
from matseg.console import format_measure
from matseg.errors import MatsegError
from matseg.io.paths import check_distinct


def default_folder(store: str):
    """``STORE-measure`` beside the store's file; an inner path joins the name
    (``slab.h5:/data`` -> ``slab-data-measure``), so two datasets of one file get two folders."""

    from matseg.io.read import split_spec

    path, inner = split_spec(store.rstrip("/"))
    name = "-".join([path.stem, *(p for p in inner.split("/") if p)])
    return path.with_name(name + "-measure")


def check_folder_writable(folder) -> None:
    """``folder`` (an existing folder, or where it will be created) can be written."""
    from matseg.io.write import check_writable

    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MatsegError(f"cannot write output {folder}: it is not a writable folder")
    else:
        check_writable(folder)


@click.command()
@click.argument("store", type=str)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Folder for measure.json, measure.csv and the plots "
    "(default: STORE's name with -measure, beside it; an inner path joins the name: "
    "scan.h5:/data -> scan-data-measure).",
)
@click.option(
    "--labels",
    "as_labels",
    is_flag=True,
    help="STORE is any integer label volume (or a sample's truth), not a matseg output.",
)
@voxel_size_options
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
    help="Label volumes drawn from the uncertainty for the intervals (0: none); a matseg segment "
    "output's only: with --labels there is no uncertainty to draw from (refused).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option(
    "--no-calibration",
    is_flag=True,
    help="Intervals from the draws alone, without the margin calibrated for the bundled weights "
    "(for segmentations made with other weights; not with --labels, which has no intervals).",
)
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
@click.option(
    "--transport-block",
    "transport_block_text",
    metavar="Z,Y,X",
    help="Solve the diffusion on sub-volumes of at most this shape, one at a time, combined "
    "in series along the axis and in parallel across it (default: the whole volume).",
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
    no_calibration,
    max_radius,
    no_transport,
    no_connectivity,
    no_rev,
    tol,
    transport_block_text,
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

    ctx = click.get_current_context()
    if as_labels and samples > 0 and ctx.get_parameter_source("samples") != ParameterSource.DEFAULT:
        raise MatsegError(
            f"--samples {samples} with --labels: a plain label volume has no uncertainty to draw from, "
            "so it is measured without intervals; drop --samples (or measure a matseg segment output)"
        )
    if as_labels and no_calibration:  # the calibration widens intervals, which --labels has none of
        raise MatsegError(
            "--no-calibration with --labels: a plain label volume is measured without intervals, "
            "so there is no calibrated margin to leave out; drop --no-calibration"
        )
    given = voxel_size_of(voxel_size_text, unit)
    voxel_size = given.for_ndim(3).values if given is not None else None
    tpb = tuple(p.strip() for p in tpb_text.split(",")) if tpb_text else None
    transport_block = None
    if transport_block_text:
        try:
            transport_block = tuple(int(v) for v in transport_block_text.split(","))
        except ValueError:
            raise MatsegError(
                f"--transport-block {transport_block_text}: give three integers Z,Y,X, e.g. 64,128,128"
            ) from None
    folder = Path(output) if output else default_folder(store)
    check_distinct(folder, [("store", store)])
    if os.path.lexists(folder) and not (folder.is_dir() and not any(folder.iterdir())):  # empty: fine
        if not overwrite:
            raise MatsegError(
                f"output {folder} exists; pass --overwrite to replace its files, or -o another folder"
            )
        from matseg.io.guard import check_replaceable

        check_replaceable(folder, ("measure",))  # an earlier measure's folder, nothing else
    check_folder_writable(folder)  # before the metrics, not after minutes of computing them
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
        transport_block=transport_block,
        calibrated=not no_calibration,
    )
    from matseg.microstructure import write_report

    files = write_report(report, folder)
    click.echo(format_measure(report))
    click.echo("wrote " + ", ".join(str(f) for f in files))
