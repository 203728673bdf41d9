"""Outputs are valid OME-NGFF 0.5 and carry the input's physical voxel size."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image
from ome_zarr_models.v05 import Image, ImageLabel

import matseg
from matseg import MatsegError, open_volume
from matseg.io.scale import VoxelSize, parse_voxel_size, unit_name
from matseg.sample import write_sample

from .conftest import run, smooth_noise

DATA = smooth_noise((6, 80, 72)).astype(np.uint16)


def assert_valid_ngff(path) -> zarr.Group:
    """Every image and label image validates against ome-zarr-models, and every array names its axes."""
    root = zarr.open_group(str(path), mode="r")
    Image.from_zarr(root)  # also validates the labels group it links to
    for name in root["labels"].group_keys():
        ImageLabel.from_zarr(root["labels"][name])
    for name, array in root.members(max_depth=None):
        if isinstance(array, zarr.Array):
            assert array.metadata.dimension_names is not None, name
            assert len(array.metadata.dimension_names) == array.ndim, name
    return root


def stored_scale(group: zarr.Group) -> tuple[list[float], list]:
    multiscale = group.attrs["ome"]["multiscales"][0]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    return scale, [axis.get("unit") for axis in multiscale["axes"]]


def ome_input(tmp_path, scale, unit="micrometer"):
    root = zarr.open_group(str(tmp_path / "scan.ome.zarr"), mode="w")
    write_image(
        DATA,
        root,
        axes="zyx",
        scale=dict(zip("zyx", scale)),
        axes_units=dict.fromkeys("zyx", unit),
        scale_factors=(),
    )
    return str(tmp_path / "scan.ome.zarr")


def test_sample_store_is_valid_ngff(tmp_path):
    path = write_sample(
        tmp_path / "s.zarr", (4, 32, 32), seed=1, voxel_size=VoxelSize((20.0, 10.0, 10.0), "nanometer")
    )
    root = assert_valid_ngff(path)
    assert stored_scale(root) == ([20.0, 10.0, 10.0], ["nanometer"] * 3)
    assert stored_scale(root["labels/truth"]) == ([20.0, 10.0, 10.0], ["nanometer"] * 3)
    image_label = root["labels/truth"].attrs["ome"]["image-label"]
    assert image_label["source"] == {"image": "../../"}
    assert root["labels"].attrs["ome"]["version"] == "0.5"


@pytest.mark.parametrize("model", ["auto", "cheap"])
def test_segment_output_is_valid_ngff_with_the_input_scale(tmp_path, random_weights, model):
    source = ome_input(tmp_path, (2.0, 0.5, 0.25))
    assert open_volume(source).voxel_size == VoxelSize((2.0, 0.5, 0.25), "micrometer")
    out = tmp_path / "out.zarr"
    matseg.segment(source, out, model=model, weights=random_weights, tile=(4, 64, 64))
    root = assert_valid_ngff(out)
    for group in (root, root["labels/phases"], root["labels/decisions"]):
        assert stored_scale(group) == ([2.0, 0.5, 0.25], ["micrometer"] * 3)
    assert matseg.open_segmentation(out).voxel_size == VoxelSize((2.0, 0.5, 0.25), "micrometer")


def pyramid_input(tmp_path, axes="zyx"):
    """A three-level NGFF 0.5 multiscale by ome-zarr-py: s0, s1, s2 halve Y and X in turn."""
    root = zarr.open_group(str(tmp_path / "pyramid.zarr"), mode="w")
    write_image(
        DATA[(None,) * (len(axes) - 3)],
        root,
        axes=axes,
        scale={a: s for a, s in zip("tczyx", (1.0, 1.0, 2.0, 0.5, 0.25)) if a in axes},
        axes_units=dict.fromkeys("zyx", "micrometer"),
        scale_factors=(2, 4),
    )
    return str(tmp_path / "pyramid.zarr")


@pytest.mark.parametrize("axes", ["zyx", "tczyx"])
def test_a_level_of_a_multiscale_image_has_its_own_voxel_size(tmp_path, axes):
    """``store.zarr:/s1`` is read as the image at that level: its scale, its t and c axes dropped."""
    store = pyramid_input(tmp_path, axes)
    for level, size in (("s0", (2.0, 0.5, 0.25)), ("s1", (2.0, 1.0, 0.5)), ("/s2", (2.0, 2.0, 1.0))):
        volume = open_volume(f"{store}:{level}")
        assert volume.kind == "ome-zarr" and volume.voxel_size == VoxelSize(size, "micrometer")
    assert volume.shape == (6, 20, 18)


def test_segment_of_a_pyramid_level_carries_that_level_s_voxel_size(tmp_path, random_weights, capsys):
    store = pyramid_input(tmp_path)
    out = tmp_path / "out.zarr"
    args = ["segment", f"{store}:/s1", "-o", out, "--model", "cheap", "--weights", random_weights]
    assert run([*args, "--tile", "4,64,64"]) == 0
    root = assert_valid_ngff(out)
    assert stored_scale(root["labels/phases"]) == ([2.0, 1.0, 0.5], ["micrometer"] * 3)
    report = matseg.open_segmentation(out).report
    assert report["input"]["voxel_size"] == {"values": [2.0, 1.0, 0.5], "unit": "micrometer"}
    assert "(6 x 40 x 36) in 2 tiles, 12 x 40 x 18 micrometer" in capsys.readouterr().out


def test_voxel_size_from_hdf5_attributes(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["fiji"] = DATA
        f["fiji"].attrs["element_size_um"] = [0.05, 0.01, 0.01]
        f["plain"] = DATA
        f["with_unit"] = DATA
        f["with_unit"].attrs["voxel_size"] = [8.0, 4.0, 4.0]
        f["with_unit"].attrs["unit"] = "nm"
    assert open_volume(f"{path}:/fiji").voxel_size == VoxelSize((0.05, 0.01, 0.01), "micrometer")
    assert open_volume(f"{path}:/with_unit").voxel_size == VoxelSize((8.0, 4.0, 4.0), "nanometer")
    assert open_volume(f"{path}:/plain").voxel_size is None


def test_a_voxel_size_the_file_records_unreadably_is_ignored_with_a_warning(
    tmp_path, random_weights, capsys, caplog
):
    """Text, an unknown unit, too few values or a ``resolution`` (often pixels per unit): the
    image still opens, the warning names the file, and --voxel-size gives the size."""
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        for name, attrs in {
            "text": {"voxel_size": "1.0 0.5 0.5"},
            "pixel": {"voxel_size": [1.0, 1.0, 1.0], "unit": "pixel"},
            "two": {"voxel_size": [300.0, 300.0]},
            "resolution": {"resolution": [300.0, 300.0, 300.0]},
        }.items():
            f[name] = DATA
            f[name].attrs.update(attrs)
    for name in ("text", "pixel", "two"):
        caplog.clear()
        assert open_volume(f"{path}:/{name}").voxel_size is None
        assert f"ignoring the voxel size recorded in {path}" in caplog.text
    assert open_volume(f"{path}:/resolution").voxel_size is None
    tif = tmp_path / "pixel.tif"
    tifffile.imwrite(tif, DATA, imagej=True, metadata={"axes": "ZYX", "unit": "pixel"}, resolution=(1.0, 1.0))
    assert open_volume(tif).voxel_size is None
    out = tmp_path / "o.zarr"
    args = ["segment", f"{path}:/pixel", "-o", out, "--weights", random_weights, "--model", "cheap"]
    assert run([*args, "--voxel-size", "2", "--quiet"]) == 0
    assert matseg.open_segmentation(out).voxel_size == VoxelSize((2.0, 2.0, 2.0), "micrometer")


def test_voxel_size_from_tiff_tags(tmp_path):
    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(
        imagej, DATA, imagej=True, resolution=(1 / 0.02, 1 / 0.02), metadata={"spacing": 0.05, "unit": "um"}
    )
    assert open_volume(imagej).voxel_size == VoxelSize((0.05, 0.02, 0.02), "micrometer")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, DATA)
    assert open_volume(plain).voxel_size is None
    ome = tmp_path / "scan.ome.tif"
    tifffile.imwrite(
        ome,
        DATA,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 0.9},
    )
    assert open_volume(ome).voxel_size == VoxelSize((0.9, 0.3, 0.3), "micrometer")


def test_a_plain_zarr_array_has_no_voxel_size(zarr_volume):
    assert open_volume(zarr_volume[0]).voxel_size is None


@pytest.mark.parametrize(
    "text, unit, expected",
    [
        ("10,5,5", "nm", VoxelSize((10.0, 5.0, 5.0), "nanometer")),
        ("2x1x1", None, VoxelSize((2.0, 1.0, 1.0), "micrometer")),
        ("0.5", "µm", VoxelSize((0.5,), "micrometer")),
    ],
)
def test_parse_voxel_size(text, unit, expected):
    assert parse_voxel_size(text, unit) == expected


@pytest.mark.parametrize(
    "text, unit", [("1,a,1", None), ("1,2,3,4", None), ("0,1,1", None), ("1", "parsec!")]
)
def test_bad_voxel_size_is_refused_by_name(text, unit):
    with pytest.raises(MatsegError, match="voxel.size|unit"):
        parse_voxel_size(text, unit)


def test_voxel_size_fits_the_volume():
    assert VoxelSize((3.0,), "nanometer").for_ndim(3).values == (3.0, 3.0, 3.0)
    assert VoxelSize((9.0, 3.0, 3.0), "nanometer").for_ndim(2).values == (3.0, 3.0)
    with pytest.raises(MatsegError, match="2 values"):
        VoxelSize((1.0, 2.0), None).for_ndim(3)
    assert unit_name("um") == "micrometer"


def test_voxel_size_given_on_the_command_line(tmp_path, random_weights, capsys):
    source = ome_input(tmp_path, (2.0, 0.5, 0.25))
    out = tmp_path / "out.zarr"
    args = [
        "segment",
        source,
        "-o",
        out,
        "--model",
        "cheap",
        "--weights",
        random_weights,
        "--tile",
        "4,64,64",
    ]
    assert run([*args, "--voxel-size", "30,10,10", "--unit", "nm", "--quiet"]) == 0
    root = assert_valid_ngff(out)
    assert stored_scale(root["labels/phases"]) == (
        [30.0, 10.0, 10.0],
        ["nanometer"] * 3,
    )  # replaces the input's
    report = matseg.open_segmentation(out).report
    assert report["input"]["voxel_size"] == {"values": [30.0, 10.0, 10.0], "unit": "nanometer"}
    assert "180 x 800 x 720 nanometer" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra", [["--voxel-size", "1,a"], ["--voxel-size", "1", "--unit", "furlong"], ["--unit", "nm"]]
)
def test_a_bad_voxel_size_is_one_line_and_exit_2(tmp_path, random_weights, capsys, extra):
    source = ome_input(tmp_path, (2.0, 0.5, 0.25))
    out = tmp_path / "out.zarr"
    assert run(["segment", source, "-o", out, "--model", "cheap", "--weights", random_weights, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("matseg: error:") and not out.exists()


@pytest.mark.parametrize("name", ["s3.zarr", "http.zarr", "gs-scan.zarr"])
def test_a_relative_name_that_starts_like_a_url_scheme_is_a_file(tmp_path, monkeypatch, name):
    """ome-zarr-py reads ``s3.zarr`` as a URL unless it is given the absolute path."""
    size = VoxelSize((20.0, 10.0, 10.0), "nanometer")
    write_sample(tmp_path / name, (4, 32, 32), seed=1, voxel_size=size)
    monkeypatch.chdir(tmp_path)
    volume = open_volume(name)
    assert volume.shape == (4, 32, 32) and volume.voxel_size == size


def test_an_ngff_04_image_on_zarr_2_opens_quietly(tmp_path, caplog):
    """ome-zarr-py's parse_url warns of a 'version mismatch' on every 0.4 store it reads."""
    from ome_zarr.format import FormatV04

    root = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)
    write_image(DATA, root, axes="zyx", scale_factors=(), fmt=FormatV04())
    volume = open_volume(tmp_path / "v04.zarr")
    assert volume.kind == "ome-zarr" and volume.shape == DATA.shape
    assert "version mismatch" not in caplog.text
