"""`matseg segment` end to end: the output contract scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from matseg.models.inference import describe_device

from .conftest import run
from .test_bad_input import snapshot


def test_segment_sample_contract(tmp_path, small_sample, random_weights, capsys):
    before = snapshot(small_sample)
    out = tmp_path / "phases.zarr"
    code = run(
        [
            "segment",
            small_sample,
            "-o",
            out,
            "--weights",
            random_weights,
            "--model",
            "cheap",
            "--truth",
            small_sample,
            "--tile",
            "4,64,64",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for word in ("voxels", "voxels/s", "GFLOPs", "pore", "mIoU", "hard regions"):
        assert word in printed
    assert f"device     {describe_device()}" in printed
    assert snapshot(small_sample) == before, "the input was changed"

    root = zarr.open_group(str(out), mode="r")
    labels = root["labels/phases/0"]
    assert labels.dtype == np.uint8 and labels.shape == (16, 64, 64)
    assert set(np.unique(labels[:])) <= {0, 1, 2}
    assert (root["labels/decisions/0"][:] == 0).all()  # cheap everywhere
    report = json.loads((out / "matseg-report.json").read_text())
    internal = ("status", "version", "settings", "cheap_pass", "rewritten")  # what a re-run needs
    assert report == {k: v for k, v in root.attrs["matseg"].items() if k not in internal}
    assert root.attrs["matseg"]["status"] == "complete"
    assert report["models"][0]["sha256"] and report["gflops"] > 0
    assert abs(sum(report["volume_fractions"].values()) - 1) < 1e-9
    assert 0 <= report["metrics"]["miou"] <= 1
    assert report["run"]["devices"] == [describe_device()]  # "cpu" where torch sees no GPU

    # another OME-Zarr reader finds the phase labels with their names and colours
    nodes = list(Reader(parse_url(str(out)))())
    label_nodes = [n for n in nodes if n.load(Label)]
    names = {n.zarr.path.rstrip("/").split("/")[-1] for n in label_nodes}
    assert "phases" in names


def test_overwrite_replaces_output(tmp_path, small_sample, random_weights):
    out = tmp_path / "o.zarr"
    args = ["segment", small_sample, "-o", out, "--weights", random_weights, "--model", "cheap", "--quiet"]
    assert run(args) == 0
    assert run(args) == 0  # the same finished run again: a no-op
    other = [*args[:-2], "expensive", "--quiet"]  # other settings: only with --overwrite
    assert run(other) == 2
    assert run(other + ["--overwrite"]) == 0


def test_console_script_exit_codes(tmp_path):
    """The installed command, as a user runs it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "matseg.cli",
            "segment",
            str(tmp_path / "missing.zarr"),
            "-o",
            str(tmp_path / "o.zarr"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("matseg: error: input not found")
    assert "Traceback" not in done.stderr
    for module in ("matseg.cli", "matseg"):  # python -m matseg too, where the script is not on PATH
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "segment" in done.stdout


def test_classical_alone_follows_the_phase_order_the_weights_recorded(tmp_path, small_sample, random_weights):
    """A lab's phases need not be in intensity order (EMPS: particles darker than the
    background); ``--model classical`` then maps its dark-to-bright classes through the order
    the weights' selector recorded, as the selector's own classical candidate does."""
    import shutil

    import matseg

    reversed_weights = tmp_path / "reversed"
    shutil.copytree(random_weights, reversed_weights)
    manifest = json.loads((reversed_weights / "manifest.json").read_text())
    manifest["selector"]["phase_order"] = [2, 1, 0]
    (reversed_weights / "manifest.json").write_text(json.dumps(manifest))
    outputs = {}
    for name, weights in (("recorded", random_weights), ("reversed", reversed_weights)):
        matseg.segment(small_sample, tmp_path / f"{name}.zarr", model="classical", weights=weights)
        outputs[name] = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["labels/phases/0"][:]
    order = json.loads((random_weights / "manifest.json").read_text())["selector"]["phase_order"]
    classes = np.argsort(order)[outputs["recorded"]]  # back to dark-to-bright classes
    assert np.array_equal(outputs["reversed"], np.array([2, 1, 0])[classes])
    assert not np.array_equal(outputs["reversed"], outputs["recorded"])


def test_volumes_thinner_than_the_halo_are_segmented(tmp_path, random_weights):
    """A volume narrower in-plane than a model's halo (one tile, no neighbour to take a halo
    from), down to two voxels (one voxel holds one value: refused as a constant volume), and a
    2-D strip: segmented whole, labels of its own shape."""
    from matseg.tiling import plan_tiles

    assert plan_tiles((8, 11, 600), (8, 256, 256), 64, 8).depth == (0, 0, 64)
    rng = np.random.default_rng(0)
    for shape in [(8, 11, 11), (1, 1, 2), (4, 200), (4, 128, 9)]:
        path = tmp_path / f"v{len(shape)}-{shape[-1]}.zarr"
        data = rng.integers(0, 255, shape, dtype=np.uint8)
        data.flat[0], data.flat[-1] = 0, 255  # never one value in every voxel
        zarr.create_array(str(path), shape=shape, dtype="uint8")[:] = data
        for model in ("auto", "expensive", "classical"):
            out = tmp_path / f"o-{path.stem}-{model}.zarr"
            args = ["segment", path, "-o", out, "--model", model, "--weights", random_weights]
            with _no_runtime_warnings():
                assert run([*args, "--quiet"]) == 0, (shape, model)
            labels = zarr.open_group(str(out), mode="r")["labels/phases/0"][:]
            assert labels.shape == shape and labels.max() < 3


def _no_runtime_warnings():
    """Numpy's warnings (a mean of nothing) are errors here."""
    import warnings
    from contextlib import contextmanager

    @contextmanager
    def strict():
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            yield

    return strict()


def test_a_fill_around_the_scan_is_said_in_the_summary(tmp_path, random_weights, capsys):
    """Zeros outside a CT reconstruction's circle are segmented as a phase: the summary says how
    many voxels hold the one value, once, and a volume without such a fill has no such line."""
    rng = np.random.default_rng(0)
    data = rng.normal(120, 25, (4, 96, 96)).clip(1, 255).astype(np.uint8)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=data.shape, chunks=(2, 48, 48), dtype="uint8")[:] = data
    y, x = np.ogrid[:96, :96]
    data[:, (y - 47.5) ** 2 + (x - 47.5) ** 2 > 48**2] = 0
    ct = tmp_path / "ct.zarr"
    zarr.create_array(str(ct), shape=data.shape, chunks=(2, 48, 48), dtype="uint8")[:] = data
    for source, expected in ((plain, 0), (ct, 1)):
        args = ["segment", source, "-o", tmp_path / f"{source.stem}-out.zarr", "--weights", random_weights]
        assert run([*args, "--model", "cheap", "--quiet"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  fill ")]
        assert len(lines) == expected, lines
    assert "22 % of the voxels hold one value, 0 (the volume's minimum)" in lines[0]
    report = json.loads((tmp_path / "ct-out.zarr" / "matseg-report.json").read_text())
    assert report["normalization"]["fill"] == {
        "value": 0.0,
        "share": pytest.approx(0.215, abs=0.01),
        "end": "minimum",
    }
