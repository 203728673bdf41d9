"""The tile table: every candidate run on every tile of labelled volumes.

For training the selector and for evaluating it against baselines, each tile of
a labelled volume is segmented by every candidate once; the table keeps the
cheap pass's features, each candidate's confusion matrix against the truth and
its GFLOPs. Any plan (a candidate per tile) is then scored exactly by summing
the chosen confusion matrices, so a λ sweep costs nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import dask
import numpy as np

from matseg.candidates.registry import CANDIDATES, Context
from matseg.candidates.tile import candidate_probs, cheap_pass, tile_input
from matseg.cluster import Backend
from matseg.errors import MatsegError
from matseg.io.read import open_labels, open_volume
from matseg.metrics import iou_in_truth, iou_per_phase, match_truth, truth_as_phases
from matseg.selector.plan import blend_gflops, candidate_gflops, cheap_pass_gflops
from matseg.tiling import TileGrid, plan_tiles, shared_nodes, tile_blocks
from matseg.validate import check_label_values

IGNORE = 255


def _confusion(pred: np.ndarray, truth: np.ndarray, n_rows: int, n_phases: int) -> np.ndarray:
    keep = truth != IGNORE
    index = pred[keep].astype(np.int64) * n_phases + truth[keep].astype(np.int64)
    return np.bincount(index, minlength=n_rows * n_phases).reshape(n_rows, n_phases)


def _table_task(block, truth_block, index, grid, norm, context, names) -> dict:
    tile = tile_input(block, index, grid, norm)
    truth = truth_block if truth_block.ndim == 3 else truth_block[None]
    n = context.n_phases
    cheap = cheap_pass(tile, context)
    region = grid.region(index)
    confusions = []
    for name in names:
        if name == "cheap":
            labels = cheap["labels"]
        else:
            # on the largest halo: the same core prediction as on the candidate's own halo
            labels = candidate_probs(tile, CANDIDATES[name], context, region)[0].argmax(axis=1)
        confusions.append(_confusion(labels, truth, n, n))
    return {"features": cheap["features"], "confusion": np.stack(confusions)}


def tile_table(
    image: str,
    truth: str | None,
    context: Context,
    names: Sequence[str],
    tile: Sequence[int],
    halo: int,
    slices: Sequence[int] | None = None,
    truth_phases: Sequence[str] | None = None,
) -> dict:
    """Run every candidate in ``names`` on every tile of a labelled volume.

    Parameters
    ----------
    image, truth : str
        Image volume and its labels (255 = unlabelled); ``truth`` None means the
        image store's own label image (``labels/truth`` of a sample). Labels that name
        their phases (or whose ``truth_phases`` are given) are matched with the models'
        phases by name, others by value.
    context : Context
        Loaded models; the classical thresholds are computed here from the image.
    names : sequence of str
        Candidate names, ``cheap`` first.
    tile : sequence of int
        Tile size (as for ``segment``).
    halo : int
        In-plane halo.
    slices : sequence of int, optional
        Only these Z slices are labelled.
    truth_phases : sequence of str, optional
        The names of ``truth``'s label values 0, 1, ... (``--truth-phases``).

    Returns
    -------
    dict
        ``features`` (tiles, F), ``confusion`` (tiles, candidates, C, C) with
        rows = predicted, columns = true phase, ``gflops`` (tiles, candidates)
        spent on each tile when that candidate is chosen (cheap pass included).
    """
    from matseg.normalize import intensity_range

    volume = open_volume(image)
    labels = open_labels(image, truth)
    if labels.shape != volume.shape:
        raise MatsegError(f"labels {labels.source} have shape {labels.shape}; {image} has {volume.shape}")
    phases = tuple(next(iter(context.models.values())).phases) if context.models else context.phases
    match = match_truth(labels.phases, phases, labels.source, truth_phases)  # a named truth: by name
    check_label_values(labels.data, context.n_phases, labels.source, "labels")
    if volume.ndim == 2:
        tile = tuple(tile)[-2:]
    stride = max(m.stride for m in context.models.values())
    grid = plan_tiles(volume.shape, tile, halo, stride)
    norm = intensity_range(volume, context.n_phases)
    context = Context(context.models, norm.thresholds, context.phase_order)
    label_data = truth_as_phases(labels.data, match)
    if slices is not None:
        import dask.array as da

        keep = np.zeros(volume.shape[0], bool)
        keep[list(slices)] = True
        label_data = da.where(da.from_array(keep, chunks=-1)[:, None, None], label_data, IGNORE)
    truth_grid = TileGrid(grid.shape, grid.chunks, (0,) * len(grid.shape))  # the core only
    shared = shared_nodes(grid, norm, context, tuple(names))

    def tasks(group, layers) -> list:
        blocks = tile_blocks(volume.data, grid, layers)
        truths = tile_blocks(label_data, truth_grid, layers)
        return [dask.delayed(_table_task)(blocks[i], truths[i], i, *shared) for _, i in group]

    results = Backend(workers=os.cpu_count() or 1).compute_tiles(list(enumerate(grid.indices())), tasks)
    table = {key: np.stack([r[key] for r in results]) for key in ("features", "confusion")}
    # what segment spends when each candidate is chosen: the cheap pass plus the candidate
    # on its own halo; and the cheap pass recomputed on the band, where tiles are blended
    extra = candidate_gflops(grid, context, names)
    extra[:, 0] = 0.0
    # segment's cheap pass runs on the cheap net's own, smaller halo (same labels and features)
    table["gflops"] = cheap_pass_gflops(grid, context)[:, None] + extra
    table["recompute"] = blend_gflops(grid, context)
    labelled = table["confusion"][:, 0].sum(axis=(1, 2)) > 0
    table = {key: value[labelled] for key, value in table.items()}
    return table | {"names": tuple(names), "grid": grid, "labelled": labelled, "thresholds": norm.thresholds}


def merge_tables(tables: Sequence[dict]) -> dict:
    """Concatenate tile tables of several volumes (same candidates)."""
    keys = ("features", "confusion", "gflops", "recompute")
    merged = {key: np.concatenate([t[key] for t in tables]) for key in keys}
    return merged | {"names": tables[0]["names"]}


def class_to_phase(confusion: np.ndarray) -> np.ndarray:
    """Majority phase of each intensity class (rows) over a table's classical confusion matrices."""
    totals = confusion.reshape(-1, *confusion.shape[-2:]).sum(axis=0)
    return totals.argmax(axis=1)


