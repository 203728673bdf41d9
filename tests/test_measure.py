"""matseg measure: analytic cases, streaming, draws, voxel size, the command."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

from matseg.microstructure.blocks import Reader
from matseg.microstructure.calibration import LEVEL, calibrated_interval, fit
from matseg.microstructure.interfaces import local_metrics
from matseg.microstructure.thickness import quantiles, thickness_histograms
from matseg.microstructure.tortuosity import block_tortuosity, tortuosity
from matseg.microstructure.uncertainty import Perturbed
from matseg.synth.shapes import sphere_bed

from .conftest import run


def reader(volume, chunks=16):
    return Reader(da.from_array(volume, chunks=chunks))


def slab(shape=(20, 30, 40), start=10, stop=25):
    volume = np.zeros(shape, np.uint8)
    volume[:, :, start:stop] = 1
    return volume


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_slab_fractions_and_area_are_exact(voxel_size):
    volume = slab()
    result = local_metrics(reader(volume), 2, voxel_size, block=(7, 9, 11))
    assert result["fraction"].tolist() == [25 / 40, 15 / 40]
    # two planes across the whole Z x Y section: area per volume = 2 / X
    per_volume = result["interface_area"][(0, 1)] / result["volume"]
    assert per_volume == pytest.approx(2 / (40 * voxel_size[2]), rel=1e-6)
    assert result["surface_area"][1] == pytest.approx(result["interface_area"][(0, 1)], rel=1e-6)


def test_packed_spheres_surface_within_two_percent():
    radius = 8.0
    bed, n = sphere_bed(radius)
    result = local_metrics(reader(bed), 2, (1.0, 1.0, 1.0), block=(20, 24, 28))
    analytic = n * 4 * np.pi * radius**2
    assert result["surface_area"][1] == pytest.approx(analytic, rel=0.02)
    assert result["fraction"][1] == bed.mean()  # the voxels, exactly


def test_cuboids_tpb_length_is_the_line():
    # three cuboids meeting along a line in z (and phase 2 also along a line in x with phase 0/1)
    volume = np.zeros((20, 30, 40), np.uint8)
    volume[:, 15:, :20] = 1
    volume[:, 15:, 20:] = 2
    size = (2.0, 1.0, 0.5)
    result = local_metrics(reader(volume), 3, size, tpb_phases=(0, 1, 2), block=(7, 9, 11))
    assert result["tpb_length"] == pytest.approx(20 * size[0], rel=0.02)
    rotated = np.ascontiguousarray(volume.transpose(2, 1, 0))
    result = local_metrics(reader(rotated), 3, (1.0, 1.0, 1.0), tpb_phases=(2, 0, 1), block=(16, 16, 16))
    assert result["tpb_length"] == pytest.approx(20, rel=0.02)


def test_local_metrics_do_not_depend_on_blocks():
    bed, _ = sphere_bed(6.0, spacing=15, cells=(2, 2, 2))
    bed[bed == 0] = np.where(np.indices(bed.shape)[2] < 15, 0, 2)[bed == 0]
    whole = local_metrics(reader(bed), 3, (1.0, 1.0, 1.0), (0, 1, 2), block=(64, 64, 64))
    blocks = local_metrics(reader(bed, chunks=7), 3, (1.0, 1.0, 1.0), (0, 1, 2), block=(5, 8, 13))
    assert blocks["tpb_length"] == whole["tpb_length"]
    for key in ("surface_area", "interface_area"):
        for pair, value in whole[key].items():
            assert blocks[key][pair] == pytest.approx(value, rel=1e-5)


def test_thickness_of_a_slab_and_streamed_spheres():
    sizes = thickness_histograms(
        reader(slab(start=10, stop=20)), 2, (1.0, 1.0, 1.0), max_radius=8, block=(7, 9, 11)
    )
    assert quantiles(sizes["counts"][1], sizes["diameters"]) == [10.0, 10.0, 10.0]
    bed, _ = sphere_bed(7.0, spacing=17, cells=(2, 2, 1))
    whole = thickness_histograms(reader(bed), 2, (1.0, 1.0, 1.0), max_radius=9, block=(64, 64, 64))
    blocks = thickness_histograms(reader(bed), 2, (1.0, 1.0, 1.0), max_radius=9, block=(9, 10, 11))
    np.testing.assert_array_equal(blocks["counts"], whole["counts"])
    assert quantiles(whole["counts"][1], whole["diameters"])[1] in (12.0, 14.0)


def test_straight_and_bent_channels():
    straight = np.zeros((6, 10, 30), bool)
    straight[:, 3:6, :] = True
    result = tortuosity(straight, axis=2)
    assert result["tau"] == pytest.approx(1.0, rel=1e-6)
    assert result["relative_diffusivity"] == pytest.approx(0.3, rel=1e-6)
    # a one-voxel chain that climbs 11 voxels: a chain of N voxels has resistance N - 1
    bent = np.zeros((4, 20, 30), bool)
    bent[:, 3, :11] = bent[:, 3:15, 10] = bent[:, 14, 10:] = True
    n, length = int(bent[0].sum()), 30
    result = tortuosity(bent, axis=2, tol=1e-10)
    assert result["converged"] and result["residual"] <= 1e-10
    assert result["tau"] == pytest.approx(n * (n - 1) / (length * (length - 1)), rel=1e-6)
    assert tortuosity(bent, axis=1)["tau"] == float("inf")


def test_transport_on_blocks_equals_the_whole_for_straight_channels():
    channels = np.zeros((30, 24, 24), bool)
    channels[:, 2:5, 3:6] = channels[:, 12:14, 15:20] = channels[:, 20, 1:23] = True
    whole = tortuosity(channels, axis=0)
    # 3 blocks along the axis, 2 x 2 across: the channels cross block sides and interfaces
    blocks = block_tortuosity(lambda r: channels[r], channels.shape, 0, (10, 12, 12), (2.0, 1.0, 0.5))
    assert blocks["blocks"] == 12 and blocks["block_shape"] == [10, 12, 12]
    assert blocks["relative_diffusivity"] == pytest.approx(whole["relative_diffusivity"], rel=1e-9)
    assert blocks["tau"] == pytest.approx(1.0, rel=1e-9) and blocks["eps"] == pytest.approx(whole["eps"])


def test_transport_on_blocks_differs_where_paths_wander():
    import scipy.ndimage as ndi

    rng = np.random.default_rng(1)
    field = ndi.gaussian_filter(rng.normal(size=(24, 32, 32)), 2.5)
    pores = field > np.quantile(field, 0.55)
    whole = tortuosity(pores, axis=0)["relative_diffusivity"]
    # no-flux sides only remove conductances (Rayleigh's monotonicity): D can only fall
    across = block_tortuosity(lambda r: pores[r], pores.shape, 0, (24, 16, 16))["relative_diffusivity"]
    assert 0 < across < whole
    # equipotential interfaces between blocks along the axis let the flow redistribute: D rises
    along = block_tortuosity(lambda r: pores[r], pores.shape, 0, (12, 32, 32))["relative_diffusivity"]
    assert along > whole
    assert tortuosity(pores, axis=0)["relative_diffusivity"] == whole


def test_calibrated_margin_covers_the_calibration_volumes():
    rng = np.random.default_rng(0)
    truths = rng.uniform(1.0, 2.0, 40)
    values = truths * (1 + rng.normal(0.1, 0.05, 40))  # a biased segmenter, draws too narrow
    draws = [[v * 1.01, v * 0.99] for v in values]
    table = fit({"specific_surface_area": [(t, v, d, 2.0) for t, v, d in zip(truths, values, draws)]}, 0.9)
    entry = table["margins"]["specific_surface_area"]
    assert entry["scale"] == "relative" and entry["n"] == 40 and entry["margin"] > 0
    inside = [
        lo <= t <= hi
        for t, v, d in zip(truths, values, draws)
        for lo, hi in [calibrated_interval("specific_surface_area", v, d, table)]
    ]
    assert np.mean(inside) >= 0.9
    assert calibrated_interval("specific_surface_area", 1.0, [1.01, 0.99], None) == pytest.approx(
        (0.98, 1.02)
    )
    # fractions: an absolute margin, clipped to [0, 1]
    fraction = fit({"volume_fraction": [(0.5, 0.9, [0.9], 2.0)] * 9})["margins"]["volume_fraction"]
    assert fraction["scale"] == "absolute" and fraction["margin"] == pytest.approx(0.4)
    assert calibrated_interval("volume_fraction", 0.9, [0.9], {"margins": {"volume_fraction": fraction}}) == (
        pytest.approx(0.5),
        1.0,
    )
    # a tortuosity factor is at least 1 (0.96 … 1.32 was reported)
    assert calibrated_interval("tortuosity_factor", 1.14, [1.0, 1.28], None)[0] == 1.0
    # thickness quantiles: in steps of two voxel sides, whatever the value
    d10 = fit({"thickness_d10": [(4.0, 2.0, [2.0], 2.0)] * 9})["margins"]["thickness_d10"]
    assert d10["scale"] == "steps" and d10["margin"] == pytest.approx(1.0)
    assert calibrated_interval("thickness_d10", 0.4, [0.4], {"margins": {"thickness_d10": d10}}, 0.1) == (
        pytest.approx(0.3),
        pytest.approx(0.5),
    )


def test_draws_follow_uncertainty_and_do_not_depend_on_blocks():
    volume = slab()
    labels = da.from_array(volume, chunks=7)
    certain = Perturbed(labels, da.zeros(volume.shape, np.uint8, chunks=7), 2, sample=0)
    np.testing.assert_array_equal(certain.whole(chunk=9), volume)
    unsure = Perturbed(labels, da.full(volume.shape, 200, np.uint8, chunks=7), 2, sample=1)
    draw = unsure.whole(chunk=9)
    np.testing.assert_array_equal(draw, unsure.whole(chunk=64))
    changed = draw != volume
    assert 0 < changed.mean() < 0.2
    # only voxels next to the other phase move
    assert set(np.unique(np.nonzero(changed)[2])) <= {8, 9, 10, 11, 23, 24, 25, 26}


def labels_store(path, volume, scale=None, unit=None):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("0", shape=volume.shape, chunks=(8, 16, 16), dtype=volume.dtype)[:] = volume
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    transforms = [{"type": "scale", "scale": list(scale or (1.0, 1.0, 1.0))}]
    write_multiscales_metadata(
        root, datasets=[{"path": "0", "coordinateTransformations": transforms}], axes=axes, fmt=FormatV05()
    )
    return path


def test_measure_reads_the_stored_voxel_size(tmp_path):
    import matseg

    volume = slab((16, 24, 32), 8, 20)
    report = matseg.measure(
        labels_store(tmp_path / "s.zarr", volume, (2.0, 0.5, 0.5), "micrometer"),
        labels=True,
        transport=False,
        rev=False,
    )
    assert report["input"]["voxel_size"] == [2.0, 0.5, 0.5]
    assert report["input"]["unit"] == "micrometer" and report["input"]["voxel_size_from"] == "store"
    rows = {(r["metric"], r["phases"]): r for r in report["rows"]}
    assert rows[("interfacial_area", "phase0|phase1")]["value"] == pytest.approx(2 / 16, rel=1e-6)
    assert rows[("interfacial_area", "phase0|phase1")]["unit"] == "1/micrometer"
    assert rows[("volume_fraction", "phase1")]["value"] == 12 / 32
    assert rows[("thickness_d50", "phase1")]["value"] == pytest.approx(6.0)  # 12 voxels of 0.5


def test_measure_command_on_a_segmentation(tmp_path, small_sample, capsys):
    import matseg

    segmented = tmp_path / "phases.zarr"
    matseg.segment(small_sample, segmented, model="cheap")
    out = tmp_path / "m"
    args = [
        "measure",
        segmented,
        "-o",
        out,
        "--samples",
        "3",
        "--voxel-size",
        "0.1,0.05,0.05",
        "--unit",
        "micrometer",
        "--max-radius",
        "6",
    ]
    assert run(args) == 0
    assert "diffusion solve holds the volume in memory" in capsys.readouterr().err  # said before it runs
    report = json.loads((out / "measure.json").read_text())
    assert report["uncertainty"]["samples"] == 3 and report["input"]["voxel_size_from"] == "option"
    assert {p.name for p in out.iterdir()} == {"measure.json", "measure.csv", "sizes.png", "rev.png"}
    rows = {(r["metric"], r["phases"], r["axis"]): r for r in report["rows"]}
    assert sum(rows[("volume_fraction", p, "")]["value"] for p in ("pore", "carbon-binder", "active")) == 1.0
    area = rows[("interfacial_area", "pore|active", "")]
    assert area["low"] <= area["value"] <= area["high"] and area["high"] > area["low"]
    assert ("tortuosity_factor", "pore", "x") in rows and (
        "tpb_density",
        "pore|carbon-binder|active",
        "",
    ) in rows
    assert all(s["residual"] <= 1e-8 for s in report["solves"])
    assert report["uncertainty"]["calibration"]["level"] == LEVEL
    assert run(args) == 2  # exists
    assert len((out / "measure.csv").read_text().splitlines()) == len(report["rows"]) + 1


@pytest.mark.parametrize(
    "extra",
    [
        ["--phase", "binder"],
        ["--tpb", "pore,pore,active"],
        ["--voxel-size", "1,2"],
        ["--voxel-size", "a,b,c"],
        ["--transport-block", "2,8,8"],
        ["--transport-block", "a,8"],
        ["--tol", "nan"],
        ["--tol", "5"],
        ["--tol", "-1"],
    ],
)
def test_measure_bad_options_exit_2(tmp_path, small_sample, extra, capsys):
    code = run(
        [
            "measure",
            f"{small_sample}",
            "--labels",
            "-o",
            tmp_path / "m",
            "--no-transport",
            "--no-rev",
            "--samples",
            "0",
            *extra,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("matseg: error: ") and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_measure_never_writes_into_its_store(tmp_path, small_sample, capsys):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(small_sample, store)
    args = ["measure", store, "--labels", "-o", store / "m", "--no-transport", "--no-rev", "--samples", "0"]
    assert run(args) == 2
    assert "would overwrite the store" in capsys.readouterr().err
    assert not (store / "m").exists()


def test_measure_overwrite_replaces_only_its_own_folder(tmp_path, small_sample, capsys):
    """A file, or a folder of someone's notes, at -o is refused with or without --overwrite
    (before anything is measured); an earlier measure folder is replaced."""
    args = [
        "measure",
        small_sample,
        "--labels",
        "--no-transport",
        "--no-rev",
        "--samples",
        "0",
        "--overwrite",
    ]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "measure.csv").write_text("a,b\n")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for target in (notes, afile):
        assert run([*args, "-o", target]) == 2
        err = capsys.readouterr().err
        assert "not written by matseg" in err and len(err.strip().splitlines()) == 1, err
    assert (notes / "measure.csv").read_text() == "a,b\n" and afile.read_text() == "mine"
    folder = tmp_path / "m"
    assert run([*args, "-o", folder]) == 0
    assert run([*args, "-o", folder]) == 0  # its own folder: replaced
    assert (folder / "measure.json").is_file()


def test_measure_of_a_missing_store_says_so(tmp_path, capsys):
    assert run(["measure", tmp_path / "nope.zarr", "-o", tmp_path / "m"]) == 2
    assert "input not found" in capsys.readouterr().err


def test_measure_wants_labels_flag_for_other_stores(tmp_path, small_sample, capsys):
    assert run(["measure", small_sample, "-o", tmp_path / "m"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_measure_refuses_instance_labels(tmp_path, capsys):
    path = tmp_path / "instances.zarr"
    zarr.create_array(str(path), shape=(4, 8, 8), chunks=(4, 8, 8), dtype="int32")[:] = np.arange(
        256
    ).reshape(4, 8, 8)
    assert run(["measure", path, "--labels", "-o", tmp_path / "m"]) == 2
    assert "0..255" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_measure_transport_block_option(tmp_path, caplog):
    import logging

    import matseg

    store = labels_store(tmp_path / "s.zarr", slab((16, 24, 32), 8, 20))
    with caplog.at_level(logging.INFO, logger="matseg"):
        whole, blocks = (
            matseg.measure(store, labels=True, rev=False, transport_block=b) for b in (None, (8, 12, 16))
        )
    assert "one block of 8x12x16 at a time" in caplog.text  # said before the solves
    assert blocks["solve_memory_bytes"] == 8 * 12 * 16 * 96 < whole["solve_memory_bytes"]
    assert [s["blocks"] for s in blocks["solves"]] == [8, 8, 8]
    tau = {
        b: {r["axis"]: r["value"] for r in rep["rows"] if r["metric"] == "tortuosity_factor"}
        for b, rep in (("whole", whole), ("blocks", blocks))
    }
    assert tau["whole"]["z"] == pytest.approx(1.0) and tau["blocks"]["z"] == pytest.approx(1.0)
    assert tau["whole"]["y"] == pytest.approx(1.0) and tau["blocks"]["y"] == pytest.approx(1.0)
    assert tau["whole"]["x"] == tau["blocks"]["x"] == float("inf")  # phase 0 is cut by the slab


@pytest.mark.parametrize(
    "options, message", [({"block": (0, 0, 0)}, "three sides"), ({"device": "tpu"}, "not a torch device")]
)
def test_measure_api_checks_block_and_device(small_sample, options, message):
    import matseg

    with pytest.raises(matseg.MatsegError, match=message):
        matseg.measure(small_sample, labels=True, samples=0, transport=False, rev=False, **options)
