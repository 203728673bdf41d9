"""Seams: blending weights and the seam score."""

from __future__ import annotations

import numpy as np
import pytest

import matseg.stitch
from matseg.stitch import blend_weights, seam_score
from matseg.tiling import plan_tiles

from .conftest import smooth_noise


@pytest.fixture
def labels():
    """Smooth 3-phase labels, as a model would give on a whole volume."""
    field = smooth_noise((4, 200, 232), seed=11)
    return np.digitize(field, np.quantile(field, [0.35, 0.65])).astype(np.uint8)


def test_seamless_stitch_scores_about_one(labels):
    grid = plan_tiles(labels.shape, (4, 48, 48), 16, 8)
    score = seam_score(labels, grid)
    assert 0.7 < score["score"] < 1.3
    assert score["border_pairs"] > 0


def test_one_tile_in_plane_has_no_seam_score(labels):
    """No pair straddles a tile border: no score (not 0, which would read as better than
    seamless), and the summary says so."""
    from matseg.console import _seam_text

    grid = plan_tiles(labels.shape, (2, 256, 256), 16, 8)  # tiles along Z only
    score = seam_score(labels, grid)
    assert score["border_pairs"] == 0 and score["score"] is None
    assert "none to score" in _seam_text(score["score"])


def test_synthetic_seam_is_detected(labels):
    grid = plan_tiles(labels.shape, (4, 48, 48), 16, 8)
    seamed = labels.copy()
    for index in grid.indices():
        if sum(index) % 2:  # every other tile comes from a model that sees the volume shifted
            region = grid.region(index)
            seamed[region] = np.roll(labels, (3, 3), axis=(1, 2))[region]
    clean, broken = seam_score(labels, grid)["score"], seam_score(seamed, grid)["score"]
    assert broken > 2 * clean
    assert broken > 2.0


def _seam_counts_by_hand(labels, grid):
    """Disagreeing and all adjacent in-plane pairs, across tile borders and inside tiles."""
    counts = np.zeros(4, np.int64)
    for axis in (-2, -1):
        disagree = np.diff(labels, axis=axis) != 0
        edges = np.cumsum(grid.chunks[axis])[:-1]  # a pair (i - 1, i) straddles a border at i
        border = np.zeros(labels.shape[axis] - 1, bool)
        border[edges - 1] = True
        at = border.reshape([-1 if a == labels.ndim + axis else 1 for a in range(labels.ndim)])
        at = np.broadcast_to(at, disagree.shape)
        counts += (disagree[at].sum(), at.sum(), disagree[~at].sum(), (~at).sum())
    return counts


@pytest.mark.parametrize(
    "shape, tile", [((4, 200, 232), (4, 48, 48)), ((3, 200, 232), (1, 64, 56)), ((200, 232), (48, 64))]
)
@pytest.mark.parametrize("rows_at_once", [1, 4096])
def test_seam_counts_equal_counting_the_whole_array(shape, tile, rows_at_once, monkeypatch):
    """Tile by tile, each tile read once, in runs of one row of tiles or all: the very pairs
    of the whole array (uneven last tiles included), split into across-borders and inside."""
    field = smooth_noise(shape if len(shape) == 3 else (1, *shape), seed=5).reshape(shape)
    labels = np.digitize(field, np.quantile(field, [0.3, 0.7])).astype(np.uint8)
    grid = plan_tiles(shape, tile, 16, 8)
    monkeypatch.setattr(matseg.stitch, "GROUP_TILES", rows_at_once * grid.grid_shape[-1])
    score = seam_score(labels, grid)
    border_sum, border_n, inside_sum, inside_n = _seam_counts_by_hand(labels, grid).tolist()
    assert score["border_pairs"] == border_n
    assert score["border_rate"] == border_sum / border_n
    assert score["inside_rate"] == inside_sum / inside_n


def test_blend_weights_sum_to_one():
    grid = plan_tiles((2, 200, 232), (2, 64, 64), 16, 8)
    for index in grid.indices():
        weights = blend_weights(grid, index, band=16)
        total = sum(weights.values())
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
        for offset, w in weights.items():  # a tile always counts most in its own core
            assert (weights[(0, 0)] >= w - 1e-6).all(), offset


def _probs(rng, shape):
    p = rng.random(shape, dtype=np.float32)
    return p / p.sum(axis=1, keepdims=True)


