"""What ``matseg train`` and fine-tuning check before anything trains or is written: the
numbers they are given, a patch every net can take (and memory can hold), labels that teach
every phase, validation labels that mean the same phases, a weights folder of one set of phases.

A run that fails one of these fails in seconds, not after the nets before it have trained.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from matseg.errors import MatsegError
from matseg.labelled import UNLABELLED, LabelledSlices
from matseg.models.segmenter import Segmenter
from matseg.models.store import MANIFEST, read_manifest
from matseg.validate import check_number

# a training step's peak memory over the tensors autograd keeps for its backward pass:
# 1.17 (cheap) and 0.80 (expensive) measured (ru_maxrss, batch 8 of 512 px); the larger, with room
PEAK_OVER_SAVED = 1.25


def check_patch(model: Segmenter, data: Sequence[LabelledSlices], batch: int, patch: int) -> None:
    """Refuse a patch off the net's stride (its pooling grid: the net cannot run on it), larger
    than every labelled image, or one whose training step cannot fit in memory.

    :func:`train` asks this of every net it will train before it trains the first, so a patch
    that only the last net refuses is not found after the others have trained.

    Raises
    ------
    MatsegError
        Naming the patch that would do.
    """
    stride = model.stride
    if patch % stride:
        below = max(stride, patch - patch % stride)
        raise MatsegError(
            f"--patch {patch} must be a multiple of {stride} (the {model.name} net's stride): use "
            f"--patch {below} or {below + stride}"
        )
    largest_side = max(max(d.images.shape[1:]) for d in data)
    fits_image = -(-largest_side // stride) * stride
    if patch > fits_image:
        raise MatsegError(
            f"--patch {patch} is larger than the largest labelled image ({largest_side} px); "
            f"use --patch {fits_image} or less"
        )
    per_pixel = training_bytes_per_pixel(model)
    available = available_memory()
    need = per_pixel * batch * patch * patch
    if available is not None and need > available:
        side = int((available / (per_pixel * batch)) ** 0.5) // stride * stride
        advice = f"use --patch {side} or less" if side >= stride else "use a smaller --batch"
        raise MatsegError(
            f"training {model.name} with --batch {batch} --patch {patch} needs about "
            f"{need / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB are available; {advice}"
        )


def training_bytes_per_pixel(model: Segmenter) -> float:
    """Bytes a training step of ``model`` needs per input pixel at its peak: the tensors autograd
    keeps for the backward pass, measured on one small patch, times :data:`PEAK_OVER_SAVED`."""
    size = 8 * model.stride
    saved: dict[int, int] = {}  # by storage: many operations keep the same tensor

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    net = model.net
    was_training = net.training
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net.train()(torch.zeros(1, 1, size, size))
    net.train(was_training)
    return PEAK_OVER_SAVED * sum(saved.values()) / (size * size)


def available_memory() -> int | None:
    """Bytes this process may still allocate: the machine's available memory, or less under
    a cgroup (container, SLURM job) limit; None where it cannot be told."""
    available = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max":
            room = int(limit) - used
            available = room if available is None else min(available, room)
    return available


def check_fit_numbers(steps: dict[str, int] | int, batch: int, patch: int, lr: float) -> None:
    """What :func:`fit` is given, checked before anything is written: steps (per model, if a
    dict), batch and patch at least 1, a learning rate in (0, 1]."""
    for value in steps.values() if isinstance(steps, dict) else [steps]:
        check_number("--steps", value, low=1)
    check_number("--lr", lr, low=0.0, open_low=True, high=1.0)
    for name, value in (("--batch", batch), ("--patch", patch)):
        check_number(name, value, low=1)


def check_every_phase_labelled(data: Sequence[LabelledSlices], phases: Sequence[str]) -> None:
    """Every phase has labelled voxels: a net trained from scratch cannot learn a phase it never
    sees (label values that skip a number leave one without any)."""
    counts = np.zeros(len(phases), np.int64)
    for d in data:
        labelled = d.labels[d.labels != UNLABELLED]
        counts += np.bincount(labelled, minlength=len(phases))[: len(phases)]
    missing = [f"{v} ({name})" for v, (name, n) in enumerate(zip(phases, counts)) if n == 0]
    if missing:
        raise MatsegError(
            f"no labelled voxel of phase value(s) {', '.join(missing)}: label values must run 0 … "
            f"{len(phases) - 1} with every phase labelled somewhere; relabel, or name fewer phases"
        )


def check_val_phases(
    val: Sequence[str],
    val_data: Sequence[LabelledSlices],
    phases: Sequence[str],
    val_names: Sequence[Sequence[str] | None] | None = None,
) -> None:
    """Validation labels mean what the training labels mean: values within the training phases,
    and, where a validation store names its phases, the same name for every value it names.

    A value that means another phase there would be scored as this one (a 3-phase sample's
    carbon-binder counted as a 4-phase training's binder): an mIoU of nothing in particular.
    A store that names fewer phases (a sample without the last phase) is taken.
    """
    for source, d, names in zip(val, val_data, val_names or [None] * len(val)):
        top = int(d.labels[d.labels != UNLABELLED].max(initial=0))
        if top >= len(phases):
            raise MatsegError(
                f"--val {source}: labels use values up to {top}, but the training labels have "
                f"{len(phases)} phases ({', '.join(phases)})"
            )
        differ = [v for v, (a, b) in enumerate(zip(names or (), phases)) if a != b]
        if differ:
            v = differ[0]
            raise MatsegError(
                f"--val {source} names its phases {', '.join(names)}; the training phases are "
                f"{', '.join(phases)} (value {v} is {names[v]} there, {phases[v]} here): validate on "
                "labels of these phases, or name the training phases as they are meant (--phases)"
            )


def check_folder_phases(output: str | os.PathLike, phases: Sequence[str], models: Sequence[str]) -> None:
    """A weights folder keeps one set of phases: the nets not trained now must name the same."""
    manifest = read_manifest(output) if (Path(output) / MANIFEST).is_file() else {}
    others = {
        name: entry["phases"]
        for name, entry in manifest.items()
        if isinstance(entry, dict) and "architecture" in entry and name not in models
    }
    differ = [name for name, named in others.items() if tuple(named) != tuple(phases)]
    if differ:
        names = ", ".join(differ)
        raise MatsegError(
            f"{output} holds {names} for the phases {', '.join(others[differ[0]])}; these labels have "
            f"{', '.join(phases)}: train {names} too (--model), or write to a new folder"
        )
