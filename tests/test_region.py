"""``--region``: a box of the input segmented as a volume of its own, placed where it lies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import matseg
from matseg import MatsegError
from matseg.io.region import parse_region
from matseg.sample import write_sample

from .conftest import run

BOX = (slice(2, 10), slice(8, 56), slice(0, 64))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A 12 x 64 x 64 sample, and the same box of it written as a store of its own."""
    folder = tmp_path_factory.mktemp("region")
    path = folder / "cathode.zarr"
    write_sample(path, (12, 64, 64), seed=8)
    image = matseg.open_volume(path).data.compute()
    truth = matseg.open_volume(path, labels=True).data.compute()
    box = folder / "box.zarr"
    zarr.create_array(str(box), data=image[BOX])
    box_truth = folder / "box-truth.zarr"
    zarr.create_array(str(box_truth), data=truth[BOX])
    return path, box, box_truth


@pytest.mark.parametrize(
    ("text", "shape", "box"),
    [
        ("2:10,8:56,:", (12, 64, 64), BOX),
        ("2:10,8:56,", (12, 64, 64), BOX),
        ("2:10, 8:56 ,0:64", (12, 64, 64), BOX),
        ("5,:,:", (12, 64, 64), (slice(5, 6), slice(0, 64), slice(0, 64))),
        ("3:,:20,", (12, 64, 64), (slice(3, 12), slice(0, 20), slice(0, 64))),
        ("10:20,30:40", (64, 64), (slice(10, 20), slice(30, 40))),
        ([[2, 10], [8, 56], [0, 64]], (12, 64, 64), BOX),  # as a report records it
    ],
)
def test_region_forms(text, shape, box):
    assert parse_region(text, shape) == box


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2:10,8:56", "names 2 axes; the input has 3"),
        ("2:10,8:56,0:64,0:1", "names 4 axes"),
        ("2:10,a:56,:", "'a:56' is not start:stop"),
        ("2:10,1:2:3,:", "is not start:stop"),
        ("10:2,:,:", "Z 10:2 is not a non-empty part of 0:12"),
        ("2:13,:,:", "Z 2:13 is not a non-empty part of 0:12"),
        (":,:,-1:5", "X -1:5 is not a non-empty part of 0:64"),
        ("3:3,:,:", "Z 3:3"),
    ],
)
def test_bad_region_is_one_line_and_writes_nothing(sample, tmp_path, capsys, text, message):
    out = tmp_path / "out.zarr"
    assert run(["segment", sample[0], "-o", out, "--model", "cheap", "--region", text]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_box_is_segmented_as_the_same_box_written_alone(sample, tmp_path, capsys):
    """Labels, uncertainty and score equal those of the box as a store of its own; the output
    records where the box lies (report, summary, NGFF translation)."""
    path, box, box_truth = sample
    out, alone = tmp_path / "box-run.zarr", tmp_path / "alone.zarr"
    args = ["--model", "cheap", "--tile", "4,32,32", "--no-bars"]
    assert run(["segment", path, "-o", out, "--region", "2:10,8:56,:", "--truth", path, *args]) == 0
    summary = capsys.readouterr().out
    assert f"{path} [2:10, 8:56, 0:64] -> {out}" in summary
    assert run(["segment", box, "-o", alone, "--truth", box_truth, *args]) == 0
    mine, theirs = matseg.open_segmentation(out), matseg.open_segmentation(alone)
    assert mine.shape == (8, 48, 64)
    assert np.array_equal(mine.phases.compute(), theirs.phases.compute())
    assert np.array_equal(mine.uncertainty.compute(), theirs.uncertainty.compute())
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["input"]["region"] == [[2, 10], [8, 56], [0, 64]]
    assert report["input"]["shape"] == [8, 48, 64]
    assert report["metrics"]["miou"] == pytest.approx(theirs.report["metrics"]["miou"])
    assert mine.offset == (2.0, 8.0, 0.0) and theirs.offset is None
    ngff = zarr.open_group(str(out / "labels" / "phases"), mode="r").attrs["ome"]["multiscales"][0]
    transforms = ngff["datasets"][0]["coordinateTransformations"]
    assert transforms == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]},
        {"type": "translation", "translation": [2.0, 8.0, 0.0]},
    ]


