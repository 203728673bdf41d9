"""`matseg batch`: many volumes from a manifest or a glob; finished outputs are skipped."""

from __future__ import annotations

import json

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
    (tmp_path / "out").mkdir()
    # a run of scan2 that was killed: started again; paths in a manifest are relative to it
    zarr.open_group(str(tmp_path / "out" / "scan2.zarr"), mode="w").attrs["matseg"] = {
        "status": "running",
        "input": {"source": str(scans / "scan2.zarr")},
    }
    common = ["--weights", random_weights, "--model", "cheap", "--tile", "4,64,64"]
    assert run(["batch", manifest, "--index", 1, *common]) == 0, capsys.readouterr().err
    assert "1 done" in capsys.readouterr().out
    assert _state(tmp_path / "out" / "scan2.zarr") == "complete"
    assert not (tmp_path / "out" / "scan1.zarr").exists()  # only job 1 ran
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        f"input,output\n{scans / 'scan1.zarr'},out/scan1.zarr\n{scans / 'scan2.zarr'},out/scan2.zarr\n"
    )
    assert run(["batch", csv, *common]) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().out


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
