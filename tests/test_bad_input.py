"""Bad input: one clear line on stderr, exit code 2, no traceback, no file changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from matseg.cli import main


def snapshot(root: Path) -> dict:
    """Every file under root with its size and content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def assert_refused(tmp_path, args, capsys, match: str) -> None:
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), lines[0]
    assert snapshot(tmp_path) == before


def good_zarr(path: Path, data=None) -> Path:
    data = np.random.default_rng(0).normal(100, 20, (4, 64, 64)).astype(np.float32) if data is None else data
    zarr.create_array(str(path), shape=data.shape, chunks=(2, 32, 32), dtype=data.dtype)[:] = data
    return path


def test_missing_path(tmp_path, capsys, random_weights):
    assert_refused(
        tmp_path, ["segment", tmp_path / "nope.zarr", "-o", tmp_path / "o.zarr"], capsys, "input not found"
    )


def test_directory_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    assert_refused(
        tmp_path,
        ["segment", tmp_path / "folder", "-o", tmp_path / "o.zarr"],
        capsys,
        "no zarr array or group",
    )


def test_a_folder_of_slices_that_differ(tmp_path, capsys):
    """A slice of another size among a folder's TIFFs: named in one line, before any output."""
    import tifffile

    (tmp_path / "slices").mkdir()
    for z, shape in enumerate([(32, 32), (32, 32), (32, 30)]):
        tifffile.imwrite(tmp_path / "slices" / f"s{z:03d}.tif", np.zeros(shape, np.uint8))
    args = ["segment", tmp_path / "slices", "-o", tmp_path / "o.zarr"]
    assert_refused(tmp_path, args, capsys, "differ: s002.tif is (32, 30) uint8, s000.tif is (32, 32) uint8")


def test_wrong_hdf5_dataset(tmp_path, capsys):
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh["data"] = np.zeros((4, 32, 32), np.uint8)
        fh["mask"] = np.zeros((4, 32, 32), np.uint8)
    assert_refused(
        tmp_path,
        ["segment", f"{tmp_path / 'scan.h5'}:/raw", "-o", tmp_path / "o.zarr"],
        capsys,
        "HDF5 dataset '/raw' not found",
    )


@pytest.mark.parametrize("inner", ["", ":/scan"])
@pytest.mark.parametrize(
    "target, says",
    [
        (("gone.h5", "/entry/data"), "external link to /entry/data in gone.h5, which is not found"),
        (("data.h5", "/raw"), "external link to /raw in data.h5, which has no /raw"),
    ],
)
def test_a_dangling_external_link_is_named_with_its_target(tmp_path, capsys, inner, target, says):
    with h5py.File(tmp_path / "data.h5", "w") as fh:
        fh["entry/data"] = np.zeros((4, 32, 32), np.uint8)
    with h5py.File(tmp_path / "master.h5", "w") as fh:
        fh["scan"] = h5py.ExternalLink(*target)
    args = ["segment", f"{tmp_path / 'master.h5'}{inner}", "-o", tmp_path / "o.zarr"]
    assert_refused(tmp_path, args, capsys, f"/scan is an {says}" if not inner else says)


def test_corrupt_metadata(tmp_path, capsys):
    store = good_zarr(tmp_path / "bad.zarr")
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')
    assert_refused(tmp_path, ["segment", store, "-o", tmp_path / "o.zarr"], capsys, "corrupt")


def test_truncated_chunk(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "trunc.zarr")
    chunk = sorted((store / "c").rglob("*"))[-1]
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "o.zarr", "--weights", random_weights],
        capsys,
        "cannot read",
    )


@pytest.mark.parametrize("shape", [(64,), (1, 1, 2, 32, 32)])
def test_wrong_rank(tmp_path, capsys, shape):
    store = tmp_path / "rank.zarr"
    zarr.create_array(str(store), shape=shape, dtype="float32")[:] = 1.0
    assert_refused(
        tmp_path, ["segment", store, "-o", tmp_path / "o.zarr"], capsys, f"has {len(shape)} dimensions"
    )


def test_non_numeric_dtype(tmp_path, capsys):
    with h5py.File(tmp_path / "text.h5", "w") as fh:
        fh["names"] = np.array([[b"ab", b"cd"], [b"ef", b"gh"]])
    assert_refused(
        tmp_path, ["segment", f"{tmp_path / 'text.h5'}:/names", "-o", tmp_path / "o.zarr"], capsys, "dtype"
    )


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, capsys, random_weights, value):
    data = np.ones((4, 64, 64), np.float32)
    data[2, 10, 10] = value
    store = good_zarr(tmp_path / "nan.zarr", data)
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "o.zarr", "--weights", random_weights],
        capsys,
        "NaN or infinite",
    )


def test_constant_volume(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "flat.zarr", np.full((4, 64, 64), 77, np.uint8))
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "o.zarr", "--weights", random_weights],
        capsys,
        "holds one value (77) in every voxel",
    )


def test_empty_array(tmp_path, capsys):
    store = tmp_path / "empty.zarr"
    zarr.create_array(str(store), shape=(0, 32, 32), dtype="uint8")
    assert_refused(tmp_path, ["segment", store, "-o", tmp_path / "o.zarr"], capsys, "is empty")


def test_existing_output_without_overwrite(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "in.zarr")
    (tmp_path / "o.zarr").mkdir()
    (tmp_path / "o.zarr" / "keep.txt").write_text("precious")
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "o.zarr", "--weights", random_weights],
        capsys,
        "exists and is not written by matseg",
    )


def test_unwritable_output(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "in.zarr")
    (tmp_path / "a-file").write_text("not a folder")
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "a-file" / "o.zarr", "--weights", random_weights],
        capsys,
        "cannot write output",
    )


