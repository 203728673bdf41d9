"""The reader: matseg outputs as labelled, coloured, lazy layers; any volume matseg reads."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

import matseg
from matseg_napari import napari_get_reader
from matseg_napari._editable import EditableLabels


def layers_by_name(layer_data):
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layer_data}


def test_output_opens_as_image_uncertainty_phases_and_decisions(segmented, sample):
    reader = napari_get_reader(str(segmented))
    assert reader is not None
    layers = layers_by_name(reader(str(segmented)))
    assert list(layers) == [
        "cathode",
        "cathode-phases uncertainty",
        "cathode-phases phases",
        "cathode-phases decisions",
    ]
    image, uncertainty, phases, decisions = layers.values()
    assert image[2] == "image" and isinstance(image[0], da.Array) and image[0].dtype == np.uint8
    assert image[1]["metadata"]["matseg"]["source"] == str(sample)

    assert uncertainty[2] == "image" and isinstance(uncertainty[0], da.Array)
    assert uncertainty[0].dtype == np.uint8 and uncertainty[1]["colormap"] == "inferno"
    assert uncertainty[1]["opacity"] < 1

    data, kwargs, kind = phases
    assert kind == "labels" and isinstance(data, EditableLabels) and isinstance(data.base, da.Array)
    assert data.dtype == np.uint8 and data.shape == (8, 64, 64)
    assert list(kwargs["features"]["phase"]) == ["pore", "carbon-binder", "active"]
    colours = kwargs["colormap"].color_dict
    assert np.allclose(colours[0], np.array([40, 40, 60, 255]) / 255)  # pore: dark, always the same
    assert colours[1][3] == 1 and colours[2][3] == 1 and not np.allclose(colours[1], colours[2])
    meta = kwargs["metadata"]["matseg"]
    assert meta["role"] == "phases" and meta["output"] == str(segmented)
    assert meta["report"]["tile"] == [4, 32, 32]

    data, kwargs, kind = decisions
    assert kind == "labels" and isinstance(data, da.Array) and data.dtype == np.uint8
    assert list(kwargs["features"]["candidate"]) == matseg.open_segmentation(segmented).report["candidates"]
    assert kwargs["colormap"].color_dict[0][3] == 1  # the cheap candidate is coloured, not transparent
    stored = zarr.open_group(str(segmented / "labels" / "decisions"), mode="r").attrs["ome"]["image-label"]
    for entry in stored["colors"]:  # the decision map is coloured as the output stores it
        assert np.allclose(kwargs["colormap"].color_dict[entry["label-value"]], np.array(entry["rgba"]) / 255)


def test_layers_are_lazy_until_viewed(segmented):
    """Nothing is read when the layers are made: the arrays are dask graphs over the store."""
    layer_data = napari_get_reader(str(segmented))(str(segmented))
    for data, _, _ in layer_data:
        lazy = data.base if isinstance(data, EditableLabels) else data
        assert isinstance(lazy, da.Array)
    phases = layer_data[2][0]
    truth = matseg.open_segmentation(segmented).phases.compute()
    assert np.array_equal(phases[3], truth[3])


def test_painting_never_touches_the_output(segmented):
    phases = napari_get_reader(str(segmented))(str(segmented))[2][0]
    before = matseg.open_segmentation(segmented).phases.compute()
    phases[(np.array([1, 1]), np.array([2, 40]), np.array([3, 50]))] = 2
    phases[5, 10:20, 10:20] = 1
    assert phases[1, 2, 3] == 2 and phases[1, 40, 50] == 2 and (phases[5, 10:20, 10:20] == 1).all()
    assert np.array_equal(matseg.open_segmentation(segmented).phases.compute(), before)
    assert phases.edited_chunks == 3  # chunks (0, 0, 0), (0, 1, 1), (1, 0, 0) of 4 x 32 x 32


def test_sample_opens_with_its_truth(sample):
    layers = layers_by_name(napari_get_reader(str(sample))(str(sample)))
    assert list(layers) == ["cathode", "cathode labels"]
    data, kwargs, kind = layers["cathode labels"]
    assert kind == "labels" and isinstance(data, da.Array)
    assert list(kwargs["features"]["phase"]) == ["pore", "carbon-binder", "active"]


@pytest.mark.parametrize("fmt", ["zarr-v2", "zarr-v3", "hdf5", "tiff"])
def test_plain_volumes_open_lazily(tmp_path, fmt):
    data = np.random.default_rng(0).integers(0, 1000, (3, 20, 30)).astype(np.uint16)
    if fmt.startswith("zarr"):
        path = tmp_path / "scan.zarr"
        array = zarr.create_array(
            str(path), shape=data.shape, chunks=(1, 20, 30), dtype=data.dtype, zarr_format=int(fmt[-1])
        )
        array[:] = data
    elif fmt == "hdf5":
        path = tmp_path / "scan.h5"
        with h5py.File(path, "w") as f:
            f["data"] = data
    else:
        path = tmp_path / "scan.tif"
        tifffile.imwrite(path, data)
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(layer, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "scan" and isinstance(layer, da.Array)
    assert np.array_equal(layer.compute(), data)


def test_other_paths_are_left_to_other_readers(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "folder")) is None
    assert napari_get_reader([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]) is None


def test_corrections_store_opens_as_corrected_phases(segmented):
    truth = matseg.open_volume(matseg.open_segmentation(segmented).image_source, labels=True).data.compute()
    labels = matseg.open_segmentation(segmented).phases.compute()
    labels[2] = truth[2]
    path = matseg.save_corrections(segmented, labels, reviewed=[(0, 1, 1)], session="s1")
    layers = layers_by_name(napari_get_reader(str(path))(str(path)))
    assert list(layers) == ["cathode", "cathode-phases corrected phases", "cathode-phases corrections mask"]
    data, kwargs, kind = layers["cathode-phases corrected phases"]
    assert kind == "labels" and np.array_equal(np.asarray(data), labels)
    meta = kwargs["metadata"]["matseg"]
    assert meta["output"] == str(segmented.absolute()) and meta["session"] == "s1"
    assert meta["reviewed"] == [[0, 1, 1]] and meta["corrections"] == str(path.absolute())


def test_viewer_opens_an_output_through_the_plugin(make_napari_viewer, segmented):
    viewer = make_napari_viewer()
    viewer.open(str(segmented), plugin="matseg-napari")
    assert [layer.name for layer in viewer.layers] == [
        "cathode",
        "cathode-phases uncertainty",
        "cathode-phases phases",
        "cathode-phases decisions",
    ]
    phases = viewer.layers["cathode-phases phases"]
    assert phases.data.dtype == np.uint8 and isinstance(phases.data.base, da.Array)
    assert viewer.layers["cathode-phases uncertainty"].colormap.name == "inferno"
    # napari paints on it: a brush stroke changes the layer, not the store
    phases.brush_size = 3
    phases.paint((0, 10, 10), 2, refresh=True)
    assert phases.data[0, 10, 10] == 2


def test_viewer_opens_an_output_at_its_physical_scale(make_napari_viewer, weights, tmp_path):
    """A volume with a recorded voxel size: every layer of its segmentation is in those units."""
    from matseg.io.scale import VoxelSize
    from matseg.sample import write_sample

    voxel = VoxelSize((30.0, 10.0, 10.0), "nanometer")
    sample = write_sample(tmp_path / "fib.zarr", (4, 64, 64), seed=5, voxel_size=voxel)
    out = tmp_path / "fib-phases.zarr"
    matseg.segment(sample, out, model="cheap", weights=weights, tile=(4, 32, 32))
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="matseg-napari")
    assert len(viewer.layers) == 4
    for layer in viewer.layers:
        assert tuple(layer.scale) == (30.0, 10.0, 10.0), layer.name
        assert [str(u) for u in layer.units] == ["nanometer"] * 3, layer.name


def test_an_output_named_like_another_format_keeps_its_name(segmented, tmp_path):
    """An output is a Zarr store whatever its name: one called ``out.h5`` opened as ``out phases``,
    the names of ``out.zarr``'s layers, so two outputs in one viewer could not be told apart. Only
    the store's own suffix is dropped from the layer names, its corrections' too."""
    import shutil

    names = {}
    for name in ("out.h5", "out.zarr"):
        output = tmp_path / name
        shutil.copytree(segmented, output)
        labels = matseg.open_segmentation(output).phases.compute()
        store = matseg.save_corrections(output, labels, session="s1")
        names[name] = [kwargs["name"] for _, kwargs, _ in napari_get_reader(str(output))(str(output))]
        names[name] += [kwargs["name"] for _, kwargs, _ in napari_get_reader(str(store))(str(store))]
    assert names["out.zarr"][1:4] == ["out uncertainty", "out phases", "out decisions"]
    assert names["out.h5"][1:4] == ["out.h5 uncertainty", "out.h5 phases", "out.h5 decisions"]
    assert names["out.h5"][-2:] == ["out.h5 corrected phases", "out.h5 corrections mask"]
    assert set(names["out.h5"]) & set(names["out.zarr"]) == {"cathode"}  # only the image they share


def test_corrections_lie_where_their_output_does(weights, tmp_path):
    """The corrections of a --region output of a volume with a voxel size: the same scale and
    translation as the output's layers, not the image's corner in voxels."""
    from matseg.io.scale import VoxelSize
    from matseg.sample import write_sample
    from matseg_napari._reader import corrections_layers, segmentation_layers

    voxel = VoxelSize((30.0, 10.0, 10.0), "nanometer")
    sample = write_sample(tmp_path / "fib.zarr", (8, 64, 64), seed=5, voxel_size=voxel)
    out = tmp_path / "box.zarr"
    matseg.segment(sample, out, model="cheap", weights=weights, tile=(4, 32, 32), region="2:6,16:48,:")
    labels = matseg.open_segmentation(out).phases.compute()
    labels[1, :4, :4] = (labels[1, :4, :4] + 1) % 3
    corrections = matseg.save_corrections(out, labels)
    placed = {kwargs["name"]: kwargs for _, kwargs, _ in segmentation_layers(out, include_image=False)}
    assert placed["box phases"]["translate"] == [60.0, 160.0, 0.0]
    for _, kwargs, kind in corrections_layers(corrections):
        if kind == "labels":
            assert kwargs["scale"] == [30.0, 10.0, 10.0], kwargs["name"]
            assert kwargs["translate"] == [60.0, 160.0, 0.0], kwargs["name"]
