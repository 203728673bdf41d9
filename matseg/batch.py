"""``matseg batch``: many volumes, one command, finished outputs skipped.

Jobs come from a manifest (YAML: a list of ``{input, output}``; CSV: columns
``input,output``) or from a glob of inputs with an output folder. Each job is
one :func:`matseg.segment` call, which decides what is at its output: a finished
run of the same input and settings is skipped, an unfinished one resumed (so a
batch killed half-way is simply run again), anything else refused unless
``overwrite``. ``index`` runs one job only: the task id of a SLURM job array.
"""

from __future__ import annotations

import csv
import glob as globbing
import logging
import os
from pathlib import Path

import yaml

from matseg.errors import MatsegError
from matseg.io.guard import output_kind
from matseg.io.paths import real_path
from matseg.io.read import split_spec

logger = logging.getLogger(__name__)
SETTINGS = ("model", "lam", "weights", "tile")  # the options of a batch that are segment settings


def read_jobs(manifest: str | os.PathLike) -> list[tuple[str, str]]:
    """(input, output) pairs of a YAML or CSV manifest, relative paths taken from the manifest's folder."""
    path = Path(manifest)
    if path.is_dir():
        raise MatsegError(f"manifest {manifest} is a folder; give a YAML or CSV file of jobs")
    if not path.is_file():
        raise MatsegError(f"manifest {manifest} not found")
    try:
        if path.suffix.lower() == ".csv":
            # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = [_stripped(row) for row in csv.DictReader(fh)]
        else:
            rows = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, csv.Error, UnicodeDecodeError) as err:
        raise MatsegError(f"manifest {manifest} cannot be parsed: {err}") from None
    if not isinstance(rows, list) or not rows:
        raise MatsegError(f"manifest {manifest} must list jobs, each with 'input' and 'output'")
    jobs = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("input") or not row.get("output"):
            other = sorted(set(row) - {"input", "output"}) if isinstance(row, dict) else []
            found = f" (it has {', '.join(map(repr, other))})" if other else ""
            raise MatsegError(f"manifest {manifest}, job {number}: needs both 'input' and 'output'{found}")
        jobs.append(tuple(_relative_to(path.parent, str(row[key])) for key in ("input", "output")))
    return jobs


def _stripped(row: dict) -> dict:
    """A CSV row with the spaces around its names and values removed (``input, output``)."""
    return {(k or "").strip(): v.strip() if isinstance(v, str) else v for k, v in row.items()}


def _relative_to(folder: Path, spec: str) -> str:
    outer, inner = split_spec(spec) if ":" in spec else (Path(spec), "")
    outer = outer if outer.is_absolute() else folder / outer
    return f"{outer}:{inner}" if inner else str(outer)


def glob_jobs(
    pattern: str, output_dir: str | os.PathLike, suffix: str = "-phases.zarr"
) -> list[tuple[str, str]]:
    """One job per input matching ``pattern``: ``output_dir/<input name><suffix>``. What matseg
    wrote itself (segmentations, corrections, weights, evaluations) is no input: a second run
    of the same glob into the same folder would otherwise segment the first run's outputs."""
    matched = sorted(globbing.glob(pattern))
    inputs = [i for i in matched if output_kind(i) in (None, "sample")]
    if len(inputs) < len(matched):
        logger.info("skipped %d matseg output(s) matching %r", len(matched) - len(inputs), pattern)
    if not inputs:
        raise MatsegError(f"no input matches {pattern!r}" + (" (only matseg outputs)" if matched else ""))
    out = Path(output_dir)
    stems = [_stem(i) for i in inputs]
    # inputs of one name in two formats (scan.h5, scan.zarr) keep their extensions apart
    stems = [
        stem if stems.count(stem) == 1 else Path(i.rstrip("/")).name.replace(".", "-")
        for stem, i in zip(stems, inputs)
    ]
    return [(i, str(out / f"{stem}{suffix}")) for i, stem in zip(inputs, stems)]


def _stem(path: str) -> str:
    """An input's name without its extension (``.zarr``, ``.tif``, ``.ome.tif``...); other dots stay."""
    stem, ext = os.path.splitext(Path(path.rstrip("/")).name)
    return stem[: -len(".ome")] if ext and stem.lower().endswith(".ome") else stem


def batch(
    jobs: list[tuple[str, str]],
    *,
    index: int | None = None,
    **segment_options,
) -> list[dict]:
    """Run :func:`matseg.segment` on each job; finished outputs of the same settings are skipped.

    Parameters
    ----------
    jobs : list of (input, output)
    index : int, optional
        Run only this job (0-based), e.g. ``$SLURM_ARRAY_TASK_ID``.
    **segment_options
        Passed to :func:`matseg.segment` (``model``, ``lam``, ``weights``, ``tile``,
        ``overwrite``...); the settings among them are checked before any job runs.

    Returns
    -------
    list of dict
        Per job: ``input``, ``output``, ``state`` (done, skipped, failed) and ``report`` or ``error``.
    """
    from matseg.pipeline.run import segment
    from matseg.pipeline.settings import Settings

    # a bad option fails here once, not job after job (nor passes unseen where jobs are finished)
    Settings.of(None, **{k: v for k, v in segment_options.items() if k in SETTINGS and v is not None})
    if segment_options.get("weights") is not None:  # a weights folder, as every job would read it
        from matseg.models.store import read_manifest

        read_manifest(segment_options["weights"])
    outputs: dict[Path, str] = {}
    for input, output in jobs:  # two jobs writing one output: the second would fail or overwrite
        key = real_path(output)  # one output however it is spelt (``..``, a symlink, the case)
        if key in outputs:
            raise MatsegError(
                f"jobs {outputs[key]} and {input} both write {output}; give each job its own output"
            )
        outputs[key] = input
    if index is not None:
        if not 0 <= index < len(jobs):
            raise MatsegError(f"--index {index} is outside the {len(jobs)} jobs (0 to {len(jobs) - 1})")
        jobs = [jobs[index]]
    options = dict(segment_options)
    overwrite = bool(options.pop("overwrite", False))
    results = []
    for number, (input, output) in enumerate(jobs, start=1):
        if len(jobs) > 1:  # what the lines after it (stages, warnings) belong to
            logger.info("job %d of %d: %s -> %s", number, len(jobs), input, output)
        try:
            try:  # what is at the output decides (a finished run of these settings: skipped) ...
                report = segment(input, output, **options)
            except MatsegError:
                if not overwrite:
                    raise
                # ... and only what it refuses (another run) is replaced with overwrite
                report = segment(input, output, overwrite=True, **options)
        except MatsegError as err:
            results.append({"input": input, "output": output, "state": "failed", "error": str(err)})
            logger.warning("failed %s: %s", input, err)
            continue
        if report.get("run", {}).get("started_as") == "finished":
            results.append({"input": input, "output": output, "state": "skipped"})
            logger.info("skip %s: already a finished run of %s with these settings", output, input)
            continue
        results.append({"input": input, "output": output, "state": "done", "report": report})
        logger.info(
            "done %s (%s voxels, %.1f s)", output, f"{report['voxels']:,}", report["timings"]["total_s"]
        )
    return results
