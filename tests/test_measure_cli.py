"""``matseg measure`` on the command line: inputs, output folder, options and what it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from .conftest import run

QUICK = ["--no-transport", "--no-rev", "--samples", "0", "--max-radius", "2"]


def plain_store(path, volume, chunks=None):
    """A plain Zarr array written with zarr's defaults: chunks equal to the fill value are not stored."""
    array = zarr.open_array(str(path), mode="w", shape=volume.shape, dtype=volume.dtype, chunks=chunks)
    array[...] = volume
    return path


def slab(shape=(8, 16, 24), start=6, stop=14):
    volume = np.zeros(shape, np.uint8)
    volume[:, :, start:stop] = 1
    return volume


def test_labels_with_unstored_background_chunks_are_measured(tmp_path, capsys):
    volume = np.zeros((8, 16, 32), np.uint8)
    volume[:, :, 20:] = 1
    volume[:, :, 26:] = 2
    store = plain_store(tmp_path / "chunky.zarr", volume, chunks=(8, 16, 16))
    assert run(["measure", store, "--labels", "-o", tmp_path / "m", *QUICK]) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "m" / "measure.json").read_text())["rows"]
    fractions = {r["phases"]: r["value"] for r in rows if r["metric"] == "volume_fraction"}
    assert fractions == pytest.approx({"phase0": 20 / 32, "phase1": 6 / 32, "phase2": 6 / 32})


