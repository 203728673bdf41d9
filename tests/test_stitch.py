"""Seams: blending weights and the seam score."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_blend_weights_sum_to_one():
    grid = plan_tiles((2, 200, 232), (2, 64, 64), 16, 8)
    for index in grid.indices():
        weights = blend_weights(grid, index, band=16)
        total = sum(weights.values())
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
        for offset, w in weights.items():  # a tile always counts most in its own core
            assert (weights[(0, 0)] >= w - 1e-6).all(), offset
