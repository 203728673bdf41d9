"""Nothing a user types destroys data (issue 23): each case gives one line and exit code 2,
with every input byte-identical afterwards; kills at fault points resume to a clean run's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from .conftest import run
from .test_bad_input import assert_refused, good_zarr, snapshot


@pytest.fixture
def store(tmp_path):
    return good_zarr(tmp_path / "vol.zarr")


def _segment(store, out, weights, *extra):
    return ["segment", store, "-o", out, "--weights", weights, "--model", "cheap", "--quiet", *extra]


# -- data loss: outputs that are inputs ------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        lambda tmp: tmp / "sub" / ".." / "vol.zarr",  # '..' through a folder that does not exist
        lambda tmp: tmp / "link.zarr",  # a symlink to the input
        lambda tmp: tmp / "vol.zarr" / "out.zarr",  # inside the input store
        lambda tmp: tmp,  # around the input
    ],
    ids=["dotdot", "symlink", "inside", "around"],
)
def test_output_that_is_the_input_is_refused(tmp_path, store, random_weights, capsys, output):
    (tmp_path / "link.zarr").symlink_to(store)
    args = _segment(store, output(tmp_path), random_weights, "--overwrite")
    assert_refused(tmp_path, args, capsys, "would overwrite the input")


def test_an_input_that_is_a_link_inside_the_output_is_refused(tmp_path, store, random_weights, capsys):
    """--overwrite would delete the link with the output, then read the input as fill values."""
    out = tmp_path / "phases.zarr"
    assert run(_segment(store, out, random_weights)) == 0
    (out / "scan-link.zarr").symlink_to(store)
    capsys.readouterr()
    args = _segment(out / "scan-link.zarr", out, random_weights, "--overwrite")
    assert_refused(tmp_path, args, capsys, "would overwrite the input")


def test_truth_that_is_the_output_is_refused(tmp_path, store, random_weights, capsys):
    out = tmp_path / "out.zarr"
    assert run(_segment(store, out, random_weights)) == 0
    capsys.readouterr()
    args = _segment(store, out, random_weights, "--truth", out, "--overwrite")
    assert_refused(tmp_path, args, capsys, "would overwrite the --truth")


def test_train_into_the_input_store_is_refused(tmp_path, small_sample, capsys):
    sample = Path(tmp_path / "s.zarr")
    import shutil

    shutil.copytree(small_sample, sample)
    args = ["train", sample, "-o", sample / "w", "--model", "cheap", "--steps", "1"]
    assert_refused(tmp_path, args, capsys, "would overwrite the image")


def test_overwrite_does_not_replace_through_a_symbolic_link(tmp_path, store, random_weights, capsys):
    """A link to a matseg output: said to be a link (not "not written by matseg"), and nothing is
    deleted on either side of it."""
    out = tmp_path / "real.zarr"
    assert run(_segment(store, out, random_weights)) == 0
    (tmp_path / "link.zarr").symlink_to(out)
    capsys.readouterr()
    args = _segment(store, tmp_path / "link.zarr", random_weights, "--overwrite", "--tile", "4,32,32")
    assert_refused(tmp_path, args, capsys, "link.zarr is a symbolic link; --overwrite does not replace")


def test_overwrite_never_deletes_what_matseg_did_not_write(tmp_path, store, random_weights, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("three years of work")
    assert_refused(
        tmp_path, _segment(store, notes, random_weights, "--overwrite"), capsys, "not written by matseg"
    )
    assert_refused(
        tmp_path, ["sample", notes, "--shape", "8", "32", "32", "--overwrite"], capsys, "not written"
    )
    args = ["train", store, "--labels", store, "-o", notes, "--model", "cheap", "--steps", "1"]
    assert_refused(tmp_path, args, capsys, "not a matseg weights folder")


def test_overwrite_replaces_a_matseg_output(tmp_path, store, random_weights, capsys):
    out = tmp_path / "out.zarr"
    assert run(_segment(store, out, random_weights)) == 0
    (out / "stale-file").write_text("from the earlier run")
    assert run(_segment(store, out, random_weights, "--overwrite")) == 0
    assert not (out / "stale-file").exists()
    assert not list(tmp_path.glob(".out.zarr.matseg-*"))  # nothing left aside


# -- wrong answers without a word ------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e300])
def test_values_normalisation_cannot_represent(tmp_path, random_weights, capsys, value):
    data = np.random.default_rng(0).normal(100, 20, (4, 64, 64))
    data[1, 5, 5] = value
    store = good_zarr(tmp_path / "big.zarr", data)
    assert_refused(tmp_path, _segment(store, tmp_path / "o.zarr", random_weights), capsys, "float32")


@pytest.mark.parametrize(
    "option", [("--budget-gflops", "nan"), ("--budget-gflops", "inf"), ("--lambda", "nan")]
)
def test_numbers_that_are_not_finite(tmp_path, store, random_weights, capsys, option):
    args = ["segment", store, "-o", tmp_path / "o.zarr", "--weights", random_weights, *option]
    assert_refused(tmp_path, args, capsys, f"{option[0]} must be a finite number")


def test_image_given_as_truth(tmp_path, store, random_weights, capsys):
    args = _segment(store, tmp_path / "o.zarr", random_weights, "--truth", store)
    assert_refused(tmp_path, args, capsys, "an image, not labels")


def test_truth_values_outside_the_phases(tmp_path, store, random_weights, capsys):
    truth = np.zeros((4, 64, 64), np.uint8)
    truth[0, :3, :3] = 7  # 9 voxels of no phase (3 phases; 255 would be unlabelled)
    truth[1, :2, :2] = 255
    labels = good_zarr(tmp_path / "truth.zarr", truth)
    args = _segment(store, tmp_path / "o.zarr", random_weights, "--truth", labels)
    assert_refused(tmp_path, args, capsys, "9 voxels with values outside the 3 phases")


def test_image_given_as_training_labels(tmp_path, store, capsys):
    args = ["train", store, "--labels", store, "-o", tmp_path / "w", "--model", "cheap", "--steps", "1"]
    assert_refused(tmp_path, args, capsys, "an image, not labels")
    image8 = good_zarr(tmp_path / "img8.zarr", np.arange(4 * 64 * 64).reshape(4, 64, 64).astype(np.uint8))
    args = ["train", store, "--labels", image8, "-o", tmp_path / "w", "--model", "cheap", "--steps", "1"]
    assert_refused(tmp_path, args, capsys, "image given as labels")


def test_missing_input_chunk_is_reported(tmp_path, store, random_weights, capsys):
    (store / "c" / "1" / "0" / "1").unlink()  # chunk (1, 0, 1): z 2:4, y 0:32, x 32:64
    args = _segment(store, tmp_path / "o.zarr", random_weights)
    assert_refused(tmp_path, args, capsys, "missing 1 of its 8 chunks (first at [2:4, 0:32, 32:64])")
    assert_refused(tmp_path, args, capsys, "zarr skips writing such chunks by default")  # the other cause
    zarr.open_array(str(store), mode="r+").attrs["missing_chunks"] = "fill_value"  # on purpose
    assert run(args) == 0


# -- crashes and hangs -----------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1"])
def test_train_learning_rate(tmp_path, small_sample, capsys, lr):
    args = ["train", small_sample, "-o", tmp_path / "w", "--model", "cheap", "--steps", "1", "--lr", lr]
    assert_refused(tmp_path, args, capsys, "--lr must be a finite number")


def test_train_patch_larger_than_the_images(tmp_path, small_sample, capsys):
    args = [
        "train",
        small_sample,
        "-o",
        tmp_path / "w",
        "--model",
        "cheap",
        "--steps",
        "1",
        "--patch",
        "4096",
    ]
    assert_refused(tmp_path, args, capsys, "use --patch 64 or less")


def test_train_patch_beyond_memory_names_what_fits(tmp_path, small_sample, capsys, monkeypatch):
    import matseg.training
    import matseg.training_checks

    monkeypatch.setattr(matseg.training_checks, "available_memory", lambda: 8 << 20)  # 8 MiB
    args = ["train", small_sample, "-o", tmp_path / "w", "--model", "cheap", "--steps", "1", "--patch", "64"]
    before = snapshot(tmp_path)
    code = run(args)
    err = capsys.readouterr().err
    assert code == 2 and "GiB are available; use --patch" in err and len(err.strip().splitlines()) == 1
    fits = int(err.split("use --patch ")[1].split()[0])
    per_pixel = matseg.training_checks.training_bytes_per_pixel(
        matseg.training.new_segmenter("cheap", ("a", "b", "c"))
    )
    assert 0 < fits < 64 and per_pixel * 8 * fits**2 <= 8 << 20 < per_pixel * 8 * (fits + 8) ** 2
    assert snapshot(tmp_path) == before


def _as_root_with_mount() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs: too small for the output (root only)."""
    if not _as_root_with_mount():
        pytest.skip("mounting a small file system needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_disk_full_is_one_line_and_the_run_resumes(tmp_path, random_weights, capsys, small_disk):
    data = np.random.default_rng(0).normal(100, 20, (8, 256, 256)).astype(np.float32)
    store = good_zarr(tmp_path / "big.zarr", data)
    before = snapshot(store)
    out = small_disk / "o.zarr"
    args = [*_segment(store, out, random_weights), "--tile", "2,64,64", "--workers", "1"]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(small_disk) in err  # the path (zarr's chunk writes name none: the output is named)
    assert snapshot(store) == before
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert run(args) == 0  # the same command: it resumes (or starts afresh if nothing was kept)
    clean = tmp_path / "clean.zarr"
    assert run([*_segment(store, clean, random_weights), "--tile", "2,64,64", "--workers", "1"]) == 0
    a, b = (zarr.open_group(str(p), mode="r")["labels/phases/0"][:] for p in (out, clean))
    np.testing.assert_array_equal(a, b)


def test_read_only_output_folder(tmp_path, store, random_weights, capsys):
    if not _as_root_with_mount():
        pytest.skip("a read-only bind mount needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode:
        pytest.skip("cannot bind-mount here")
    finished = folder / "finished.zarr"
    assert run(_segment(store, finished, random_weights)) == 0
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        assert_refused(tmp_path, _segment(store, folder / "o.zarr", random_weights), capsys, "cannot write")
        # a finished run given again is read only: a requeued job of an archived output is a no-op
        capsys.readouterr()
        assert run(_segment(store, finished, random_weights)) == 0
        assert "nothing computed now" in capsys.readouterr().out
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def test_evaluate_leaves_nothing_after_an_error(tmp_path, store, random_weights, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", store, "--truth", tmp_path / "nope.zarr", "-o", out, "--weights", random_weights]
    assert_refused(tmp_path, args, capsys, "input not found")  # before anything is created
    truth = good_zarr(tmp_path / "truth.zarr", np.zeros((4, 32, 32), np.uint8))  # the wrong shape
    before = snapshot(tmp_path)
    args = ["evaluate", store, "--truth", truth, "-o", out, "--weights", random_weights]
    assert run(args) == 2  # fails once its output folder exists
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("matseg: error: labels") and "have shape" in err[-1]
    assert not out.exists() and snapshot(tmp_path) == before


def test_evaluate_replaces_an_earlier_evaluation_only_with_overwrite(
    tmp_path, small_sample, random_weights, capsys
):
    """As segment and measure: an existing evaluation folder is refused, unchanged, without
    --overwrite; with it the earlier evaluation is replaced (its stray files gone) once the new
    one is done, and is back whole where the new one fails; a folder evaluate did not write is
    refused even then."""
    out = tmp_path / "eval"
    args = ["evaluate", small_sample, "-o", out, "--weights", random_weights, "--tile", "8,64,64"]
    args += ["--lambdas", "0,1", "--no-real-run"]
    assert run(args) == 0
    (out / "stray.txt").write_text("from the earlier run")
    before = snapshot(out)
    capsys.readouterr()
    assert_refused(tmp_path, args, capsys, "pass --overwrite")
    assert snapshot(out) == before
    (tmp_path / "empty-weights").mkdir()  # found wrong only once the run has started
    assert run([*args, "--overwrite", "--weights", tmp_path / "empty-weights"]) == 2
    assert snapshot(out) == before  # the earlier evaluation is back, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert run([*args, "--overwrite"]) == 0
    assert not (out / "stray.txt").exists() and (out / "evaluation.json").exists()
    capsys.readouterr()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert_refused(tmp_path, [*args[:3], other, *args[4:], "--overwrite"], capsys, "not written by matseg")
    assert (other / "notes.txt").read_text() == "keep"


# -- resume, requeue, kills at fault points -----------------------------------------------------


def test_finished_run_again_is_a_no_op(tmp_path, store, random_weights, capsys):
    out = tmp_path / "out.zarr"
    args = _segment(store, out, random_weights)
    assert run(args) == 0
    first = capsys.readouterr().out
    before = snapshot(tmp_path)
    assert run(args) == 0  # a requeued job: exit 0, the stored summary, nothing recomputed
    again = capsys.readouterr()
    assert "already a finished run" in again.err and "nothing computed now" in again.out
    assert first.splitlines()[-1] == again.out.splitlines()[-1]
    assert snapshot(tmp_path) == before


def test_an_input_written_again_is_not_taken_for_the_one_segmented(tmp_path, random_weights, capsys):
    """The same name, other contents (a TIFF saved again, a Zarr array rewritten in place, the
    slices of a folder saved again): the finished run is not returned as its result, and
    --overwrite computes it afresh."""
    import tifffile

    rng = np.random.default_rng(0)
    first, second = (rng.normal(100, 20, (4, 64, 64)).astype(np.float32) for _ in range(2))
    tif, store, folder = tmp_path / "scan.tif", tmp_path / "scan.zarr", tmp_path / "slices"
    tifffile.imwrite(tif, first)
    good_zarr(store, first)
    folder.mkdir()

    def slices(data):
        for z, page in enumerate(data):
            tifffile.imwrite(folder / f"slice{z}.tif", page)

    def in_place():
        zarr.open_array(str(store), mode="r+")[:] = second

    slices(first)
    rewrites = [
        (tif, lambda: tifffile.imwrite(tif, second)),
        (store, in_place),
        (folder, lambda: slices(second)),
    ]
    for source, rewrite in rewrites:
        out = tmp_path / f"{source.stem}-{source.suffix[1:]}.zarr"
        args = [*_segment(source, out, random_weights), "--tile", "4,64,64"]
        assert run(args) == 0
        rewrite()
        assert run(args) == 2
        assert "finished run with other settings: input_contents" in capsys.readouterr().err
        assert run([*args, "--overwrite"]) == 0
        fresh = tmp_path / f"fresh-{source.suffix[1:]}.zarr"
        assert run([*_segment(source, fresh, random_weights), "--tile", "4,64,64"]) == 0
        a, b = (zarr.open_group(str(p), mode="r")["labels/phases/0"][:] for p in (out, fresh))
        np.testing.assert_array_equal(a, b)
    # the folder of slices and the TIFF stack of the same values: the same labels
    a, b = (
        zarr.open_group(str(tmp_path / f"fresh-{k}.zarr"), mode="r")["labels/phases/0"][:]
        for k in ("", "tif")
    )
    np.testing.assert_array_equal(a, b)


def _killed_at(point: str, args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATSEG_FAULT": point, **(env_extra or {})}
    cmd = [sys.executable, "-m", "matseg.cli", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def kill_volume(tmp_path_factory):
    data = np.random.default_rng(1).normal(100, 20, (8, 128, 128)).astype(np.float32)
    return good_zarr(tmp_path_factory.mktemp("kill") / "vol.zarr", data)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, kill_volume, random_weights):
    out = tmp_path_factory.mktemp("clean") / "out.zarr"
    assert run(_kill_args(kill_volume, out, random_weights)) == 0
    return zarr.open_group(str(out), mode="r")["labels/phases/0"][:]


def _kill_args(volume, out, weights, *extra):
    return [*_segment(volume, out, weights, *extra), "--tile", "2,64,64", "--workers", "1"]


@pytest.mark.parametrize("point", ["after-lock", "after-create", "after-rename", "after-tile:3"])
def test_kill_at_a_fault_point_then_the_same_command_gives_a_clean_runs_output(
    tmp_path, kill_volume, random_weights, clean_run, point
):
    out = tmp_path / "out.zarr"
    args = _kill_args(kill_volume, out, random_weights)
    before = snapshot(kill_volume)
    killed = _killed_at(point, args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # either nothing at the output path, or a store that says what it is
    assert not out.exists() or json.loads((out / "zarr.json").read_text())["attributes"]["matseg"]["settings"]
    assert run(args) == 0  # no --overwrite
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/phases/0"][:], clean_run)
    assert snapshot(kill_volume) == before
    assert not list(tmp_path.glob(".out.zarr.matseg-new-*"))
    if point.startswith("after-tile"):
        timings = json.loads((out / "matseg-report.json").read_text())["timings"]
        assert 0 < timings["voxels_computed"] < 8 * 128 * 128  # this run's tiles only


def test_kill_while_overwrite_deletes_the_old_output(tmp_path, kill_volume, random_weights, clean_run):
    out = tmp_path / "out.zarr"
    args = _kill_args(kill_volume, out, random_weights)
    assert run([*args, "--overwrite"]) == 0
    killed = _killed_at("after-trash", [*args, "--overwrite"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()  # moved aside whole, not half-deleted in place
    assert run(args) == 0
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/phases/0"][:], clean_run)
    assert not list(tmp_path.glob(".out.zarr.matseg-*"))  # the dead run's leftovers are swept


def test_a_worker_that_keeps_dying_is_one_line_and_the_run_resumes(
    tmp_path, kill_volume, random_weights, clean_run
):
    """A dask worker killed at its first tile, again on the retry: exit 2 with one matseg line
    (no scheduler error, no traceback); the same command without the fault resumes the run."""
    out = tmp_path / "out.zarr"
    args = [*_segment(kill_volume, out, random_weights), "--tile", "4,64,64", "--cluster", "local"]
    args += ["--workers", "1", "--quiet"]
    before = snapshot(kill_volume)
    died = _killed_at("after-tile:1", args, {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    assert died.returncode == 2, died.stderr
    errors = [line for line in died.stderr.splitlines() if "error" in line.lower()]
    # the task named is the one the scheduler blames: the tile's, or an input-reading task it
    # held; or, where the worker was killed before its nanny had finished starting it (and so
    # was not restarted), a task that no worker was left to run
    assert errors == [errors[0]] and errors[0].startswith("matseg: error: a dask worker died ")
    assert errors[0].endswith("the finished tiles are kept: run the same command again")
    assert "Traceback" not in died.stderr and "workers died while" not in died.stderr
    assert snapshot(kill_volume) == before
    assert run(args) == 0
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/phases/0"][:], clean_run)