def test_all_background_plain_store_is_one_phase(tmp_path, capsys):
    store = plain_store(tmp_path / "zero.zarr", np.zeros((8, 16, 16), np.uint8), chunks=(8, 8, 8))
    assert run(["measure", store, "--labels", "-o", tmp_path / "m", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "one phase only" in err and "missing" not in err
    assert not (tmp_path / "m").exists()


def test_inner_path_default_folder_and_recorded_source(tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "slab.h5", "w") as handle:
        handle["data"] = slab()
    assert run(["measure", f"{tmp_path / 'slab.h5'}:/data", "--labels", *QUICK]) == 0, capsys.readouterr().err
    folder = tmp_path / "slab-data-measure"
    report = json.loads((folder / "measure.json").read_text())
    assert report["input"]["source"] == f"{tmp_path / 'slab.h5'}:/data"
    assert (tmp_path / "slab.h5").is_file()


def test_output_under_a_file_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    import matseg

    def never(*args, **kwargs):
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(matseg, "measure", never)
    store = plain_store(tmp_path / "slab.zarr", slab())
    (tmp_path / "afile.txt").write_text("hi")
    assert run(["measure", store, "--labels", "-o", tmp_path / "afile.txt" / "sub", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "not a writable folder" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "afile.txt").read_text() == "hi"


def test_a_permission_fault_while_writing_does_not_speak_of_tiles(tmp_path, capsys, monkeypatch):
    import errno

    import matseg.microstructure

    def refused(report, folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    monkeypatch.setattr(matseg.microstructure, "write_report", refused)
    store = plain_store(tmp_path / "slab.zarr", slab())
    assert run(["measure", store, "--labels", "-o", tmp_path / "m", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "tiles" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("size", ["1e-120", "1e200", "1,1,1e-40"])
def test_voxel_sizes_whose_volume_under_or_overflows_are_refused(tmp_path, capsys, size):
    import matseg
    from matseg.io.scale import parse_voxel_size

    store = plain_store(tmp_path / "slab.zarr", slab())
    assert run(["measure", store, "--labels", "--voxel-size", size, "-o", tmp_path / "m", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "overflow" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
    with pytest.raises(matseg.MatsegError, match="overflow"):  # segment and sample parse it so too
        parse_voxel_size(size, "nm")
    with pytest.raises(matseg.MatsegError, match="overflow"):
        matseg.measure(store, labels=True, voxel_size=(1e-120,) * 3, samples=0)


def test_overwrite_leaves_only_the_new_runs_files(tmp_path, capsys):
    store = plain_store(tmp_path / "slab.zarr", slab())
    folder = tmp_path / "m"
    with_rev = [x for x in QUICK if x != "--no-rev"]
    assert run(["measure", store, "--labels", "-o", folder, *with_rev]) == 0
    assert (folder / "rev.png").is_file()
    assert run(["measure", store, "--labels", "-o", folder, *QUICK, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["measure.csv", "measure.json", "sizes.png"]
    assert "rev" not in capsys.readouterr().out.splitlines()[-1]


def test_printed_table_keeps_its_columns_apart(tmp_path, capsys):
    store = plain_store(tmp_path / "slab.zarr", slab())
    assert run(["measure", store, "--labels", "-o", tmp_path / "m", *QUICK]) == 0
    out = capsys.readouterr().out
    capped = [line for line in out.splitlines() if "thickness_capped_fraction" in line]
    assert capped and all(
        line.split()[:2] == ["thickness_capped_fraction", p] for line, p in zip(capped, ["phase0", "phase1"])
    ), out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["metric", "phases"])
    assert header.index("phases") == capped[0].index("phase0")


@pytest.mark.parametrize("given, unit, warns", [("50,20,20", "nm", False), ("50,20,30", "nm", True)])
def test_given_voxel_size_is_compared_with_the_recorded_one_in_one_unit(tmp_path, capsys, given, unit, warns):
    from .test_measure import labels_store

    store = labels_store(tmp_path / "s2.zarr", slab(), (0.05, 0.02, 0.02), "micrometer")
    args = ["measure", store, "--labels", "--voxel-size", given, "--unit", unit, "-o", tmp_path / "m"]
    assert run([*args, *QUICK]) == 0
    err = capsys.readouterr().err
    assert ("the store records" in err) == warns, err
    report = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert report["input"]["unit"] == "nanometer" and report["input"]["voxel_size_from"] == "option"


@pytest.mark.parametrize(
    "volume, says, not_says",
    [
        (slab().astype(np.float32), "floating-point values", "use --labels"),
        (np.stack([slab(), slab()]), "matseg measure needs 3-D (Z, Y, X)", "matseg segments"),
    ],
)
def test_wrong_label_volumes_say_what_is_wrong(tmp_path, capsys, volume, says, not_says):
    store = plain_store(tmp_path / "v.zarr", volume)
    assert run(["measure", store, "--labels", "-o", tmp_path / "m", *QUICK]) == 2
    err = capsys.readouterr().err
    assert says in err and not_says not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "volume, says",
    [
        (
            np.pad(np.zeros((8, 8, 8), np.uint8), 4, constant_values=1),
            "phase phase0 does not percolate along z",
        ),
        (slab((1, 16, 24)), "axis z is 1 voxel long: too short to solve"),
    ],
)
def test_transport_without_a_solve_says_so(tmp_path, capsys, volume, says):
    import csv

    store = plain_store(tmp_path / "v.zarr", volume)
    quick = [x for x in QUICK if x != "--no-transport"]
    assert run(["measure", store, "--labels", "--phase", "0", "-o", tmp_path / "m", *quick]) == 0
    captured = capsys.readouterr()
    solve_z = next(line for line in captured.out.splitlines() if "solve axis 0" in line)
    assert says in solve_z and "iterations" not in solve_z, captured.out
    assert says in captured.err  # the log line, as the solve would have said its own
    report = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert says.replace("phase phase0", "the phase") in report["solves"][0]["skipped"]
    tau_z = {r["metric"]: r["value"] for r in report["rows"] if r["axis"] == "z"}
    assert tau_z["tortuosity_factor"] is None and tau_z["relative_diffusivity"] == 0  # JSON: null
    with open(tmp_path / "m" / "measure.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["axis"] == "z" and r["metric"] == "tortuosity_factor"]
    assert rows[0]["value"] == "inf"  # CSV: inf, as documented


@pytest.mark.parametrize("made_with", ["other weights", "no network"])
def test_calibration_is_not_applied_to_a_segmentation_it_was_not_fitted_for(
    made_with, tmp_path, small_sample, random_weights, caplog
):
    """The shipped margins measure the bundled nets' errors; a segmentation by a lab's own weights
    (or by the classical candidate alone) got them silently. Intervals then come from the draws
    alone, and the report and a warning say why."""
    import logging

    import matseg

    segmented = tmp_path / "phases.zarr"
    if made_with == "other weights":
        matseg.segment(small_sample, segmented, model="cheap", weights=random_weights)
    else:
        matseg.segment(small_sample, segmented, model="classical")
    with caplog.at_level(logging.WARNING):
        report = matseg.measure(segmented, samples=2, transport=False, rev=False)
    reason = report["uncertainty"]["calibration_not_applied"]
    assert report["uncertainty"]["calibration"] is None and reason
    assert ("other weights" in reason) == (made_with == "other weights")
    assert any("calibration not applied" in r.getMessage() for r in caplog.records)
    bundled = tmp_path / "bundled.zarr"
    matseg.segment(small_sample, bundled, model="cheap")
    report = matseg.measure(bundled, samples=2, transport=False, rev=False)
    assert report["uncertainty"]["calibration"] is not None
    assert report["uncertainty"]["calibration_not_applied"] is None


def test_a_solve_skipped_in_every_draw_is_said_once(tmp_path, small_sample, capsys):
    """The segmentation's skipped solve is said once, not again for each uncertainty draw; each
    draw's table still holds its infinite tortuosity."""
    import matseg

    one_slice = tmp_path / "slice.zarr"
    image = matseg.open_volume(small_sample).data[:1].compute()
    plain_store(one_slice, image)
    segmented = tmp_path / "phases.zarr"
    matseg.segment(one_slice, segmented, model="classical", phases=("pore", "carbon-binder", "active"))
    args = ["measure", segmented, "--samples", "3", "--no-rev", "--max-radius", "2", "-o", tmp_path / "m"]
    assert run(args) == 0
    err = capsys.readouterr().err
    assert err.count("axis z is 1 voxel long") == 1, err
    report = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert report["uncertainty"]["samples"] == 3
    assert [d["tortuosity_factor/pore/z/1"] for d in report["draws"]] == [None] * 3  # JSON: null


def test_samples_with_labels_are_refused_not_ignored(tmp_path, capsys):
    """A plain label volume has no uncertainty: draws (or an uncalibrated margin) asked for with
    --labels are refused in one line before anything is written; --samples 0, or none given,
    measures it."""
    store = plain_store(tmp_path / "v.zarr", slab())
    args = ["measure", store, "--labels", "--no-transport", "--no-rev", "--max-radius", "2"]
    assert run([*args, "--samples", "4", "-o", tmp_path / "m"]) == 2
    err = capsys.readouterr().err
    assert "--samples 4 with --labels" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
    assert run([*args, "--no-calibration", "-o", tmp_path / "m"]) == 2  # nothing it could change
    err = capsys.readouterr().err
    assert "--no-calibration with --labels" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
    assert run([*args, "-o", tmp_path / "m"]) == 0
    report = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert report["uncertainty"]["samples"] == 0


def test_draws_in_which_a_phase_does_not_percolate_are_counted():
    """A tortuosity the segmentation solved but some draws could not (their interval reaches
    inf): counted per metric, so the run says why in one line."""
    from matseg.microstructure.report import stuck_in_draws

    table = {
        "tortuosity_factor/pore/z/1": 1.8,
        "tortuosity_factor/pore/y/1": float("inf"),
        "fraction/pore/-/1": 0.3,
    }
    draws = [
        {"tortuosity_factor/pore/z/1": 1.9, "tortuosity_factor/pore/y/1": float("inf")},
        {"tortuosity_factor/pore/z/1": float("inf"), "tortuosity_factor/pore/y/1": float("inf")},
        {"tortuosity_factor/pore/z/1": float("inf")},
    ]
    assert stuck_in_draws(table, draws) == {"tortuosity_factor/pore/z/1": 2}
    assert stuck_in_draws(table, []) == {}
