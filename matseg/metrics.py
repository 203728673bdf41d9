"""Segmentation metrics, streamed over dask arrays (see docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dask.array as da
import numpy as np

from matseg.errors import MatsegError
from matseg.tiling import CHUNKS_AT_ONCE, slabs


def confusion_matrix(
    pred: da.Array,
    truth: da.Array,
    n_phases: int,
    mask: da.Array | None = None,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Counts ``cm[t, p]`` of voxels of true phase ``t`` predicted as ``p``.

    Truth values outside ``0..n_phases-1`` (e.g. 255 = unlabelled) are ignored,
    and so are voxels where ``mask`` is False. Counted slab by slab of whole chunks of
    ``pred`` (``truth`` and ``mask`` chunked alike), so the graph stays bounded;
    ``advance(1)`` is called after each slab.
    """
    counts = np.zeros((n_phases, n_phases), np.int64)
    for start, stop in slabs(pred.chunks, CHUNKS_AT_ONCE):
        part = slice(start, stop)
        counts += _confusion(pred[part], truth[part], n_phases, None if mask is None else mask[part])
        if advance is not None:
            advance(1)
    return counts


def _confusion(pred: da.Array, truth: da.Array, n_phases: int, mask: da.Array | None) -> np.ndarray:
    truth = truth.astype(np.int64)
    pred = da.clip(pred.astype(np.int64), 0, n_phases - 1)
    valid = (truth >= 0) & (truth < n_phases)
    if mask is not None:
        valid = valid & mask
    size = n_phases * n_phases + 1
    code = da.where(valid, truth * n_phases + pred, size - 1)
    # counted block by block and summed: raveling a chunked volume would rechunk it
    # into whole planes first (memory growing with the volume's cross-section)
    per_block = code.map_blocks(
        _block_counts,
        size,
        chunks=tuple((1,) * len(c) for c in code.chunks[:-1]) + ((size,) * len(code.chunks[-1]),),
        dtype=np.int64,
    )
    counts = per_block.sum(axis=tuple(range(code.ndim - 1))).compute()
    counts = counts.reshape(-1, size).sum(axis=0)
    return counts[: size - 1].reshape(n_phases, n_phases)


def _block_counts(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes.ravel(), minlength=size).reshape((1,) * (codes.ndim - 1) + (size,))


def iou_per_phase(cm: np.ndarray) -> np.ndarray:
    """IoU_k = TP_k / (TP_k + FP_k + FN_k); NaN where a phase is absent from both.

    ``cm`` is one confusion matrix, or a stack of them (the last two axes).
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    union = cm.sum(axis=-2) + cm.sum(axis=-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def iou_in_truth(cm: np.ndarray) -> np.ndarray:
    """IoU per phase of ``cm[t, p]`` (one matrix, or a stack), NaN for a phase the truth does not
    hold: it has no IoU (its predicted voxels still count against the true phases). The rule of
    every mIoU against a truth (:func:`summarize`, ``matseg evaluate``'s sweep)."""
    return np.where(cm.sum(axis=-1) > 0, iou_per_phase(cm), np.nan)


def summarize(cm: np.ndarray, phases: Sequence[str]) -> dict:
    """mIoU, per-phase IoU and voxel count of a confusion matrix ``cm[t, p]``.

    The mIoU is the mean IoU over the phases present in the truth. A phase the truth does not
    hold has no IoU (``None``; its predicted voxels still count against the true phases) and is
    listed under ``absent_from_truth``.
    """
    iou = iou_in_truth(cm)
    in_truth = cm.sum(axis=1) > 0
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(phases, iou)},
        "absent_from_truth": [name for name, present in zip(phases, in_truth) if not present],
        "voxels": int(cm.sum()),
    }


def match_truth(
    truth_phases: Sequence[str] | None,
    phases: Sequence[str],
    source: str,
    named: Sequence[str] | None = None,
) -> dict:
    """How the label values of a truth stand for a run's ``phases``.

    By name where the truth names its phases (``truth_phases``, e.g. a ``matseg sample``
    store's ``image-label`` properties), or the user names them (``named``, from
    ``--truth-phases``: the names of the truth's values 0, 1, 2 ...): ``values[k]`` is the
    truth's value of the run's phase ``k``. By value where neither names them: phase i of the
    truth is phase i of the run.

    Raises
    ------
    MatsegError
        Where both name their phases and the names differ (as sets): no phase can be matched
        with confidence, so none is scored. Where ``named`` is not the run's phases, each once,
        or contradicts the names the truth records.
    """
    phases = list(phases)
    if named is not None:
        check_truth_phases(named, phases)
        if truth_phases and list(truth_phases) != list(named):
            raise MatsegError(
                f"truth {source} names its phases {', '.join(truth_phases)} (values 0, 1, ...); "
                f"--truth-phases says {','.join(named)}: drop --truth-phases (the truth's own names are used)"
            )
        match = match_truth(named, phases, source)
        return match | {"named_by": "--truth-phases"}
    if not truth_phases:
        note = (
            "truth has no phase names: phase i of the truth compared with phase i of the run "
            f"({', '.join(f'{i} {name}' for i, name in enumerate(phases))})"
        )
        return {"by": "value", "truth_phases": None, "values": list(range(len(phases))), "note": note}
    truth_phases = list(truth_phases)
    if sorted(truth_phases) != sorted(phases):
        raise MatsegError(
            f"truth {source} names its phases {', '.join(truth_phases)}; the run's are "
            f"{', '.join(phases)}: name the run's phases as the truth does (--phases with "
            "--model classical, or weights trained on those names)"
        )
    return {"by": "name", "truth_phases": truth_phases, "values": [truth_phases.index(p) for p in phases]}


def check_truth_phases(named: Sequence[str], phases: Sequence[str]) -> None:
    """``--truth-phases``: the run's ``phases``, each once, in the order of the truth's values."""
    given = ",".join(named)
    if len(named) != len(phases):
        raise MatsegError(
            f"--truth-phases {given}: {len(named)} name{'' if len(named) == 1 else 's'} for the run's "
            f"{len(phases)} phases "
            f"({', '.join(phases)}); name the truth's values 0 .. {len(phases) - 1} in order"
        )
    unknown = [n for n in named if n not in phases]
    if unknown:
        raise MatsegError(
            f"--truth-phases {given}: {', '.join(unknown)} "
            f"{'is not one' if len(unknown) == 1 else 'are none'} of the run's phases "
            f"({', '.join(phases)}); name the truth's values 0 .. {len(phases) - 1} with those"
        )
    twice = sorted({n for n in named if list(named).count(n) > 1})
    if twice:
        raise MatsegError(f"--truth-phases {given} names {', '.join(twice)} twice; name each phase once")


def truth_as_phases(truth: da.Array, match: dict) -> da.Array:
    """``truth`` with its values turned into the run's phase values (``match`` from
    :func:`match_truth`); values that stand for no phase (255 = unlabelled) become 255."""
    values = match["values"]
    if values == list(range(len(values))):
        return truth
    lookup = np.full(max(values) + 1, 255, np.uint8)
    lookup[values] = np.arange(len(values))
    return truth.map_blocks(_look_up, lookup, dtype=np.uint8)


def _look_up(block: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    inside = (block >= 0) & (block < len(lookup))
    return np.where(inside, lookup[np.where(inside, block, 0)], 255).astype(np.uint8)


def volume_fractions(counts: np.ndarray, phases: Sequence[str]) -> dict[str, float]:
    total = max(int(np.sum(counts)), 1)
    return {name: float(c) / total for name, c in zip(phases, counts)}
