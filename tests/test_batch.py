"""`matseg batch`: many volumes from a manifest or a glob; finished outputs are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr

from matseg.sample import write_sample

from .conftest import run
from .test_bad_input import snapshot


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    for seed in (1, 2):
        write_sample(folder / f"scan{seed}.zarr", (4, 64, 64), seed=seed)
    return folder


def _state(output):
    return zarr.open_group(str(output), mode="r").attrs["matseg"]["status"]


def test_glob_runs_every_input_then_skips_finished_ones(tmp_path, scans, random_weights, capsys):
    args = ["batch", "--glob", f"{scans}/*.zarr", "--output-dir", tmp_path / "out"]
    args += ["--weights", random_weights, "--model", "cheap", "--tile", "4,64,64"]
    assert run(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "2 done, 0 skipped, 0 failed" in captured.out
    assert captured.err.count("matseg: done ") == 2  # the library's log lines, shown by default
    assert "matseg: job 2 of 2: " in captured.err  # what the lines after it belong to
    outputs = sorted((tmp_path / "out").glob("*-phases.zarr"))
    assert [p.name for p in outputs] == ["scan1-phases.zarr", "scan2-phases.zarr"]
    assert all(_state(p) == "complete" for p in outputs)
    before = snapshot(tmp_path / "out")
    assert run(args) == 0
    captured = capsys.readouterr()
    assert "0 done, 2 skipped" in captured.out
    assert captured.err.count("matseg: skip ") == 2
    assert snapshot(tmp_path / "out") == before  # nothing recomputed or rewritten


def test_glob_into_its_own_folder_skips_matseg_outputs(tmp_path, scans, random_weights, capsys):
    """Outputs written next to the inputs match the glob the second time: they are no input."""
    import shutil

    folder = tmp_path / "scans"
    shutil.copytree(scans, folder)
    args = ["batch", "--glob", f"{folder}/*.zarr", "--output-dir", folder]
    args += ["--weights", random_weights, "--model", "cheap", "--tile", "4,64,64"]
    assert run(args) == 0 and "2 done" in capsys.readouterr().out
    assert run(args) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert not list(folder.glob("*-phases-phases.zarr"))


def test_manifest_index_and_unfinished_outputs(tmp_path, scans, random_weights, capsys):
    manifest = tmp_path / "jobs.yaml"
    jobs = [{"input": str(scans / f"scan{s}.zarr"), "output": f"out/scan{s}.zarr"} for s in (1, 2)]
    manifest.write_text(json.dumps(jobs))  # JSON is YAML
    common = ["--weights", random_weights, "--model", "cheap", "--tile", "4,64,64"]
    # a run of scan2 that was killed half-way: resumed; paths in a manifest are relative to it
    output = tmp_path / "out" / "scan2.zarr"
    assert run(["segment", scans / "scan2.zarr", "-o", output, *common]) == 0
    root = zarr.open_group(str(output), mode="r+")
    root.attrs["matseg"] = {**root.attrs["matseg"], "status": "running"}
    assert run(["batch", manifest, "--index", 1, *common]) == 0, capsys.readouterr().err
    assert "1 done" in capsys.readouterr().out
    assert _state(output) == "complete"
    assert not (tmp_path / "out" / "scan1.zarr").exists()  # only job 1 ran
    csv = tmp_path / "jobs.csv"  # as a spreadsheet saves it: a byte-order mark, spaces after commas
    csv.write_text(
        f"\ufeffinput, output\n{scans / 'scan1.zarr'}, out/scan1.zarr\n"
        f"{scans / 'scan2.zarr'},out/scan2.zarr\n"
    )
    assert run(["batch", csv, "--count"]) == 0 and capsys.readouterr().out.strip() == "2"
    assert run(["batch", csv, *common]) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().out


def test_outputs_of_other_settings_are_neither_skipped_nor_replaced(tmp_path, scans, random_weights, capsys):
    """A finished or unfinished output of other settings fails its job (it is not skipped as done,
    nor thrown away); --overwrite replaces it; a bad option stops the batch before any job."""
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps([{"input": str(scans / "scan1.zarr"), "output": "scan1-phases.zarr"}]))
    common = ["--weights", random_weights, "--tile", "4,64,64"]
    assert run(["batch", manifest, "--model", "cheap", *common]) == 0
    capsys.readouterr()
    output = tmp_path / "scan1-phases.zarr"
    before = snapshot(output)
    assert run(["batch", manifest, "--model", "expensive", *common]) == 2
    err = capsys.readouterr().err
    assert "finished run with other settings: candidates, halo, model" in err and "pass --overwrite" in err
    assert snapshot(output) == before
    root = zarr.open_group(str(output), mode="r+")  # as if killed half-way
    root.attrs["matseg"] = {**root.attrs["matseg"], "status": "running"}
    before = snapshot(output)
    assert run(["batch", manifest, "--model", "expensive", *common]) == 2
    assert "unfinished matseg run with other settings (" in capsys.readouterr().err
    assert snapshot(output) == before
    for bad, message in [
        (["--model", "cheap", "--lambda", "0.05"], "--lambda only applies with --model auto"),
        (["--lambda", "7"], "--lambda must be"),
        (["--weights", tmp_path / "nowhere"], "has no manifest.json"),
        (["--weights", tmp_path], "has no manifest.json"),  # a folder, not of weights
    ]:
        assert run(["batch", manifest, "--tile", "4,64,64", *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert snapshot(output) == before
    assert run(["batch", manifest, "--model", "expensive", "--overwrite", *common]) == 0
    assert "1 done" in capsys.readouterr().out
    assert zarr.open_group(str(output), mode="r").attrs["matseg"]["settings"]["model"] == "expensive"
    before = snapshot(output)  # with --overwrite too, a finished run of these settings is skipped
    assert run(["batch", manifest, "--model", "expensive", "--overwrite", *common]) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out and snapshot(output) == before


def test_glob_names_keep_the_dots_of_a_name_and_tell_formats_apart(tmp_path):
    from matseg.batch import glob_jobs

    for name in ("a.v1.zarr", "a.v2.zarr", "scan.zarr", "scan.h5", "img.ome.tif"):
        (tmp_path / name).write_bytes(b"")
    names = sorted(Path(out).name for _, out in glob_jobs(str(tmp_path / "*"), tmp_path / "out"))
    assert names == [
        "a.v1-phases.zarr", "a.v2-phases.zarr", "img-phases.zarr", "scan-h5-phases.zarr",
        "scan-zarr-phases.zarr",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "must list jobs"),
        ('[{"input": "a.zarr"}]', "needs both 'input' and 'output'"),
        ('[{"input": "a.zarr", "outptu": "b.zarr"}]', "needs both 'input' and 'output' (it has 'outptu')"),
        (
            '[{"input": "a.zarr", "output": "o.zarr"}, {"input": "b.zarr", "output": "o.zarr"}]',
            "o.zarr; give each job its own output",
        ),
        (": : :", "cannot be parsed"),
    ],
)
def test_bad_manifest(tmp_path, content, message, capsys):
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(content)
    assert run(["batch", manifest]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert run(["batch", tmp_path]) == 2
    assert "is a folder; give a YAML or CSV file" in capsys.readouterr().err


def test_failed_job_is_reported_and_the_others_run(tmp_path, scans, random_weights, capsys):
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        json.dumps(
            [
                {"input": "missing.zarr", "output": "a.zarr"},
                {"input": str(scans / "scan1.zarr"), "output": "b.zarr"},
            ]
        )
    )
    code = run(["batch", manifest, "--weights", random_weights, "--model", "cheap", "--tile", "4,64,64"])
    assert code == 2
    assert "1 of 2 jobs failed" in capsys.readouterr().err
    assert _state(tmp_path / "b.zarr") == "complete"