def test_the_whole_volume_as_a_region_is_the_plain_run(sample, tmp_path):
    path = sample[0]
    plain = matseg.segment(path, tmp_path / "a.zarr", model="cheap", tile=(4, 32, 32))
    again = matseg.segment(path, tmp_path / "a.zarr", model="cheap", tile=(4, 32, 32), region=":,:,:")
    assert again["run"]["started_as"] == "finished" and "region" not in plain["input"]


def test_another_box_is_another_run(sample, tmp_path, capsys):
    """A finished output of one box is not taken for another box's: refused without --overwrite."""
    path, out = sample[0], tmp_path / "out.zarr"
    args = ["--model", "cheap", "--tile", "4,32,32", "--no-bars"]
    assert run(["segment", path, "-o", out, "--region", "2:10,:,:", *args]) == 0
    assert run(["segment", path, "-o", out, "--region", "3:10,:,:", *args]) == 2
    assert "region" in capsys.readouterr().err
    assert matseg.open_segmentation(out).report["input"]["region"] == [[2, 10], [0, 64], [0, 64]]


def test_a_truth_of_another_shape_is_refused(sample, tmp_path):
    path, _, box_truth = sample
    with pytest.raises(MatsegError, match=r"cut to --region as the input is"):
        matseg.segment(path, tmp_path / "o.zarr", model="cheap", region="2:10,8:56,:", truth=box_truth)


def test_corrections_of_a_box_train_on_the_same_box(sample, tmp_path):
    """Corrections painted on a --region output pair with the image's box, not its first voxels."""
    path = sample[0]
    out = tmp_path / "phases.zarr"
    matseg.segment(path, out, model="classical", region="2:10,8:56,:", tile=(4, 32, 32))
    truth = matseg.open_volume(path, labels=True).data.compute()[BOX]
    labels = matseg.open_segmentation(out).phases.compute()
    labels[3] = truth[3]
    corrections = matseg.save_corrections(out, labels)
    data = matseg.training_data_from_corrections(corrections)
    image = matseg.open_volume(path).data.compute()[BOX]
    assert data.images.shape == (1, 48, 64)
    assert np.array_equal(data.labels[0], truth[3])
    # the slice trained on is the box's slice 3 (the image's slice 5), normalised as the run was
    order = np.argsort(image[3].ravel(), kind="stable")
    assert np.all(np.diff(data.images[0].ravel()[order]) >= 0)
    wrong = matseg.open_volume(path).data.compute()[3, :48, :]
    assert not np.array_equal(np.argsort(wrong.ravel(), kind="stable"), order)


@pytest.mark.parametrize("region", [[(0, 4, 1), (0, 64), (0, 64)], [("a", 4), (0, 64), (0, 64)], [None] * 3])
def test_a_bad_region_pair_from_python_is_a_matseg_error(sample, tmp_path, region):
    with pytest.raises(MatsegError, match="is not a \\(start, stop\\) pair"):
        matseg.segment(sample[0], tmp_path / "o.zarr", model="cheap", region=region)
    assert not (tmp_path / "o.zarr").exists()


def test_a_kept_output_takes_this_runs_voxel_size_and_place(sample, tmp_path):
    """A selector run over a stored cheap pass (--overwrite) with another voxel size: the store
    states the new one (scale and translation), as the report does."""
    from matseg.io.scale import VoxelSize

    path, out = sample[0], tmp_path / "out.zarr"
    matseg.segment(path, out, region="2:10,8:56,:", voxel_size=VoxelSize((4.0, 2.0, 2.0), "nanometer"))
    report = matseg.segment(
        path, out, region="2:10,8:56,:", voxel_size=VoxelSize((1.0, 0.5, 0.5), "micrometer"), overwrite=True
    )
    assert report["run"]["started_as"] == "reuse-cheap"
    for group in ("", "labels/phases", "labels/decisions"):
        ngff = zarr.open_group(str(out / group), mode="r").attrs["ome"]["multiscales"][0]
        assert ngff["datasets"][0]["coordinateTransformations"] == [
            {"type": "scale", "scale": [1.0, 0.5, 0.5]},
            {"type": "translation", "translation": [2.0, 4.0, 0.0]},
        ], group
        assert {a.get("unit") for a in ngff["axes"]} == {"micrometer"}, group
    assert matseg.open_segmentation(out).voxel_size.values == (1.0, 0.5, 0.5)


