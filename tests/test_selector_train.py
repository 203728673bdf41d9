"""`matseg train-selector` on a lab's own weights: refused before any candidate runs when the
tiles are too few, and honest about what its default λ was compared with."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import run
from .test_bad_input import snapshot


def _no_candidate_runs(monkeypatch):
    import matseg.selector.train

    def tile_table(*args, **kwargs):
        raise AssertionError("the candidates ran on the tiles")

    monkeypatch.setattr(matseg.selector.train, "tile_table", tile_table)


@pytest.mark.parametrize(
    ("shape", "tile", "slices", "suggested"),
    [
        (None, "16,64,64", None, "--tile 1,64,64 for a stack of separate 2-D images"),  # one tile
        (None, "4,64,64", "0,1", "--tile 1,64,64"),  # four tiles, one of them labelled
        (None, "4,64,64", "0", "label more slices or give more volumes"),  # no tile gives two
        ((128, 128), "128,128", None, "--tile 64,64,"),  # a 2-D image: half as wide
    ],
)
def test_too_few_tiles_are_refused_before_any_candidate_runs(
    tmp_path, small_sample, random_weights, capsys, monkeypatch, shape, tile, slices, suggested
):
    """A stack that the tile holds whole (8 x 256 x 256 at the default tile: every candidate
    run on it, on real data for long, then 'needs at least 2 labelled tiles'): one line, exit 2,
    at once, with a tile that gives more where one does."""
    from matseg.sample import write_sample

    image = small_sample
    if shape:
        image = tmp_path / "image.zarr"
        write_sample(image, shape, seed=5)
    folder = tmp_path / "w"
    shutil.copytree(random_weights, folder)
    before = snapshot(tmp_path)
    _no_candidate_runs(monkeypatch)
    args = ["train-selector", image, "--weights", folder, "--tile", tile, "--steps", "5"]
    code = run([*args, *(["--slices", slices] if slices else [])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "into 1 labelled tile" in err and "at least 2" in err and suggested in err
    assert snapshot(tmp_path) == before


def test_default_lambda_names_the_candidate_it_was_compared_with(
    tmp_path, small_sample, random_weights, capsys
):
    """A folder of the cheap net alone (``train --model cheap``) has no expensive net to be
    within 0.01 mIoU of: the default λ is picked against the most accurate candidate present,
    and the line and the record name it."""
    folder = tmp_path / "cheap-only"
    folder.mkdir()
    shutil.copy2(random_weights / "cheap.pt", folder / "cheap.pt")
    manifest = json.loads((random_weights / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({"cheap": manifest["cheap"]}))
    args = ["train-selector", small_sample, "--weights", folder, "--tile", "4,64,64", "--steps", "5"]
    assert run(args) == 0
    err = capsys.readouterr().err
    record = json.loads((folder / "manifest.json").read_text())["selector"]
    assert record["candidates"] == ["cheap", "classical"]
    best = max(record["candidates"], key=lambda name: record["mean_tile_iou"][name])
    assert record["default_lambda_reference"] == best
    assert record["default_lambda_curve"][0] == {**record["default_lambda_curve"][0], "lambda": None}
    assert f"mIoU of all-{best} on its training tiles" in err and "all-expensive" not in err
