"""The ``matseg`` command: parse, call the library, report.

One module per group of commands (``segment``: sample, segment, batch; ``train``:
train, train-selector, evaluate; ``measure``), their shared options in ``options``.
Exit codes: 0 success, 2 bad input or usage (one line, no traceback, nothing
changed), 1 internal error.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from matseg._version import __version__
from matseg.cli.measure import measure
from matseg.cli.segment import batch, sample, segment
from matseg.cli.train import evaluate, train, train_selector
from matseg.errors import MatsegError
from matseg.terminal import setup_logging


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
    store.zarr:/path), OME-Zarr (level 0, or the level named: store.zarr:/s1), HDF5
    (file.h5:/dataset), TIFF, a folder of TIFF files one slice each (slices/).
    """


for _command in (sample, segment, train, batch, train_selector, evaluate, measure):
    cli.add_command(_command)


def _killed_worker() -> tuple[type, ...]:
    """dask.distributed's KilledWorker (a worker died on a task, again and again) and
    NoWorkerError / NoValidWorkerError (no worker left to run a task), if in use."""
    if "distributed" not in sys.modules:  # not imported: no cluster ran
        return ()
    from distributed import KilledWorker
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    return (KilledWorker, NoWorkerError, NoValidWorkerError)


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


def _fault_text(err: OSError, command: str | None = None) -> str | None:
    """One line for a disk-full or permission fault (None: not such a fault); only a segment
    or batch run has finished tiles to keep."""
    if err.errno not in _FAULTS:
        return None
    where = f" ({err.filename})" if err.filename else ""
    resumes = (
        ": a segment run keeps its finished tiles and resumes" if command in ("segment", "batch") else ""
    )
    what = err.strerror or os.strerror(err.errno)
    return f"{what}{where}; {_FAULTS[err.errno]} and run the same command again{resumes}"


def _command(argv: list[str] | None) -> str | None:
    """The subcommand's name in ``argv`` (the first word that is not an option)."""
    words = sys.argv[1:] if argv is None else argv
    return next((str(w) for w in words if not str(w).startswith("-")), None)


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
    except click.UsageError as err:  # a bad option or argument: one line, as every bad input
        if isinstance(err, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            click.echo(err.format_message(), err=True)  # 'matseg' alone: its help, as before
            sys.exit(2)
        command = err.ctx.command_path if err.ctx is not None else "matseg"
        click.echo(
            f"matseg: error: {' '.join(err.format_message().split())} (see '{command} --help')", err=True
        )
        sys.exit(2)
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
        text = _fault_text(err, _command(argv))
        if text is None:
            raise
        click.echo(f"matseg: error: {text}", err=True)
        sys.exit(2)
    except _killed_worker() as err:
        task = err.args[0] if err.args else "a task"
        what = "died running" if type(err).__name__ == "KilledWorker" else "died and none is left to run"
        click.echo(
            f"matseg: error: a dask worker {what} {task} (killed, or out of memory); "
            "the finished tiles are kept: run the same command again",
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