def test_blended_labels_weigh_each_neighbours_probabilities():
    """Against the definition: per voxel, the blend weights times the probabilities of the
    candidate that each neighbour ran (recomputed here for the cheap one), with every
    candidate keeping only the strips :func:`blend_sides` asks for; on every tile of a grid
    (corners, edges, inside) under random plans."""
    from matseg.pipeline.blend import BorderProbs, blend_sides, blended_labels
    from matseg.stitch import crop_extended, extended_region, neighbour_indices

    rng = np.random.default_rng(3)
    grid = plan_tiles((2, 200, 232), (2, 64, 64), 16, 8)
    band = 16
    shape_of = lambda r: (2, 3, r[-2].stop - r[-2].start, r[-1].stop - r[-1].start)  # noqa: E731
    ext = {j: extended_region(grid, j, band) for j in grid.indices()}
    for _ in range(3):
        plan = {j: int(rng.choice(3, p=[0.3, 0.5, 0.2])) for j in grid.indices()}
        probs = {j: _probs(rng, shape_of(ext[j])) for j in grid.indices()}  # each tile's candidate
        cheap = {j: _probs(rng, shape_of(ext[j])) for j in grid.indices()}  # the cheap net on each tile
        kept = {
            j: BorderProbs.of(p, ext[j], grid.region(j), band, blend_sides(grid, j, plan))
            for j, p in probs.items()
        }
        for index in grid.indices():
            region = grid.region(index)
            around = neighbour_indices(grid, index)
            choice = {j: plan[j] for j in around.values()}
            mine = plan[index]
            own = kept[index] if mine else cheap[index]
            neighbours = {j: kept[j] for j in around.values() if plan[j] not in (0, mine)}
            labels = blended_labels(index, grid, band, choice, own, {0: cheap[index]}, neighbours)
            expected = 0.0
            for offset, w in blend_weights(grid, index, band).items():
                j = around[offset]
                k = plan[j]
                source, have = (cheap[index], ext[index]) if k == 0 else (probs[j], ext[j])
                if k == mine:
                    source, have = (cheap if mine == 0 else probs)[index], ext[index]
                expected = expected + w.astype(np.float64) * crop_extended(source, have, region)
            np.testing.assert_array_equal(labels, expected.argmax(axis=1), err_msg=str((index, choice)))
    # one candidate in the whole neighbourhood: the tile's own labels, untouched by blending
    index = (0, 1, 1)
    same = {j: 1 for j in neighbour_indices(grid, index).values()}
    assert blend_sides(grid, index, same) == frozenset()
    own = BorderProbs.of(probs[index], ext[index], grid.region(index), band, frozenset())
    assert own.strips == ()
    np.testing.assert_array_equal(
        blended_labels(index, grid, band, same, own, {}, {}),
        crop_extended(probs[index], ext[index], grid.region(index)).argmax(axis=1),
    )


def test_border_probs_keep_only_the_bands_blending_reads():
    from matseg.pipeline.blend import BorderProbs
    from matseg.stitch import crop_extended, extended_region

    rng = np.random.default_rng(5)
    band = 16
    grid = plan_tiles((8, 768, 768), (8, 256, 256), 16, 8)
    index = (0, 1, 1)
    region, here = grid.region(index), extended_region(grid, index, band)
    probs = _probs(rng, (8, 3, 288, 288))
    kept = BorderProbs.of(probs, here, region, band)
    np.testing.assert_array_equal(kept.labels, crop_extended(probs, here, region).argmax(axis=1))
    assert sum(values.nbytes for _, values in kept.strips) < 0.5 * probs.nbytes
    inner = np.zeros((288, 288), bool)
    inner[band * 2 : -band * 2, band * 2 : -band * 2] = True  # the core less its band, in ``here``
    back = kept.crop(here)
    np.testing.assert_array_equal(back[..., ~inner], probs[..., ~inner])
    assert not back[..., inner].any()
    # a core narrower than two bands is kept whole
    small = plan_tiles((2, 100, 100), (2, 24, 24), 8, 8)
    region, here = small.region((0, 1, 1)), extended_region(small, (0, 1, 1), band)
    probs = _probs(rng, (2, 3, 56, 56))
    np.testing.assert_array_equal(BorderProbs.of(probs, here, region, band).crop(here), probs)
    # only the pieces towards ``sides`` are kept: the right edge and its corners, or none
    region, here = grid.region(index), extended_region(grid, index, band)
    probs = _probs(rng, (8, 3, 288, 288))
    every = BorderProbs.of(probs, here, region, band)
    right = BorderProbs.of(probs, here, region, band, frozenset({(-1, 1), (0, 1), (1, 1)}))
    np.testing.assert_array_equal(right.labels, every.labels)
    beside = np.zeros((288, 288), bool)
    beside[:, -band * 2 :] = True  # the band either side of the right border, in ``here``
    back = right.crop(here)
    np.testing.assert_array_equal(back[..., beside], probs[..., beside])
    assert not back[..., ~beside].any()
    alone = BorderProbs.of(probs, here, region, band, frozenset())
    assert alone.strips == ()
    np.testing.assert_array_equal(alone.labels, every.labels)
