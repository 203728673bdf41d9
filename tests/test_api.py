"""The Python API a program (the napari plugin) drives: settings, progress, cancel, logging."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import zarr

import matseg

from .conftest import run

TILE = (1, 64, 64)  # the 16 x 64 x 64 sample in 16 tiles
ARRAYS = ("0", "labels/phases/0", "labels/decisions/0", "selector/choice", "selector/features")


def _arrays(path) -> dict:
    root = zarr.open_group(str(path), mode="r")
    return {name: root[name][:] for name in ARRAYS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_sample, random_weights):
    out = tmp_path_factory.mktemp("api") / "whole.zarr"
    settings = matseg.Settings(lam=0.0, weights=random_weights, tile=TILE)
    seen = []
    report = matseg.segment(
        small_sample, out, settings, truth=small_sample, workers=1, progress=lambda *a: seen.append(a)
    )
    return out, report, seen


def test_progress_sees_every_stage_end_with_done_equal_to_total(uninterrupted):
    _, report, seen = uninterrupted
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages == [
        "intensity pass",
        "cheap pass",
        "selector",
        "audit",
        "costlier candidates",
        "audited cells",
        "seam score",
        "scoring",
    ]
    last = {stage: (done, total) for stage, done, total in seen}
    assert all(done == total for done, total in last.values()), last
    assert last["cheap pass"] == (report["tiles"], report["tiles"]) == (16, 16)
    assert last["costlier candidates"][1] == report["run"]["computed_tiles"]["candidates"] > 0
    for stage in stages:  # counts only go up within a stage
        dones = [done for s, done, _ in seen if s == stage]
        assert dones == sorted(dones)


def test_cancel_keeps_finished_tiles_and_the_same_call_resumes(
    tmp_path, small_sample, random_weights, uninterrupted
):
    """Cancelled after 3 tiles of the cheap pass: ``Cancelled``, the finished tiles kept; the same
    call resumes to an output identical to an uninterrupted run's."""
    out = tmp_path / "cancelled.zarr"
    settings = matseg.Settings(lam=0.0, weights=random_weights, tile=TILE)
    cancel = threading.Event()

    def progress(stage, done, total):
        if stage == "cheap pass" and done >= 3:
            cancel.set()

    with pytest.raises(matseg.Cancelled):
        matseg.segment(small_sample, out, settings, workers=1, progress=progress, cancel=cancel)
    progress_rows = zarr.open_group(str(out), mode="r")["progress/cheap"][:, 0]
    finished = int((~np.isnan(progress_rows)).sum())
    assert 3 <= finished < 16
    report = matseg.segment(small_sample, out, settings, truth=small_sample, workers=1)
    assert report["run"]["started_as"] == "resume"
    assert report["run"]["computed_tiles"]["cheap"] == 16 - finished
    expected = _arrays(uninterrupted[0])
    for name, values in _arrays(out).items():
        np.testing.assert_array_equal(values, expected[name], err_msg=name)
    assert json.dumps(report["metrics"]) == json.dumps(
        uninterrupted[1]["metrics"]
    )  # (NaN for no hard region)


def test_cancel_before_any_tile_leaves_no_output(tmp_path, small_sample, random_weights):
    """Cancelled as its tiles start, before any is done: the output it created is removed."""
    out = tmp_path / "none.zarr"
    cancel = threading.Event()
    with pytest.raises(matseg.Cancelled):
        matseg.segment(
            small_sample, out, model="cheap", weights=random_weights, tile=TILE, cancel=cancel,
            progress=lambda stage, done, total: cancel.set() if stage == "single model" else None,
        )  # fmt: skip
    assert not out.exists()