def test_output_over_input(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "in.zarr")
    assert_refused(
        tmp_path,
        ["segment", store, "-o", store, "--overwrite", "--weights", random_weights],
        capsys,
        "would overwrite the input",
    )


def test_weights_sha256_mismatch(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "in.zarr")
    weights = Path(shutil.copytree(random_weights, tmp_path / "w"))
    pt = weights / "expensive.pt"
    raw = bytearray(pt.read_bytes())
    raw[-20] ^= 0xFF
    pt.write_bytes(bytes(raw))
    assert_refused(
        tmp_path, ["segment", store, "-o", tmp_path / "o.zarr", "--weights", weights], capsys, "sha256"
    )


class Payload:
    """Any object that is not a tensor: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_with_pickled_object(tmp_path, capsys, random_weights):
    store = good_zarr(tmp_path / "in.zarr")
    weights = Path(shutil.copytree(random_weights, tmp_path / "w"))
    torch.save({"evil": Payload()}, weights / "expensive.pt")
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["expensive"]["sha256"] = hashlib.sha256((weights / "expensive.pt").read_bytes()).hexdigest()
    (weights / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(
        tmp_path,
        ["segment", store, "-o", tmp_path / "o.zarr", "--weights", weights],
        capsys,
        "holds more than tensors",
    )
    assert "this must never run" not in capsys.readouterr().out


def test_usage_error_exit_code(tmp_path, capsys):
    code, err = run_cli(["segment", "x.zarr"], capsys)  # no -o
    assert code == 2 and "Traceback" not in err and "--output" in err


def test_unfinished_run_is_named(tmp_path, capsys, random_weights):
    """An unfinished run of other settings is named, with what differs."""
    store = good_zarr(tmp_path / "in.zarr")
    out = tmp_path / "o.zarr"
    zarr.open_group(str(out), mode="w").attrs["matseg"] = {"status": "running"}
    assert_refused(
        tmp_path, ["segment", store, "-o", out, "--weights", random_weights], capsys, "unfinished matseg run"
    )


@pytest.mark.parametrize(
    "device, match",
    [("gpu0", "not a torch device"), ("cuda", "no CUDA GPU"), ("meta", "runs on cpu or cuda")],
)
def test_bad_device(tmp_path, capsys, random_weights, monkeypatch, device, match):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: MATSEG_DEVICE=cuda is valid here")
    monkeypatch.setenv("MATSEG_DEVICE", device)
    volume = good_zarr(tmp_path / "in.zarr")
    args = ["segment", volume, "-o", tmp_path / "o.zarr", "--model", "cheap"]
    assert_refused(tmp_path, args, capsys, match)


@pytest.mark.parametrize("n_truths", [1, 3])
def test_evaluate_needs_one_truth_per_volume(tmp_path, capsys, random_weights, small_sample, n_truths):
    args = ["evaluate", small_sample, small_sample, "-o", tmp_path / "ev", "--weights", random_weights]
    assert_refused(tmp_path, [*args, *["--truth", small_sample] * n_truths], capsys, "give one per volume")


def test_evaluate_of_an_image_without_labels_names_the_option(tmp_path, capsys, random_weights):
    volume = good_zarr(tmp_path / "v.zarr")
    args = ["evaluate", volume, "-o", tmp_path / "ev", "--weights", random_weights]
    assert_refused(tmp_path, args, capsys, "holds no label image of its own")


@pytest.mark.parametrize("inner", ["new.zarr:/x", "new.h5:/data"])
def test_an_output_inside_a_store_path_is_refused(tmp_path, capsys, random_weights, inner):
    """It made a folder named 'new.zarr:' holding 'x'."""
    volume = good_zarr(tmp_path / "in.zarr")
    args = ["segment", volume, "-o", f"{tmp_path}/{inner}", "--model", "cheap", "--weights", random_weights]
    assert_refused(tmp_path, args, capsys, "an output is a whole store")
    assert_refused(
        tmp_path, ["sample", f"{tmp_path}/{inner}", "--shape", "4", "32", "32"], capsys, "whole store"
    )


@pytest.mark.parametrize(
    "name, says", [("out.h5", "not HDF5; name it out.zarr"), ("scan.ome.tif", "not TIFF; name it scan.zarr")]
)
def test_an_output_named_as_another_format_is_refused(tmp_path, capsys, random_weights, name, says):
    """It wrote a Zarr store, a folder, under the name out.h5: h5py, napari or h5ls failed on it."""
    volume = good_zarr(tmp_path / "in.zarr")
    args = ["segment", volume, "-o", tmp_path / name, "--model", "cheap", "--weights", random_weights]
    assert_refused(tmp_path, args, capsys, f"writes an OME-Zarr store (a folder), {says}")
    assert_refused(tmp_path, ["sample", tmp_path / name, "--shape", "4", "32", "32"], capsys, says)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--steps", "0"], "Invalid value for '--steps': 0 is not in the range x>=1."),
        (["segment", "in.zarr", "-o", "out.zarr", "--bogus"], "No such option '--bogus'"),
        (["segment"], "Missing argument 'INPUT'."),
        (["bogus"], "No such command 'bogus'."),
    ],
)
def test_a_bad_option_is_one_line_too(args, message, tmp_path, capsys, monkeypatch):
    """click's usage errors were three lines (usage, a hint, the error): one line, exit 2, with
    the command whose help says more."""
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("matseg: error: ") and message in line, line
    command = "matseg" if args[0] == "bogus" else f"matseg {args[0]}"
    assert line.endswith(f"(see '{command} --help')")
    assert list(tmp_path.iterdir()) == []
