"""`matseg sample`: the contract scripts rely on."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from .conftest import run


@pytest.mark.parametrize("shape", [(6, 40, 48), (40, 48)])
def test_sample_writes_ome_image_and_truth(tmp_path, shape):
    out = tmp_path / "s.zarr"
    assert run(["sample", out, "--shape", *shape, "--seed", 5]) == 0
    root = zarr.open_group(str(out), mode="r")
    assert "multiscales" in root.attrs["ome"]
    assert root["0"].shape == shape and root["0"].dtype == np.uint8
    truth = root["labels/truth/0"]
    assert truth.shape == shape and set(np.unique(truth[:])) == {0, 1, 2}
    assert root["labels"].attrs["ome"]["labels"] == ["truth"]
    names = [p["name"] for p in root["labels/truth"].attrs["ome"]["image-label"]["properties"]]
    assert names == ["pore", "carbon-binder", "active"]
    again = tmp_path / "again.zarr"
    assert run(["sample", again, "--shape", *shape, "--seed", 5]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(again), mode="r")["0"][:], root["0"][:])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", "10"], "--shape takes 2"),
        (["--shape", "1", "2", "3", "4"], "--shape takes 2"),
        (["--shape", "0", "32"], "positive"),
        (["--shape", "-1", "64", "64"], "positive integers, e.g. 32 256 256; got -1 64 64"),
        (["--shape", "32", "-64", "64"], "positive integers, e.g. 32 256 256; got 32 -64 64"),
        (["--shape", "1.5", "64", "64"], "positive integers, e.g. 32 256 256; got 1.5 64 64"),
        (["--shape=-1,64,64"], "positive integers, e.g. 32 256 256; got -1 64 64"),
    ],
)
def test_sample_bad_shape(tmp_path, capsys, args, message):
    assert run(["sample", tmp_path / "s.zarr", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.zarr").exists()


def test_sample_bad_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("particle_radius: 3\n")
    assert run(["sample", tmp_path / "s.zarr", "--shape", "8", "8", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "unknown SampleConfig key" in err and len(err.strip().splitlines()) == 1


def test_a_sample_the_disk_cannot_hold_is_refused_at_once(tmp_path, capsys):
    """Refused before anything is planned: a graph of every block of such a volume would fill memory."""
    code = run(["sample", tmp_path / "huge.zarr", "--shape", "100000", "100000", "100000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs up to 6,000,000.0 GB" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())
