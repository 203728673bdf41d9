"""Segmentation metrics, streamed over dask arrays (see docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dask.array as da
import numpy as np

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


def summarize(cm: np.ndarray, phases: Sequence[str]) -> dict:
    """mIoU (mean over phases present), per-phase IoU and voxel count of a confusion matrix."""
    iou = iou_per_phase(cm)
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(phases, iou)},
        "voxels": int(cm.sum()),
    }


def volume_fractions(counts: np.ndarray, phases: Sequence[str]) -> dict[str, float]:
    total = max(int(np.sum(counts)), 1)
    return {name: float(c) / total for name, c in zip(phases, counts)}
