"""Tiled inference equals whole-array inference, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from matseg import MatsegError, open_volume, segment
from matseg.models.weights import load_segmenter, segment_probs
from matseg.segment import intensity_range, percentiles
from matseg.tiling import plan_tiles

from .conftest import smooth_noise


def whole_array_labels(path, model):
    """Reference: the model on each whole slice at once, no tiles."""
    volume = open_volume(path)
    x = intensity_range(volume)(volume.data.compute())
    probs = segment_probs(model, x[None] if x.ndim == 2 else x)
    labels = probs.argmax(axis=1).astype(np.uint8)
    return labels[0] if x.ndim == 2 else labels


@pytest.mark.parametrize("model_name", ["cheap", "expensive"])
@pytest.mark.parametrize(
    "shape, chunks, tile",
    [
        ((5, 150, 203), (2, 40, 50), (2, 64, 64)),  # 3-D, shape not a multiple of the tile
        ((150, 203), (40, 50), (64, 64)),  # 2-D
        ((3, 97, 70), (3, 97, 70), (3, 32, 32)),  # tile smaller than the expensive halo along Y
    ],
)
def test_tiled_equals_whole(tmp_path, random_weights, model_name, shape, chunks, tile):
    model = load_segmenter(model_name, random_weights)
    if min(tile[-2:]) < model.halo and max(shape[-2:]) > min(tile[-2:]):
        with pytest.raises(MatsegError, match="smaller than the halo"):
            plan_tiles(shape, tile, model.halo, model.stride)
        return
    data = smooth_noise(shape, seed=sum(shape))
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=shape, chunks=chunks, dtype="float32")[:] = data
    report = segment(src, tmp_path / "out.zarr", model=model_name, weights=random_weights, tile=tile)
    assert report["tiles"] > 1
    tiled = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels/phases/0"][:]
    whole = whole_array_labels(src, model)
    assert tiled.shape == shape
    assert len(np.unique(whole)) > 1, "reference is trivial; the test would prove nothing"
    np.testing.assert_array_equal(tiled, whole)


def test_too_small_halo_breaks_exactness(tmp_path, random_weights):
    """Control: the same comparison fails when the halo is forced below the receptive field."""
    from matseg.tiling import TileGrid

    model = load_segmenter("expensive", random_weights)
    data = smooth_noise((1, 192, 192), seed=5)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=data.shape, chunks=data.shape, dtype="float32")[:] = data
    whole = whole_array_labels(src, model)
    grid = plan_tiles(data.shape, (1, 64, 64), 8, model.stride)
    assert isinstance(grid, TileGrid)
    norm = intensity_range(open_volume(src))
    tiled = np.zeros_like(whole)
    for idx in grid.indices():
        region = grid.region(idx)
        (y0, y1), (x0, x1) = grid.halo_of(idx)[1:]
        ys, xs = region[1], region[2]
        block = data[:, ys.start - y0 : ys.stop + y1, xs.start - x0 : xs.stop + x1]
        probs = segment_probs(model, norm(block))
        tiled[region] = probs.argmax(1)[:, y0 : probs.shape[2] - y1, x0 : probs.shape[3] - x1]
    assert (tiled != whole).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32])
def test_percentiles_equal_numpy(dtype):
    """The histogram route for small integers gives numpy's float64 percentiles bit for bit."""
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.iinfo(np.int16)
    for size in (1, 2, 7, 1000, 4097):
        for _ in range(40):
            lo, hi = np.sort(rng.integers(info.min, info.max + 1, 2))
            sample = rng.integers(lo, hi + 1, size).astype(dtype)
            q = (0.5, 99.5, 0.0, 100.0, 50.0, float(rng.uniform(0, 100)))
            np.testing.assert_array_equal(percentiles(sample, q), np.percentile(sample.astype(np.float64), q))


def test_tile_must_follow_stride(random_weights):
    model = load_segmenter("expensive", random_weights)
    with pytest.raises(MatsegError, match="multiple of 8"):
        plan_tiles((4, 300, 300), (4, 100, 100), model.halo, model.stride)