def test_corrections_of_a_box_the_image_no_longer_holds(sample, tmp_path):
    """The image saved again smaller since: one line on the box, not on a --region never given."""
    import shutil

    image = tmp_path / "image.zarr"
    shutil.copytree(sample[1], image)  # the box alone, 8 x 48 x 64, as the image segmented
    out = tmp_path / "phases.zarr"
    matseg.segment(image, out, model="classical", region="4:8,:,:", tile=(4, 32, 32))
    labels = matseg.open_segmentation(out).phases.compute()
    labels[1] = (labels[1] + 1) % 3
    corrections = matseg.save_corrections(out, labels)
    shutil.rmtree(image)
    zarr.create_array(str(image), data=np.full((6, 48, 64), 7, np.uint8))
    with pytest.raises(MatsegError, match=r"no longer holds the box \[\[4, 8\], \[0, 48\], \[0, 64\]\]"):
        matseg.training_data_from_corrections(corrections)


def test_a_box_after_the_whole_names_the_region(sample, tmp_path):
    path, out = sample[0], tmp_path / "out.zarr"
    matseg.segment(path, out, model="cheap", tile=(4, 32, 32))
    with pytest.raises(MatsegError, match=r"other settings: .*region"):
        matseg.segment(path, out, model="cheap", tile=(4, 32, 32), region="2:10,:,:")


def test_another_voxel_size_is_another_run(sample, tmp_path, capsys):
    """A finished output given again with another --voxel-size or --unit: refused, naming it (it
    said "already a finished run of these settings" and kept the old scale); --overwrite writes it."""
    path, out = sample[0], tmp_path / "out.zarr"
    args = ["segment", path, "-o", out, "--model", "cheap", "--tile", "4,32,32", "--no-bars"]
    assert run([*args, "--voxel-size", "0.5"]) == 0
    assert run([*args, "--voxel-size", "0.5", "--unit", "nm"]) == 2
    assert "other settings: voxel_size unit" in capsys.readouterr().err
    assert run([*args, "--voxel-size", "0.5", "--unit", "nm", "--overwrite"]) == 0
    voxel = matseg.open_segmentation(out).voxel_size
    assert voxel.values == (0.5, 0.5, 0.5) and voxel.unit == "nanometer"


@pytest.mark.parametrize("region", [":,:,5", ":,5,:"])
def test_flip_averaged_nets_on_a_box_one_voxel_wide(random_weights, small_sample, tmp_path, region):
    """A flip of a one-voxel axis kept a negative stride that torch refuses: it crashed."""
    report = matseg.segment(small_sample, tmp_path / "o.zarr", model="expensive-tta", weights=random_weights,
                            region=region)  # fmt: skip
    assert sorted(report["input"]["shape"])[:2] == [1, 16]


def test_a_box_of_an_ome_zarr_lies_where_the_input_does(tmp_path):
    """An OME-Zarr's own translation is kept, and a box's place is added to it (in its units)."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    image = np.random.default_rng(2).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    path = tmp_path / "placed.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=image)
    moved = [
        {"type": "scale", "scale": [0.5, 0.1, 0.1]},
        {"type": "translation", "translation": [100.0, 20.0, 30.0]},
    ]
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    datasets = [{"path": "0", "coordinateTransformations": moved}]
    write_multiscales_metadata(group, datasets=datasets, axes=axes, fmt=FormatV05())
    assert matseg.open_volume(path).offset == (100.0, 20.0, 30.0)
    whole = tmp_path / "whole.zarr"
    matseg.segment(path, whole, model="classical", phases=("a", "b"))
    box = tmp_path / "box.zarr"
    matseg.segment(path, box, model="classical", phases=("a", "b"), region="2:6,10:20,:")
    assert matseg.open_segmentation(whole).offset == (100.0, 20.0, 30.0)
    assert matseg.open_segmentation(box).offset == pytest.approx((101.0, 21.0, 30.0))
    assert matseg.open_segmentation(box).voxel_size.values == (0.5, 0.1, 0.1)
