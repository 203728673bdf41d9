"""``matseg.segment``: a volume in, an OME-Zarr of phase labels out, tile by tile.

open -> intensity range (one streaming pass) -> tile grid -> the cheap pass per tile
(labels, uncertainty, selector features) -> the selector picks a candidate per tile
(by λ or under a budget) -> only where needed, the chosen candidates, blended across
borders with neighbours that ran another one -> whole chunks written -> report. With
``model`` set to one candidate, every tile runs that candidate and nothing is blended
(exactly whole-volume inference).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import zarr

from matseg.candidates.fit import check_fit, polarity
from matseg.cluster import Backend, ClusterSpec, backend
from matseg.errors import MatsegError
from matseg.io.guard import remove_output, replace_file, sweep_siblings
from matseg.io.lock import OutputLock
from matseg.io.progress import TileRecords, WriteBehind
from matseg.io.scale import VoxelSize
from matseg.io.write import check_writable, for_tile_writes, run_attrs
from matseg.monitor import CancelToken, Monitor, Progress
from matseg.normalize import PERCENTILES, Normalization, intensity_range
from matseg.pipeline.audit import audit_evidence, create_audit, load_audit, plan_audit, stats_width
from matseg.pipeline.audit_tasks import run_audit, write_audited
from matseg.pipeline.escalate import (
    apply,
    audit_cost,
    audited_estimate,
    decide,
    dropped_strata,
    predicted_estimate,
    recalibrates,
)
from matseg.pipeline.estimate import dry_run_report, estimate
from matseg.pipeline.job import Job, prepare
from matseg.pipeline.report import REPORT_NAME, computed_text, run_report, score_labels
from matseg.pipeline.resume import Start, Status, any_done, open_output, set_status, start_of, todo
from matseg.pipeline.settings import Settings
from matseg.pipeline.stages import cheap_results, run_candidates, run_cheap, run_single, selector_stats
from matseg.selector.plan import make_plan
from matseg.stitch import seam_score
from matseg.tiling import shared_nodes

logger = logging.getLogger(__name__)


def segment(
    input: str | os.PathLike,
    output: str | os.PathLike,
    settings: Settings | None = None,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    cluster: str | ClusterSpec | None = None,
    truth: str | os.PathLike | None = None,
    truth_phases: Sequence[str] | None = None,
    voxel_size: VoxelSize | None = None,
    region: str | Sequence | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    command: str | None = None,
    **shortcuts,
) -> dict:
    """Segment a volume into phases and write an OME-Zarr of labels, decisions and uncertainty.

    A run killed at any point (kill -9, a job's time limit) or cancelled is resumed
    by the same call: an unfinished output of the same input and settings is
    recognised from its provenance and only its unfinished tiles are computed;
    the result equals an uninterrupted run's.

    Parameters
    ----------
    input : str or path
        Anything :func:`matseg.open_volume` reads (Zarr, OME-Zarr, ``file.h5:/dataset``, TIFF).
    output : str or path
        OME-Zarr store to create: ``labels/phases`` (uint8 phase labels),
        ``labels/decisions`` (candidate per tile), the cheap pass's uncertainty as
        the image, with the selector ``selector/`` (features, expected gain
        and choice per tile), and ``progress/`` (per-tile records for resuming).
    settings : Settings, optional
        Model, λ or budget, weights, tile and halo (default: :class:`Settings`' defaults).
    overwrite : bool
        Replace an existing output of other settings or a finished one (for
        ``auto``, its stored cheap pass is reused when input, weights and tiling match).
    workers : int, optional
        Without ``cluster``: tiles segmented at once (dask threads); default: number of cores.
    cluster : str or ClusterSpec, optional
        ``local``, ``slurm`` or ``tcp://host:port`` to run on dask.distributed
        (see :class:`matseg.cluster.ClusterSpec` for workers, memory, SLURM
        settings and a costly-candidate pool); default: threads in this process.
    truth : str or path, optional
        Ground-truth labels (or a ``matseg sample`` store) to score the result against.
    truth_phases : sequence of str, optional
        The names of ``truth``'s label values 0, 1, 2 ... (the run's phases, each once), for a
        truth that names none: it is then matched by name, as a truth that names its phases.
    voxel_size : VoxelSize, optional
        Physical size of a voxel, recorded as the output's scale and units; default:
        what the input records (OME-Zarr scale, HDF5 attributes, TIFF tags), if anything.
    region : str or sequence of (start, stop), optional
        A box of the input to segment instead of the whole: ``"100:300,512:1536,512:1536"``
        (Z,Y,X voxel indices, the stop left out; ``:`` a whole axis) or ``[(100, 300), ...]``.
        The output holds the box; its NGFF translation and the report's ``input.region`` say
        where it lies. A ``truth`` of the input's shape is cut to it too.
    dry_run : bool
        Run only the cheap pass and the selector (stored in ``output`` for the
        real run to reuse) and return the estimated GFLOPs, time, memory and mix.
    progress : callable, optional
        ``progress(stage, done, total)``, called as each stage advances: ``intensity pass``,
        ``cheap pass``, ``selector``, ``costlier candidates``, ``audit`` (or ``single model`` for
        one model on every tile), ``seam score``, ``scoring``; ``done == total`` when a stage ends.
    cancel : object with ``is_set()``, optional
        E.g. a :class:`threading.Event`: once set, the run stops at the next tile
        and raises :class:`matseg.Cancelled`. Its finished tiles are kept (the same
        call resumes it); an output with none finished is removed.
    command : str, optional
        The command line recorded in the report (default ``matseg.segment``).
    **shortcuts
        Settings by name (``model=``, ``lam=``, ``budget_gflops=``,
        ``max_expensive_fraction=``, ``weights=``, ``tile=``, ``halo=``), applied to ``settings``.

    Returns
    -------
    dict
        The report, also saved in the output (``matseg-report.json`` and attributes).

    Examples
    --------
    >>> report = matseg.segment("cathode.zarr", "phases.zarr", matseg.Settings(lam=0.03))  # doctest: +SKIP
    """
    started = time.perf_counter()
    settings = Settings.of(settings, **shortcuts)
    monitor = Monitor(progress, cancel)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise MatsegError(f"workers must be a whole number of at least 1, got {workers!r}")
    if voxel_size is not None and not isinstance(voxel_size, VoxelSize):
        voxel_size = _voxel_size(voxel_size)
    job = prepare(input, output, settings, truth, voxel_size, truth_phases, region)
    if dry_run and job.model != "auto":
        raise MatsegError("--dry-run estimates a selector run; use it with --model auto")
    spec = cluster if isinstance(cluster, ClusterSpec) else ClusterSpec(kind=cluster)
    spec.check()
    start, stored = start_of(job, overwrite)
    if start == Start.FINISHED:  # read only: an archived output on a read-only file system too
        return _finished_report(job)
    check_writable(job.output)
    if stored is None:
        norm = intensity_range(job.volume, len(job.phases) if "classical" in job.names else None, monitor)
    else:
        norm = Normalization.from_dict(stored["normalization"])
    job = replace(
        job, context=replace(job.context, thresholds=norm.thresholds, batch_tiles=settings.batch_tiles)
    )
    job.output.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(job.output):  # one writer at a time, from here on
        if start_of(job, overwrite)[0] != start:  # another run changed it meanwhile
            raise MatsegError(f"output {output} changed while this run started; run it again")
        sweep_siblings(job.output)  # what runs that died while creating or deleting it left
        root = open_output(job, start, norm)
        try:
            with backend(spec, workers) as runner, _tile_writes(runner) as writes:
                return _run(job, root, start, norm, runner, writes, monitor, dry_run, command, started)
        except BaseException as err:
            if isinstance(err, OSError) and err.filename is None:
                err.filename = str(job.output)  # a disk full while zarr wrote a chunk names no file
            _remove_if_nothing_done(job, root, start)
            raise


def _remove_if_nothing_done(job: Job, root, start: Start) -> None:
    """A new output of a run that failed before finishing a tile is removed: nothing half-written is left."""
    if start == Start.NEW and Status.of(run_attrs(job.output)) == Status.RUNNING and not any_done(root):
        remove_output(job.output, ("segment",))


def _voxel_size(values) -> VoxelSize:
    """A voxel size given as numbers ((Z,) Y, X, no unit), as :func:`matseg.measure` takes it."""
    try:
        return VoxelSize(tuple(float(v) for v in values))
    except (TypeError, ValueError):
        raise MatsegError(
            f"voxel_size {values!r}: give the sizes along (Z,) Y, X, e.g. (0.05, 0.02, 0.02)"
        ) from None


def _tile_writes(runner: Backend) -> contextlib.AbstractContextManager[WriteBehind | None]:
    """Write-behind for a run on threads (two waiting writes a worker); a cluster's workers
    write their tiles themselves."""
    return WriteBehind(2 * runner.workers) if runner.client is None else contextlib.nullcontext()


def _run(
    job: Job, root, start: Start, norm, runner: Backend, writes, monitor: Monitor, dry_run, command, started
):
    """The stages of a run on an open output; each computes only the tiles not yet recorded."""
    grid, indices, context = job.grid, job.indices, job.context
    # a real run over its dry run's output goes on from it (said so, not as a resumed kill)
    after_dry_run = bool(root.attrs["matseg"].get("dry_run")) and not dry_run
    if after_dry_run:
        set_status(root, dry_run=False)
    paths = {"uncertainty": "0", "phases": "labels/phases/0", "decisions": "labels/decisions/0"}
    arrays = {name: for_tile_writes(root[path]) for name, path in paths.items()}
    compute_started = time.perf_counter()
    computed, done_now = {}, set()  # tiles per stage, and every tile, computed by this run
    ctx, out = shared_nodes(context, arrays)
    if job.selector is None:
        records = TileRecords.open(root, "tiles", writes)
        remaining = todo(records, indices)
        computed["tiles"] = len(remaining)
        done_now.update(idx for _, idx in remaining)
        stage = monitor.stage("single model", len(remaining))
        stats = run_single(job, remaining, norm, ctx, out, records, runner, stage)
        counts, plan = stats["counts"], None
    else:
        cheap_records = TileRecords.open(root, "cheap", writes)
        remaining = todo(cheap_records, indices)
        computed["cheap"] = len(remaining)
        done_now.update(idx for _, idx in remaining)
        run_cheap(
            job, remaining, norm, ctx, out, cheap_records, runner, monitor.stage("cheap pass", len(remaining))
        )
        cheap = cheap_results(root, cheap_records)
        if Status.of(root.attrs["matseg"]) == Status.RUNNING:
            set_status(root, Status.CHEAP_PASS)
        stage = monitor.stage("selector", 1)
        plan = make_plan(
            job.selector, cheap, grid, context, job.names, job.settings.lam, job.settings.budget_gflops,
            job.settings.max_expensive_fraction,
        )  # fmt: skip
        stage.finish()
        planned = plan["choice"].copy()  # the selector's choice, before the audit's evidence
        spent = float(cheap["gflops"].sum()) + plan["policy_gflops"] + plan["stage2_gflops"]  # by the plan
        attrs = root.attrs["matseg"]
        settings = job.settings
        if Status.of(attrs) == Status.CANDIDATES:
            if not np.array_equal(root["selector/choice"][:], planned):
                raise MatsegError(
                    f"output {job.output}: the selector's plan differs from the stored one; "
                    "pass --overwrite to start the candidates again"
                )
            audit = load_audit(root) if settings.audit_fraction > 0 else None
        else:
            root["selector/gain"][:] = plan["gain"]
            root["selector/choice"][:] = planned.astype(np.uint8)
            audit = plan_audit(
                job, planned, cheap["features"][:, 0], settings.audit_fraction, settings.audit_seed
            )
            if settings.budget_gflops is not None:  # a budget caps the whole run, the audit included
                if spent + audit_cost(job, audit, planned) > settings.budget_gflops:
                    logger.warning("the audit would exceed --budget-gflops: no audit, no estimate")
                    audit = plan_audit(job, planned, cheap["features"][:, 0], 0.0, 0)
            # tiles an earlier plan rewrote or audited hold what that plan made: they are redone
            previous = set(map(tuple, attrs.get("rewritten", []) + attrs.get("audited", [])))
            if settings.audit_fraction > 0:
                create_audit(root, audit, len(job.phases), len(job.names), job.identity)
            audited = sorted(list(indices[t]) for t in audit.tiles)
            rewritten = {indices[t] for t in np.flatnonzero(plan["rewritten"])} | previous
            set_status(
                root, Status.CANDIDATES, rewritten=sorted(map(list, rewritten)),
                previous=sorted(map(list, previous)), audited=audited, escalation=None,
            )  # fmt: skip
        found, decision = None, None
        if audit is not None:
            found = np.zeros((0, stats_width(len(job.phases), len(job.names))))
        if audit is not None and len(audit.cells):
            records, remaining = run_audit(job, audit, planned, root, norm, runner, writes, monitor)
            computed["audit"] = len(remaining)
            done_now.update(idx for _, idx in remaining)
            found = audit_evidence(audit, records, len(job.phases), len(job.names))
            decision = root.attrs["matseg"].get("escalation")
            if decision is None and (settings.tolerance is not None or recalibrates(settings, plan)):
                decision = decide(job, root, plan, audit, found, cheap["counts"], spent + found[:, 0].sum())
            plan = apply(plan, decision, audit, job)
        previous = set(map(tuple, root.attrs["matseg"].get("previous", [])))
        rewrite = {indices[t] for t in np.flatnonzero(plan["rewritten"])} | previous
        if dry_run:
            expected = estimate(plan, cheap, job.volume.data, grid, norm, context, job.names, runner.workers)
            expected["audit_gflops"] = float(found[:, 0].sum()) if found is not None else 0.0
            expected["gflops"] += expected["audit_gflops"]
            if decision is not None:
                expected["escalation"] = decision
            if audit is not None and len(audit.cells):
                expected["estimate"] = predicted_estimate(
                    job, plan, audit, found, decision, cheap["counts"], expected["gflops"]
                )
            # what is kept is a cheap pass for the real run to finish (a finished output
            # given with --overwrite becomes one too: what earlier runs wrote is redone)
            written = previous | set(map(tuple, attrs.get("rewritten", []) + attrs.get("audited", [])))
            set_status(
                root, Status.CHEAP_PASS, rewritten=sorted(map(list, written)), audited=[], dry_run=True
            )
            report = dry_run_report(job, plan, cheap, expected)
            report["normalization"] = {"percentiles": list(PERCENTILES), **norm.as_dict()}
            fit = volume_fit(job, norm, cheap["features"])  # said before anything costly runs
            return report | ({"fit": fit} if fit is not None else {})
        set_status(root, rewritten=sorted(map(list, rewrite)))
        finish_records = TileRecords.open(root, "finish", writes)
        remaining = todo(finish_records, indices, rewrite)
        computed["candidates"] = len(remaining)
        done_now.update(idx for _, idx in remaining)
        stage = monitor.stage("costlier candidates", len(remaining))
        run_candidates(job, plan, remaining, norm, ctx, out, finish_records, runner, stage)
        stats = selector_stats(job, plan, cheap, finish_records, rewrite)
        if audit is not None and len(audit.cells) == 0 and (planned != audit.reference).any():
            evidence = {"skipped": "the audit would exceed --budget-gflops", "reference": settings.reference}
        elif audit is not None:
            skip = dropped_strata(decision, audit, job)
            written, remaining = write_audited(job, audit, skip, root, arrays, runner, writes, monitor)
            computed["audited cells"] = len(remaining)
            evidence = audited_estimate(job, plan, audit, found, decision, finish_records, written, stats)
        counts = stats["counts"]
    started_as = "after-dry-run" if start == Start.RESUME and after_dry_run else start.value
    if started_as == "after-dry-run":
        logger.info(f"continued {job.output} from its dry run: computed {computed_text(computed)}")
    elif start == Start.RESUME:
        logger.info(f"resumed {job.output}: computed {computed_text(computed)}")
    compute_seconds = time.perf_counter() - compute_started
    report = run_report(job, norm, plan, stats, counts, command)
    if plan is not None and job.settings.audit_fraction > 0:
        report["estimate"] = evidence
    fit = volume_fit(job, norm, cheap["features"] if plan is not None else None)
    if fit is not None:
        report["fit"] = fit
    stage = monitor.stage("seam score", grid.n_tiles)
    report["seam"] = seam_score(arrays["phases"], grid, runner.compute, stage.advance)
    stage.finish()
    if job.truth is not None:
        report["truth"] = str(job.truth)
        report["metrics"] = score_labels(
            arrays["phases"], job.truth, job.phases, monitor, job.truth_phases, job.region
        )
    # this run's own work: a resumed run counts only the tiles it computed (model_s: every run's)
    voxels_now = sum(int(np.prod([r.stop - r.start for r in grid.region(i)])) for i in done_now)
    report["timings"] = {
        "total_s": time.perf_counter() - started,
        "segment_s": compute_seconds,
        "model_s": stats["seconds"],
        "voxels_computed": voxels_now,
        "voxels_per_s": voxels_now / compute_seconds,
    }
    report["run"] = {**runner.description, "started_as": started_as, "computed_tiles": computed}
    if plan is not None:
        report["run"]["cheap_pass_reused"] = computed["cheap"] == 0
    # the report first: a run killed between the two is resumed, never "complete" without it
    replace_file(job.output / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    set_status(root, Status.COMPLETE, **report)
    return report


def volume_fit(job: Job, norm: Normalization, features) -> dict | None:
    """Whether the volume looks like the weights' training data (:mod:`matseg.candidates.fit`);
    None for a run without networks or weights that record no training statistics."""
    if not job.models:
        return None
    cheap = job.models.get("cheap")
    voxels = int(np.prod(job.volume.shape))
    net = cheap or next(iter(job.models.values()))  # a single-model run asks its own net
    probe = functools.partial(polarity, net, job.volume.data, norm)
    return check_fit(
        job.settings.weights, norm.quantiles, features, cheap.sha256 if cheap else "", voxels, probe
    )


def _finished_report(job: Job) -> dict:
    """The stored report of a finished run of the same settings (scored anew against another truth)."""
    try:
        report = json.loads((job.output / REPORT_NAME).read_text())
    except (OSError, ValueError) as err:
        raise MatsegError(
            f"output {job.output} is finished but its {REPORT_NAME} is unreadable ({err}); "
            "pass --overwrite to run it again"
        ) from None
    match = report.get("metrics", {}).get("truth_match", {})
    named = match.get("truth_phases") if match.get("named_by") else None
    if job.truth is not None and (
        report.get("truth") != str(job.truth) or named != (list(job.truth_phases or ()) or None)
    ):
        phases = zarr.open_group(str(job.output), mode="r")["labels/phases/0"]
        report["truth"] = str(job.truth)
        report["metrics"] = score_labels(
            phases, job.truth, job.phases, truth_phases=job.truth_phases, region=job.region
        )
    report["run"] = {**report.get("run", {}), "started_as": Start.FINISHED.value}
    logger.info("%s is already a finished run of these settings: nothing to compute", job.output)
    return report
