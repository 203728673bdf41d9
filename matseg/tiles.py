"""A tile's life: normalise -> cheap pass -> (maybe) a costlier candidate -> blend -> crop.

Pure functions over one tile's array (halo included); :mod:`matseg.segment`
wires them into a dask graph and writes what they return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matseg.models.weights import phase_labels, segment_tile
from matseg.selector.candidates import Candidate, Context
from matseg.selector.features import tile_features
from matseg.stitch import blend_weights, crop_extended, extended_region
from matseg.tiling import TileGrid


@dataclass(frozen=True)
class TileInput:
    """One tile as the models see it: normalised (Z, Y, X) with its halo, and where its core lies."""

    image: np.ndarray
    core: tuple[slice, slice]  # the core inside ``image`` (in-plane)
    covers: tuple[slice, ...]  # what ``image`` covers in volume coordinates (all axes)


def tile_input(block: np.ndarray, index: Sequence[int], grid: TileGrid, norm) -> TileInput:
    x = norm(block)
    x = x if x.ndim == 3 else x[None]
    (y0, y1), (x0, x1) = grid.halo_of(index)[-2:]
    core = (slice(y0, x.shape[-2] - y1), slice(x0, x.shape[-1] - x1))
    region = grid.region(index)
    covers = list(region)
    covers[-2] = slice(region[-2].start - y0, region[-2].stop + y1)
    covers[-1] = slice(region[-1].start - x0, region[-1].stop + x1)
    return TileInput(x, core, tuple(covers))


def cheap_pass(tile: TileInput, context: Context) -> dict:
    """The cheap segmenter on a tile: labels, uncertainty and selector features of its core."""
    model = context.models["cheap"]
    probs, uncertainty = segment_tile(model, tile.image)
    core = (slice(None), *tile.core)
    probs_core = probs[(slice(None), slice(None), *tile.core)]
    labels = phase_labels(probs_core)
    return {
        "labels": labels,
        "uncertainty": uncertainty[core],
        "features": tile_features(tile.image[core], probs_core, uncertainty[core], labels),
        "gflops": model.gflops(tile.image.shape),
    }


def candidate_probs(tile: TileInput, candidate: Candidate, context: Context, want: tuple[slice, ...]):
    """``candidate``'s probabilities over the region ``want`` (core plus blending band)."""
    probs = candidate.run(context, tile.image)
    return crop_extended(probs, tile.covers, want), candidate.gflops(context, tile.image.shape)


def blended_labels(
    index: Sequence[int],
    grid: TileGrid,
    band: int,
    choice: Mapping[tuple[int, ...], int],
    own: np.ndarray,
    others: Mapping[int, np.ndarray],
    neighbour_probs: Mapping[tuple[int, ...], np.ndarray],
) -> np.ndarray:
    """Labels of a tile's core, blending across borders with neighbours that ran another candidate.

    Parameters
    ----------
    own : ndarray (Z, C, Y, X)
        This tile's candidate over its extended region.
    others : mapping
        Candidate index -> its probabilities computed on this tile (over the extended region),
        for candidates cheap enough to recompute here (the cheap pass).
    neighbour_probs : mapping
        Neighbour tile index -> its candidate's probabilities over its own extended region.
    """
    region = grid.region(index)
    here = extended_region(grid, index, band)
    mine = choice[tuple(index)]
    # the weight of each source of probabilities: this tile's candidate (also for neighbours
    # that chose the same one), a candidate recomputed here, or a neighbour's own result
    sources: dict[tuple, np.ndarray] = {}
    for offset, w in blend_weights(grid, index, band).items():
        j = _shift(index, offset)
        k = choice[j]
        key = ("own",) if k == mine else ("here", k) if k in others else ("neighbour", j)
        sources[key] = sources[key] + w if key in sources else w
    if len(sources) == 1:  # the whole neighbourhood ran one candidate: nothing to blend
        return phase_labels(crop_extended(own, here, region))
    total = np.zeros(own.shape[:2] + tuple(s.stop - s.start for s in region[-2:]), np.float32)
    for key, w in sources.items():
        if key[0] == "own":
            values = crop_extended(own, here, region)
        elif key[0] == "here":
            values = crop_extended(others[key[1]], here, region)
        else:
            values = crop_extended(neighbour_probs[key[1]], extended_region(grid, key[1], band), region)
        total += w * values
    return phase_labels(total)


def _shift(index: Sequence[int], offset: tuple[int, int]) -> tuple[int, ...]:
    j = list(index)
    j[-2] += offset[0]
    j[-1] += offset[1]
    return tuple(j)
