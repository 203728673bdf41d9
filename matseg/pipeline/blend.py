"""Blending across tile borders: a tile's labels where its neighbours ran another candidate.

A candidate's result is kept as :class:`BorderProbs` (the core's labels and the
probabilities near its borders); :func:`blended_labels` weighs the candidates of a
tile and its neighbours within the band of each border (weights:
:func:`matseg.stitch.blend_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from matseg.models.labels import phase_labels
from matseg.stitch import blend_weights, crop_extended, extended_region, neighbour_indices, paste
from matseg.tiling import TileGrid


@dataclass(frozen=True)
class BorderProbs:
    """A candidate's result on a tile as blending uses it: the core's labels, and the
    probabilities only within the band of the core's borders, on both sides.

    Blending weighs another candidate only within ``band`` of a border: a neighbour needs
    this tile's probabilities in the band outside the core, the tile itself in the band
    inside it, and deeper inside the core the tile's own labels stand. The frame of
    band-wide strips around the inner core is cut into four corners and four edges, and
    only those towards neighbours that ran another candidate are kept (:func:`blend_sides`):
    none for a tile whose neighbourhood ran its candidate throughout. Held from a tile's
    candidate task until its neighbours have blended, all eight are 45 % of the
    probabilities over the extended region (256 x 256 cores, band 16; labels included).
    """

    labels: np.ndarray  # (Z, Y, X) of the core
    strips: tuple[tuple[tuple[slice, slice], np.ndarray], ...]  # in-plane region, (Z, C, y, x)
    inner: tuple[slice, slice]  # the core farther than the band from its borders (may be empty)
    n_phases: int

    @classmethod
    def of(
        cls, probs: np.ndarray, have: tuple[slice, ...], region: tuple[slice, ...], band: int, sides=None
    ) -> BorderProbs:
        """From probabilities ``probs`` (Z, C, Y, X) over ``have`` for the core ``region``,
        keeping the pieces of the frame in the directions ``sides`` (default: all of them)."""
        labels = phase_labels(crop_extended(probs, have, region))
        (hy, hx), (ry, rx) = have[-2:], region[-2:]
        iy, ix = slice(ry.start + band, ry.stop - band), slice(rx.start + band, rx.stop - band)
        # the frame of the extended region around the inner core: all of it, as one piece
        # towards every side, for a core narrower than two bands (an empty inner core)
        strips = tuple(
            ((y, x), probs[(Ellipsis, *_within((hy, hx), (y, x)))].copy())
            for side, (y, x) in _frame((hy, hx), (iy, ix))
            if sides is None or (sides and side is None) or side in sides
        )
        return cls(labels, strips, (iy, ix), probs.shape[-3])

    def crop(self, want: tuple[slice, ...]) -> np.ndarray:
        """Probabilities over ``want``'s in-plane extent; zeros where none are kept."""
        shape = (*self.labels.shape[:-2], self.n_phases, *(w.stop - w.start for w in want[-2:]))
        out = np.zeros(shape, self.strips[0][1].dtype if self.strips else np.float32)
        for have, values in self.strips:
            paste(out, want, values, have)
        return out


def blend_sides(grid: TileGrid, index: Sequence[int], choice: Mapping[tuple[int, ...], int]) -> frozenset:
    """The pieces of a tile's frame (directions (dy, dx)) that blending reads of its candidate.

    A neighbour that ran another candidate weighs in along the side it lies on (an edge and
    its two corners) or, diagonally, in that corner alone; the tile's probabilities there
    are what the tile itself and that neighbour blend with. Elsewhere only the tile's own
    candidate counts, and its labels stand.
    """
    mine, sides = choice[tuple(index)], set()
    for (dy, dx), j in neighbour_indices(grid, index).items():
        if choice[j] == mine:
            continue
        if dy and dx:
            sides.add((dy, dx))
        elif dy:
            sides |= {(dy, -1), (dy, 0), (dy, 1)}
        else:
            sides |= {(-1, dx), (0, dx), (1, dx)}
    return frozenset(sides)


def blended_labels(
    index: Sequence[int],
    grid: TileGrid,
    band: int,
    choice: Mapping[tuple[int, ...], int],
    own: BorderProbs | np.ndarray,
    others: Mapping[int, np.ndarray],
    neighbour_probs: Mapping[tuple[int, ...], BorderProbs],
) -> np.ndarray:
    """Labels of a tile's core, blending across borders with neighbours that ran another candidate.

    Parameters
    ----------
    own : BorderProbs, or ndarray (Z, C, Y, X)
        This tile's candidate, or its probabilities over the tile's extended region.
    others : mapping
        Candidate index -> its probabilities computed on this tile (over the extended region),
        for candidates cheap enough to recompute here (the cheap pass).
    neighbour_probs : mapping
        Neighbour tile index -> its candidate's result (from its candidate task).
    """
    region = grid.region(index)
    here = extended_region(grid, index, band)
    if not isinstance(own, BorderProbs):
        own = BorderProbs.of(own, here, region, band)
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
        return own.labels
    # only within the band of the borders does the blend decide; deeper in stand the tile's
    # own labels (its weight there is 1 and every other weight 0: the blend would give the
    # same), so the probabilities are weighed over the frame of band-wide strips alone, and
    # only in its pieces where another candidate weighs in (the ones blend_sides keeps)
    labels = own.labels.copy()
    core = region[-2:]
    for _, piece in _frame(core, own.inner):
        at = _within(core, piece)
        weights = {key: w[at] for key, w in sources.items()}
        if not any(w.any() for key, w in weights.items() if key[0] != "own"):
            continue  # only the tile's own candidate weighs in this piece: its labels stand
        want = (*region[:-2], *piece)
        total = None
        for key, w in weights.items():
            if key[0] == "own":
                values = own.crop(want)
            elif key[0] == "here":
                values = crop_extended(others[key[1]], here, want)
            else:
                values = neighbour_probs[key[1]].crop(want)
            weighted = w * values
            total = weighted if total is None else total + weighted
        labels[(Ellipsis, *at)] = phase_labels(total)
    return labels


def _frame(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> list[tuple[tuple | None, tuple]]:
    """In-plane rectangles that cover ``outer`` outside ``inner``, each with its direction
    (dy, dx) from the centre: four corners and four edges (all of ``outer``, direction None,
    if ``inner`` is empty)."""
    (oy, ox), (iy, ix) = outer, inner
    if iy.start >= iy.stop or ix.start >= ix.stop:
        return [(None, (oy, ox))]
    rows = {-1: slice(oy.start, iy.start), 0: iy, 1: slice(iy.stop, oy.stop)}
    cols = {-1: slice(ox.start, ix.start), 0: ix, 1: slice(ix.stop, ox.stop)}
    pieces = [((dy, dx), (rows[dy], cols[dx])) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    return [(side, (y, x)) for side, (y, x) in pieces if y.stop > y.start and x.stop > x.start]


def _within(outer: tuple[slice, slice], piece: tuple[slice, slice]) -> tuple[slice, slice]:
    """``piece`` (absolute in-plane slices inside ``outer``) relative to ``outer``'s start."""
    return tuple(slice(p.start - o.start, p.stop - o.start) for o, p in zip(outer, piece))


def _shift(index: Sequence[int], offset: tuple[int, int]) -> tuple[int, ...]:
    j = list(index)
    j[-2] += offset[0]
    j[-1] += offset[1]
    return tuple(j)
