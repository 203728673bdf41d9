"""Options and parsing the ``matseg`` commands share: sizes, verbosity, clusters, voxel size."""

from __future__ import annotations

import logging
import re
import shlex
import sys

import click

from matseg.defaults import DEFAULT_TILE
from matseg.errors import MatsegError
from matseg.terminal import StageBars

TILE_TEXT = ",".join(map(str, DEFAULT_TILE))
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # what follows --shape: 32, -1, 1.5


def ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 256 or {TILE_TEXT}, got '{text}'", param_hint=name
        ) from None
    if not values:
        raise click.BadParameter("no sizes given", param_hint=name)
    return values


def names_of(text: str | None, option: str) -> tuple[str, ...] | None:
    """A list of names given as ``a,b,c`` (``--truth-phases``); none may be empty."""
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise MatsegError(f"{option} {text}: give names separated by commas, e.g. pore,carbon-binder,active")
    return names


TRUTH_PHASES_HELP = (
    "With --truth that names no phases (a TIFF, HDF5 dataset or plain Zarr array): the names of its "
    "label values 0,1,2... in order, e.g. pore,carbon-binder,active (the run's phases, each once); the "
    "truth is then matched by name instead of by value."
)


def tolerance_of(text: str) -> float | None:
    """``--tolerance``: a number, or ``off`` (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise MatsegError(f"--tolerance {text}: give a number like 0.01, or 'off'") from None


class SizesCommand(click.Command):
    """A command whose ``sizes_options`` take 2 or 3 integers: ``--shape 32 256 256``.

    Click has no option with a variable number of values (by design:
    pallets/click#1351), so the numbers that follow such an option are joined into
    one value (``32,256,256``) before click parses the arguments; negative and decimal
    ones too, which ``sizes`` then refuses (click would take ``-1`` for an option).
    """

    sizes_options = ("--shape",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        joined, i = [], 0
        while i < len(args):
            joined.append(args[i])
            if args[i] in self.sizes_options:
                values = []
                while i + 1 < len(args) and _NUMBER.fullmatch(args[i + 1]):
                    values.append(args[i + 1])
                    i += 1
                if values:
                    joined.append(",".join(values))
            i += 1
        return super().parse_args(ctx, joined)


def sizes(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """A ``SizesCommand`` option's value: 2 (Y X) or 3 (Z Y X) positive integers."""
    if value is None:
        return None
    words = value.replace(",", " ").split()
    try:
        shape = tuple(int(v) for v in words)
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise click.UsageError(
            f"{param.opts[0]} takes 2 (Y X) or 3 (Z Y X) positive integers, e.g. 32 256 256; "
            f"got {' '.join(words) or repr(value)}",
            ctx,
        )
    return shape


def set_verbosity(ctx: click.Context, param, value) -> None:
    """``-v``: debug lines too; ``--quiet``: no progress (bars or per-stage lines), only the
    library's notices (a resumed run, a cluster's dashboard), warnings and errors."""
    if not value or ctx.resilient_parsing:
        return
    if param.name == "quiet":
        logging.getLogger("matseg.progress").setLevel(logging.WARNING)
        ctx.meta["matseg.quiet"] = True
    else:
        logging.getLogger("matseg").setLevel(logging.DEBUG)


def verbosity_options(command):
    """``-v/--verbose`` and ``--quiet`` on a command."""
    command = click.option(
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=set_verbosity,
        help="No progress bars or per-stage lines; notices, warnings and errors only.",
    )(command)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=set_verbosity,
        help="Debug log lines too.",
    )(command)


def progress_bars() -> StageBars:
    """Progress bars named by stage, unless ``--quiet`` was given."""
    return StageBars(not click.get_current_context().meta.get("matseg.quiet"))


def command_line() -> str:
    return "matseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def model_option(help: str):
    """``--model``: the selector (auto) or one candidate on every tile."""
    choices = [
        "auto",
        "cheap",
        "medium",
        "expensive",
        "expensive-2x",
        "classical",
        "medium-tta",
        "expensive-tta",
    ]
    return click.option("--model", type=click.Choice(choices), default="auto", show_default=True, help=help)


def cluster_options(command):
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


def cluster_spec(workers, options: dict):
    from matseg.cluster import ClusterSpec

    options = dict(options)
    return ClusterSpec.from_options(options.pop("kind"), options.pop("config"), workers=workers, **options)


def voxel_size_options(command):
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
        "scale; default: what the input records, if anything (given, it also drops the input's "
        "recorded translation, which is in the recorded units).",
    )(command)


def voxel_size_of(text: str | None, unit: str | None):
    from matseg.io.scale import parse_voxel_size

    if text is None:
        if unit is not None:
            raise MatsegError(f"--unit {unit} needs --voxel-size (the size of a voxel in that unit)")
        return None
    return parse_voxel_size(text, unit)


def tile_for(input, tile, default_tile):
    from matseg.io.read import open_volume

    ndim = open_volume(input).ndim
    return tile if ndim == 2 else default_tile(3)[:1] + tuple(tile)
