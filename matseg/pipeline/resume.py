"""How a run starts on what is at its output, and the records that let it resume.

An output's ``matseg`` attributes hold the run's identity and its :class:`Status`;
``progress/<stage>`` holds one record per tile (:class:`matseg.io.progress.TileRecords`).
A run killed at any point is resumed from them: only tiles without a record are
computed again.
"""

from __future__ import annotations

import enum
from pathlib import Path

import zarr

from matseg._version import __version__
from matseg.candidates.features import FEATURE_NAMES
from matseg.errors import MatsegError
from matseg.io.chunks import DECLARATION
from matseg.io.guard import building, check_replaceable, remove_output
from matseg.io.progress import TileRecords
from matseg.io.write import create_ome_store, place, run_attrs
from matseg.normalize import Normalization
from matseg.pipeline.job import Job


class Status(str, enum.Enum):
    """Where a run stands, as stored in its output's attributes (the values are on disk)."""

    RUNNING = "running"  # created; the first stage is under way
    CHEAP_PASS = "cheap-pass"  # the cheap pass is complete (kept for a real run after a dry run)
    CANDIDATES = "running-candidates"  # the plan is stored; costlier candidates under way
    COMPLETE = "complete"

    @classmethod
    def of(cls, attrs: dict) -> Status | None:
        """The status stored in ``attrs`` (None for an output matseg did not write)."""
        try:
            return cls(attrs.get("status"))
        except ValueError:
            return None


UNFINISHED = (Status.RUNNING, Status.CHEAP_PASS, Status.CANDIDATES)


class Start(str, enum.Enum):
    """How a run starts on its output."""

    NEW = "new"  # nothing kept: the output is (re)created
    RESUME = "resume"  # the same run, unfinished: only its unfinished tiles are computed
    REUSE_CHEAP = "reuse-cheap"  # a selector run over a stored cheap pass
    FINISHED = "finished"  # the same run, finished: nothing to compute (a requeued job)


def set_status(root: zarr.Group, status: Status | None = None, **changes) -> None:
    """Store ``status`` (and other run attributes) in the output's attributes."""
    if status is not None:
        changes["status"] = status.value
    root.attrs["matseg"] = {**root.attrs["matseg"], **changes}


def start_of(job: Job, overwrite: bool) -> tuple[Start, dict | None]:
    """How a run starts on what is at its output: ``new``, ``resume`` (the same run,
    unfinished), ``finished`` (the same run, finished) or ``reuse-cheap`` (a selector run
    over a stored cheap pass); with the stored attributes when something is kept.

    Raises
    ------
    MatsegError
        If the output holds something else and ``overwrite`` is not given.
    """
    out = job.output
    if not out.exists():
        return Start.NEW, None
    attrs = run_attrs(out)
    status = Status.of(attrs)
    unfinished = status in UNFINISHED
    if unfinished and attrs.get("settings") == job.identity and "normalization" in attrs:
        return Start.RESUME, attrs
    if status == Status.COMPLETE and attrs.get("settings") == job.identity and not overwrite:
        return Start.FINISHED, attrs  # a requeued job, or the same command again: nothing to do
    # a cheap pass is kept with its records (outputs of earlier versions have none)
    cheap_kept = (
        status in (Status.CHEAP_PASS, Status.CANDIDATES, Status.COMPLETE)
        and (out / "progress/cheap").is_dir()
    )
    if job.cheap_identity and cheap_kept and attrs.get("cheap_pass") == job.cheap_identity:
        if status == Status.CHEAP_PASS or overwrite:
            return Start.REUSE_CHEAP, attrs
    if overwrite:
        check_replaceable(out, ("segment",))
        return Start.NEW, None
    if unfinished:
        differs = _differing(attrs.get("settings") or {}, job.identity)
        raise MatsegError(
            f"output {out} is an unfinished matseg run with other settings ({', '.join(differs)}); "
            "run its own command to resume it, or pass --overwrite to start again"
        )
    if status == Status.COMPLETE:  # what differs from the finished run, said
        differs = _differing(attrs.get("settings") or {}, job.identity)
        what = f" (a finished run with other settings: {', '.join(differs)})" if differs else ""
        if job.cheap_identity and attrs.get("cheap_pass") == job.cheap_identity:
            what += "; pass --overwrite to replace it (its cheap pass will be reused)"
            raise MatsegError(f"output {out} exists{what}")
        raise MatsegError(f"output {out} exists{what}; pass --overwrite to replace it")
    raise MatsegError(f"output {out} exists; pass --overwrite to replace it")


