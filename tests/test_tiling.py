"""Tiled inference equals whole-array inference, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from matseg import MatsegError, open_volume, segment
from matseg.models.inference import segment_probs
from matseg.models.store import load_segmenter
from matseg.normalize import intensity_range, percentiles
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


def test_layer_groups_are_runs_of_whole_layers():
    from matseg.tiling import group_layers, layer_groups

    grid = plan_tiles((20, 96, 160), (4, 32, 32), 16, 16)  # 5 layers of 3 x 5 tiles
    todo = list(enumerate(grid.indices()))
    for size, layers in ((1, [1] * 5), (15, [1] * 5), (31, [2, 2, 1]), (45, [3, 2]), (10**6, [5])):
        groups = list(layer_groups(todo, size))
        assert [g for group in groups for g in group] == todo  # all of them, in order
        assert [len({i[0] for _, i in group}) for group in groups] == layers
        assert all(len(group) <= max(size, 15) for group in groups)
        assert [group_layers(group) for group in groups] == [
            range(group[0][1][0], group[-1][1][0] + 1) for group in groups
        ]
    resumed = [item for item in todo if item[0] % 4]  # a resume: some tiles done
    assert [g for group in layer_groups(resumed, 15) for g in group] == resumed
    flat = list(enumerate(plan_tiles((96, 160), (32, 32), 16, 16).indices()))
    assert list(layer_groups(flat, 4)) == [flat]  # a 2-D image: one layer
    assert group_layers(flat) is None


def test_tile_blocks_of_some_layers_are_the_same_blocks_in_a_smaller_graph():
    import tracemalloc

    import dask.array as da

    from matseg.tiling import tile_blocks

    data = da.from_array(smooth_noise((20, 96, 160), seed=3), chunks=(8, 40, 50))
    grid = plan_tiles(data.shape, (4, 32, 32), 16, 16)
    whole = tile_blocks(data, grid)
    for layers in (range(0, 2), range(1, 4), range(4, 5)):
        some = tile_blocks(data, grid, layers)
        for index in ((layers.start, 0, 0), (layers.stop - 1, 1, 3), (layers.start, 2, 4)):
            np.testing.assert_array_equal(some[index].compute(), whole[index].compute())
    # the graph made for one layer of a large lazy volume is a small part of the whole one
    big = da.zeros((400, 2560, 2560), np.uint8, chunks=(16, 256, 256))
    grid = plan_tiles(big.shape, (8, 256, 256), 32, 16)  # 50 layers of 100 tiles
    sizes = []
    for layers in (None, range(7, 8)):
        tracemalloc.start()
        tile_blocks(big, grid, layers)
        sizes.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert sizes[1] * 10 < sizes[0], sizes


@pytest.mark.parametrize("shape, chunks", [((37, 64, 80), (5, 32, 32)), ((150, 203), (40, 50))])
def test_intensity_pass_slab_by_slab_is_the_same(tmp_path, monkeypatch, shape, chunks):
    """The intensity pass runs over slabs of whole chunks (a bounded graph at a time); its
    strided subsample, percentiles and thresholds are those of one pass over the volume,
    and a NaN in the last slab is still found before anything is written."""
    import importlib

    from matseg.tiling import slabs

    seg = importlib.import_module("matseg.normalize")

    data = smooth_noise(shape, seed=7) * 1000
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=shape, chunks=chunks, dtype="float32")[:] = data
    monkeypatch.setattr(seg, "_SUBSAMPLE_VOXELS", 4000)  # strides of 2 and more, not chunk-aligned
    whole = intensity_range(open_volume(src), 3)
    monkeypatch.setattr(seg, "CHUNKS_AT_ONCE", 1)
    assert len(slabs(open_volume(src).data.chunks, 1)) == -(-shape[0] // chunks[0])
    assert intensity_range(open_volume(src), 3) == whole
    data[-1, -1] = np.nan
    zarr.open_array(str(src))[:] = data
    with pytest.raises(MatsegError, match="NaN or infinite"):
        intensity_range(open_volume(src), 3)


def test_a_fill_over_99_percent_of_the_voxels_leaves_the_range_of_the_rest(tmp_path):
    """Zeros around a small scan (0.4 % of the voxels, values 100..163): the 0.5-99.5 %
    range was 0..0, so the scan reached the models raw (100..163 in units of 0..1)."""
    data = np.zeros((4, 64, 64), np.uint8)
    data[1, 20:28, 20:28] = np.arange(100, 164, dtype=np.uint8).reshape(8, 8)
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=data.shape, chunks=data.shape, dtype="uint8")[:] = data
    norm = intensity_range(open_volume(src), 3)
    assert 100 <= norm.low < norm.high <= 163
    assert all(0 < t < 1 for t in norm.thresholds)


@pytest.mark.parametrize("fill, end", [(0, "minimum"), (255, "maximum")])
def test_a_fill_around_a_circular_scan_is_found_and_kept_in_the_report(tmp_path, fill, end):
    """A CT reconstruction's circle: the corners hold one value (22 % of the voxels here). The
    intensity pass says which, at which end and on what share, and takes the range, quantiles
    and thresholds from the scan without it; a scan without one says none; the stored
    normalisation (resume, finished runs) keeps it."""
    from matseg.normalize import Normalization

    noise = smooth_noise((4, 96, 96), seed=3)
    data = (30 + 200 * (noise - noise.min()) / np.ptp(noise)).astype(
        np.uint8
    )  # 30..230: no value held widely
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=data.shape, chunks=(2, 48, 48), dtype="uint8")[:] = data
    assert intensity_range(open_volume(plain), 3).fill is None
    y, x = np.ogrid[:96, :96]
    data[:, (y - 47.5) ** 2 + (x - 47.5) ** 2 > 48**2] = fill
    src = tmp_path / "ct.zarr"
    zarr.create_array(str(src), shape=data.shape, chunks=(2, 48, 48), dtype="uint8")[:] = data
    norm = intensity_range(open_volume(src), 3)
    assert norm.fill["value"] == fill and norm.fill["end"] == end
    assert 30 <= norm.low < norm.high <= 230  # the range (quantiles, thresholds) is the scan's own
    assert all(0 <= q <= 1 for q in norm.quantiles) and all(0 < t < 1 for t in norm.thresholds)
    assert norm.fill["share"] == pytest.approx(1 - np.pi / 4, abs=0.02)
    assert Normalization.from_dict(norm.as_dict()) == norm
    binary = tmp_path / "mask.zarr"  # a mask: its ends hold every voxel, and no fill
    zarr.create_array(str(binary), shape=data.shape, chunks=(2, 48, 48), dtype="bool")[:] = data > 128
    assert intensity_range(open_volume(binary), 2).fill is None


@pytest.mark.parametrize("values", [(255,), (100, 200)])
def test_a_sparse_image_whose_fill_is_a_phase_keeps_it_apart(tmp_path, values):
    """Zeros with a few bright particles (fewer values than phases besides the fill): the fill
    is a phase, and the classical thresholds still separate every value present."""
    data = np.zeros((8, 64, 64), np.uint8)
    for k, value in enumerate(values):
        data[:, 10 + 20 * k : 14 + 20 * k, 30:34] = value
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), shape=data.shape, chunks=data.shape, dtype="uint8")[:] = data
    norm = intensity_range(open_volume(src), len(values) + 1)
    levels = norm(np.array((0, *values)))
    assert all(a < t < b for a, t, b in zip(levels, norm.thresholds, levels[1:])), (levels, norm.thresholds)


def test_confusion_matrix_slab_by_slab_counts_every_voxel_once(monkeypatch):
    import dask.array as da

    import matseg.metrics
    from matseg.metrics import confusion_matrix

    rng = np.random.default_rng(4)
    pred = rng.integers(0, 3, (23, 40, 30)).astype(np.uint8)
    truth = rng.integers(0, 4, pred.shape).astype(np.uint8)
    truth[truth == 3] = 255  # unlabelled
    mask = rng.random(pred.shape) > 0.3
    keep = (truth < 3) & mask
    expected = np.bincount(truth[keep].astype(int) * 3 + pred[keep], minlength=9).reshape(3, 3)
    chunks = (4, 16, 16)
    args = [da.from_array(a, chunks=chunks) for a in (pred, truth)]
    monkeypatch.setattr(matseg.metrics, "CHUNKS_AT_ONCE", 9)  # one row of 3 x 2 chunks a slab: 6 slabs
    np.testing.assert_array_equal(confusion_matrix(*args, 3, da.from_array(mask, chunks=chunks)), expected)
