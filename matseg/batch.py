"""``matseg batch``: many volumes, one command, finished outputs skipped.

Jobs come from a manifest (YAML: a list of ``{input, output}``; CSV: columns
``input,output``) or from a glob of inputs with an output folder. Each job is
one :func:`matseg.segment` call; a job whose output is already a finished run
of the same input is skipped, so a batch killed half-way is simply run again.
``index`` runs one job only: the task id of a SLURM job array.
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
from matseg.io.read import canonical_source, split_spec
from matseg.io.write import run_attrs

logger = logging.getLogger(__name__)


def read_jobs(manifest: str | os.PathLike) -> list[tuple[str, str]]:
    """(input, output) pairs of a YAML or CSV manifest, relative paths taken from the manifest's folder."""
    path = Path(manifest)
    if not path.is_file():
        raise MatsegError(f"manifest {manifest} not found")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
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
    return [(i, str(out / f"{Path(i).name.split('.')[0]}{suffix}")) for i in inputs]


def finished(input: str, output: str) -> bool:
    """Whether ``output`` is a complete matseg run of ``input``."""
    attrs = run_attrs(output)
    return attrs.get("status") == "complete" and _run_of(attrs, input)


def _unfinished_of(input: str, output: str) -> bool:
    attrs = run_attrs(output)
    return attrs.get("status") not in (None, "complete") and _run_of(attrs, input)


def _run_of(attrs: dict, input: str) -> bool:
    """Whether a store's recorded run read ``input`` (its report, or the fingerprint of its cheap pass)."""
    source = attrs.get("input", {}).get("source")
    if source is not None:
        return canonical_source(source) == canonical_source(input)
    return attrs.get("cheap_pass", {}).get("input") == canonical_source(input)


def batch(
    jobs: list[tuple[str, str]],
    *,
    index: int | None = None,
    **segment_options,
) -> list[dict]:
    """Run :func:`matseg.segment` on each job, skipping finished outputs.

    Parameters
    ----------
    jobs : list of (input, output)
    index : int, optional
        Run only this job (0-based), e.g. ``$SLURM_ARRAY_TASK_ID``.
    **segment_options
        Passed to :func:`matseg.segment` (``model``, ``lam``, ``weights``, ``tile``...).

    Returns
    -------
    list of dict
        Per job: ``input``, ``output``, ``state`` (done, skipped, failed) and ``report`` or ``error``.
    """
    from matseg.pipeline.run import segment

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
    results = []
    for input, output in jobs:
        if finished(input, output):
            results.append({"input": input, "output": output, "state": "skipped"})
            logger.info("skip %s: already a finished run of %s", output, input)
            continue
        # an unfinished run of this input is started again; anything else is left alone
        restart = Path(output).exists() and _unfinished_of(input, output)
        try:
            report = segment(input, output, overwrite=restart, **segment_options)
        except MatsegError as err:
            results.append({"input": input, "output": output, "state": "failed", "error": str(err)})
            logger.warning("failed %s: %s", input, err)
            continue
        results.append({"input": input, "output": output, "state": "done", "report": report})
        logger.info(
            "done %s (%s voxels, %.1f s)", output, f"{report['voxels']:,}", report["timings"]["total_s"]
        )
    return results