def test_settings_are_checked_when_made_and_shortcuts_map_onto_them(tmp_path, small_sample):
    with pytest.raises(matseg.MatsegError, match="--lambda must be a finite number between 0 and 1, got 2"):
        matseg.Settings(lam=2.0)
    with pytest.raises(matseg.MatsegError, match="--budget-gflops only applies with --model auto"):
        matseg.Settings(model="cheap", budget_gflops=10.0)
    for tile in [(8, 0, 256), (256,), (1, 8, 256, 256)]:
        with pytest.raises(matseg.MatsegError, match="positive sizes"):
            matseg.Settings(tile=tile)
    for options, message in [
        ({"tile": "abc"}, "whole numbers"),
        ({"tile": "8,256,256"}, "not text"),
        ({"tile": (4.5, 64, 64)}, "whole numbers"),
        ({"halo": -1}, "at least 0"),
    ]:
        with pytest.raises(matseg.MatsegError, match=message):
            matseg.Settings(**options)
    settings = matseg.Settings(lam=0.03)
    assert matseg.Settings.of(settings, tile=[4, 32, 32]) == matseg.Settings(lam=0.03, tile=(4, 32, 32))
    with pytest.raises(TypeError, match="unknown setting"):
        matseg.segment(small_sample, tmp_path / "o.zarr", lamda=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lam = 0.5


@pytest.mark.parametrize(
    "options, message",
    [
        ({"workers": -1}, "workers must be a whole number of at least 1"),
        ({"workers": 0}, "workers must be a whole number of at least 1"),
        ({"cancel": "yes"}, "cancel must have is_set"),
        ({"progress": 5}, "progress must be a function"),
        ({"voxel_size": "abc"}, "voxel_size 'abc'"),
    ],
)
def test_api_arguments_of_the_wrong_kind_are_matseg_errors(tmp_path, small_sample, options, message):
    """What the library is handed is checked like the command line's options: a MatsegError
    naming it, never an AttributeError or ValueError from inside, and nothing written."""
    with pytest.raises(matseg.MatsegError, match=message):
        matseg.segment(small_sample, tmp_path / "o.zarr", model="cheap", **options)
    with pytest.raises(matseg.MatsegError, match="must be a matseg.Settings"):
        matseg.segment(small_sample, tmp_path / "o.zarr", {"model": "cheap"})
    for spec in (5, None):
        with pytest.raises(matseg.MatsegError, match="named by a path"):
            matseg.open_volume(spec)
    assert not (tmp_path / "o.zarr").exists()


def test_a_voxel_size_given_as_numbers_is_recorded(tmp_path, small_sample):
    report = matseg.segment(small_sample, tmp_path / "o.zarr", model="cheap", voxel_size=(0.5, 0.25, 0.25))
    assert report["input"]["voxel_size"]["values"] == [0.5, 0.25, 0.25]


def test_train_reports_steps_and_stops_when_cancelled(tmp_path, small_sample):
    seen, cancel = [], threading.Event()

    def progress(stage, done, total):
        seen.append((stage, done, total))
        if done == 3:
            cancel.set()

    with pytest.raises(matseg.Cancelled):
        matseg.train([str(small_sample)], tmp_path / "w", models=("cheap",), steps=50, batch=2, patch=32,
                     progress=progress, cancel=cancel)  # fmt: skip
    assert seen[-1] == ("training cheap", 3, 50)
    assert not (tmp_path / "w" / "cheap.pt").exists()


def test_train_augments_as_the_cli_does(tmp_path, small_sample):
    """``matseg.train`` re-images patches with ``light`` by default, as ``matseg train`` does;
    a preset is given by name, ``"none"`` turns it off, and an unknown name is a MatsegError."""
    from matseg.augment import LIGHT, STRONG

    def trained_with(folder, **kw):
        matseg.train([str(small_sample)], folder, models=("cheap",), steps=2, batch=2, patch=32, **kw)
        return json.loads((folder / "manifest.json").read_text())["cheap"]["training"]["augment"]

    assert trained_with(tmp_path / "a") == LIGHT.to_dict()
    assert trained_with(tmp_path / "b", augment="strong") == STRONG.to_dict()
    assert trained_with(tmp_path / "c", augment="none") == "none"
    with pytest.raises(matseg.MatsegError, match="--augment sharp"):
        trained_with(tmp_path / "d", augment="sharp")
    assert not (tmp_path / "d").exists()


def test_help_imports_no_heavy_library():
    """``matseg --help`` stays instant: torch, dask, zarr and numpy are imported by commands only."""
    code = (
        "import sys\nfrom matseg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'dask', 'zarr', 'numpy', 'distributed') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_quiet_and_default_verbosity(tmp_path, small_sample, random_weights, capfd):
    args = [
        "segment",
        small_sample,
        "-o",
        tmp_path / "a.zarr",
        "--weights",
        random_weights,
        "--model",
        "cheap",
    ]
    assert run([*args, "--tile", "4,32,32", "--quiet"]) == 0
    assert capfd.readouterr().err == ""
    args[3] = tmp_path / "b.zarr"
    assert run([*args, "--tile", "4,32,32", "--no-bars"]) == 0
    err = capfd.readouterr().err
    assert "matseg: single model: 16 of 16 done" in err and "Completed" not in err