def remap_rows(confusion: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Confusion matrices whose predicted classes (rows) are relabelled by ``mapping``."""
    out = np.zeros_like(confusion)
    for c, phase in enumerate(mapping):
        out[..., phase, :] += confusion[..., c, :]
    return out


def tile_iou(confusion: np.ndarray) -> np.ndarray:
    """mIoU per confusion matrix (last two axes), over phases present in prediction or truth."""
    iou = iou_per_phase(confusion)
    present = ~np.isnan(iou)
    return np.where(present, iou, 0.0).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def plan_iou(confusion: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """IoU per phase of the volume(s) when tile ``t`` uses candidate ``choice[t]``; NaN for a
    phase absent from the truth (:func:`matseg.metrics.iou_in_truth`, as a real run is scored)."""
    total = confusion[np.arange(len(choice)), choice].sum(axis=0)  # rows predicted, columns true
    return iou_in_truth(total.T)


def plan_miou(confusion: np.ndarray, choice: np.ndarray) -> float:
    """mIoU of the volume(s) when tile ``t`` uses candidate ``choice[t]``, over the phases the truth holds."""
    iou = plan_iou(confusion, choice)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def reward(iou: np.ndarray, gflops: np.ndarray, lam) -> np.ndarray:
    """Per tile and candidate: (1 - λ)(IoU_k - IoU_cheap) - λ GFLOPs_k / max_k GFLOPs."""
    lam = np.asarray(lam, np.float64)[..., None] if np.ndim(lam) else lam
    cost = gflops / gflops.max(axis=-1, keepdims=True)
    return (1 - lam) * (iou - iou[..., :1]) - lam * cost