def _differing(stored: dict, identity: dict) -> list[str]:
    """The settings in which two identities differ; within a group (the audit's), its members."""
    names = []
    for key in sorted(set(identity) | set(stored)):  # a key one of them lacks (region) differs too
        value, old = identity.get(key), stored.get(key)
        if old == value:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            names += [f"{key} {k}" for k in sorted(value) if old.get(k) != value[k]]
        else:
            names.append(key)
    return names


def open_output(job: Job, start: Start, norm: Normalization) -> zarr.Group:
    """The output store, created for a new run; progress records reset where they no longer hold."""
    if start != Start.NEW:
        root = zarr.open_group(str(job.output), mode="r+")
        place(root, job.volume.voxel_size, job.volume.offset)  # this run's, were they given otherwise
        if start == Start.REUSE_CHEAP:  # a new plan: the previous candidates' records do not hold
            TileRecords.create(root, "finish", job.grid.n_tiles, finish_fields(job))
            set_status(root, Status.CHEAP_PASS, settings=job.identity)
        return root
    remove_output(job.output, ("segment",))
    with building(job.output) as temp:  # visible at its path only once its identity is recorded
        _create_output(job, temp, norm)
    return zarr.open_group(str(job.output), mode="r+")


def _create_output(job: Job, path: Path, norm: Normalization) -> None:
    """A new output store at ``path``: empty arrays, progress records and the run's identity."""
    root = create_ome_store(
        path,
        job.volume.shape,
        job.grid.write_chunks,
        image=("uncertainty", "uint8"),
        labels={"phases": job.phases, "decisions": job.names},
        voxel_size=job.volume.voxel_size,
        offset=job.volume.offset,
    )
    n = job.grid.n_tiles
    if job.selector is None:
        TileRecords.create(root, "tiles", n, {"gflops": 1, "counts": len(job.phases), "seconds": 1})
    else:
        fields = {"gflops": 1, "counts": len(job.phases), "seconds": 1, "features": len(FEATURE_NAMES)}
        TileRecords.create(root, "cheap", n, fields)
        TileRecords.create(root, "finish", n, finish_fields(job))
    root.attrs["matseg"] = {
        "status": Status.RUNNING.value,
        "version": __version__,
        "input": {"source": str(job.input)},
        "settings": job.identity,
        "cheap_pass": job.cheap_identity,
        "normalization": norm.as_dict(),
        "rewritten": [],
    }
    # decisions stay at the fill value (0, cheap) where stage 2 never rewrites a tile
    root["labels/decisions/0"].attrs[DECLARATION[0]] = DECLARATION[1]


def finish_fields(job: Job) -> dict:
    """The record of a tile's final labels in a selector run."""
    return {"gflops": 1, "counts": len(job.phases), "seconds": len(job.names)}


def any_done(root: zarr.Group) -> bool:
    """Whether any tile of any stage is finished."""
    return any(TileRecords(a).done().any() for _, a in root["progress"].arrays())


def todo(records: TileRecords, indices, wanted=None) -> list[tuple[int, tuple[int, ...]]]:
    """(position, index) of the tiles still to compute (of ``wanted``, if given)."""
    done = records.done()
    return [(t, idx) for t, idx in enumerate(indices) if not done[t] and (wanted is None or idx in wanted)]
