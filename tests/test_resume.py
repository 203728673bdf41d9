"""Killed at any moment (kill -9), the same command resumes and ends with an uninterrupted run's output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from matseg.io.lock import lock_path

from .conftest import run

ARRAYS = ("0", "labels/phases/0", "labels/decisions/0")
SELECTOR_ARRAYS = ("selector/features", "selector/gain", "selector/choice")
# what differs between two runs of the same work: when and where it ran, and the output's name
RUN_SPECIFIC = ("timings", "run", "output", "command")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from matseg.sample import write_sample

    path = tmp_path_factory.mktemp("resume") / "volume.zarr"
    write_sample(path, (16, 256, 256), seed=5)
    return path


def _args(volume, out, weights, *extra):
    """``weights`` None: the bundled ones (slow enough to be killed in the middle of either stage)."""
    chosen = ["--weights", weights] if weights else []
    return ["segment", volume, "-o", out, *chosen, "--tile", "4,64,64", "--quiet", *extra]


def _done_rows(out) -> int:
    """Finished tiles recorded so far, over every stage."""
    try:
        progress = zarr.open_group(str(out), mode="r")["progress"]
        return sum(int((~np.isnan(a[:, 0])).sum()) for _, a in progress.arrays())
    except Exception:  # not created yet
        return 0


def _kill_after(args, out, rows: int, timeout: float = 120.0) -> bool:
    """Start the command in a child process and kill -9 it once ``rows`` tiles are recorded.

    Returns whether it was killed (False: it finished first).
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "matseg.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        if _done_rows(out) >= rows:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait()
    if child.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(child.stderr.read().decode())
    return child.returncode == -signal.SIGKILL


def _same_output(a, b, arrays) -> None:
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in arrays:
        np.testing.assert_array_equal(ra[name][:], rb[name][:], err_msg=name)
    reports = [json.loads((p / "matseg-report.json").read_text()) for p in (a, b)]
    for report in reports:
        for key in RUN_SPECIFIC:
            report.pop(key)
    assert reports[0] == reports[1]


def _reference(tmp_path_factory, volume, weights, *extra):
    """An uninterrupted run of the same command (same --workers: torch threads change float rounding)."""
    out = tmp_path_factory.mktemp("reference") / "phases.zarr"
    assert run(_args(volume, out, weights, *extra)) == 0
    report = json.loads((out / "matseg-report.json").read_text())
    return out, report


SELECTOR = (
    "--max-expensive-fraction",
    "0.5",
    "--tolerance",
    "0.01",
)  # a mix of candidates: every stage has work


@pytest.fixture(scope="module")
def selector_reference(tmp_path_factory, volume):
    return _reference(tmp_path_factory, volume, None, *SELECTOR, "--workers", "1")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_selector_run_killed_at_a_random_point_resumes_to_the_same_output(
    tmp_path, volume, selector_reference, seed, capsys
):
    reference, report = selector_reference
    tiles = report["tiles"]
    attrs = zarr.open_group(str(reference), mode="r").attrs["matseg"]
    rewritten, audited = len(attrs["rewritten"]), len(attrs["audited"])
    assert len([n for n in report["decisions"].values() if n]) > 1 and rewritten > 0 and audited > 0
    # a random point over every stage: the cheap pass, the audit, the candidates, the audited
    # cells' writes (none in tiles the tolerance sent to the reference whole)
    total = _done_rows(reference)
    assert tiles + audited + rewritten <= total <= tiles + 2 * audited + rewritten
    rows = int(np.random.default_rng(seed).integers(1, total - 1))
    out = tmp_path / "phases.zarr"
    args = _args(volume, out, None, *SELECTOR, "--workers", "1")
    assert _kill_after(args, out, rows), "the run finished before it could be killed"
    assert lock_path(out).exists()  # kill -9 leaves its lock behind: the next run takes it over
    left = _done_rows(out)
    assert rows <= left < total

    assert run(args) == 0  # the same command, no --overwrite
    captured = capsys.readouterr()
    assert "resumed" in captured.err and "resumed" in captured.out
    resumed = json.loads((out / "matseg-report.json").read_text())["run"]
    assert resumed["started_as"] == "resume"
    computed = resumed["computed_tiles"]
    assert sum(computed.values()) == total - left  # only missing tiles
    _same_output(out, reference, ARRAYS + SELECTOR_ARRAYS)
    assert not lock_path(out).exists()


def test_a_run_made_layer_group_by_layer_group_gives_the_same_output(
    tmp_path, volume, selector_reference, monkeypatch
):
    """Each stage makes its tasks for one group of whole layers of tiles at a time (what is
    alive at once is bounded by the group, not by the volume): a group per layer of tiles
    gives the uninterrupted run's output voxel for voxel."""
    from matseg.cluster import Backend

    reference, report = selector_reference
    layer = report["grid"][1] * report["grid"][2]
    monkeypatch.setattr(Backend, "group_tiles", property(lambda self: layer + 1))
    made, compute_groups = [], Backend.compute_groups

    def counted(self, groups, total, progress=False):
        return compute_groups(self, (made.append(len(tasks)) or tasks for tasks in groups), total, progress)

    monkeypatch.setattr(Backend, "compute_groups", counted)
    out = tmp_path / "phases.zarr"
    assert run(_args(volume, out, None, *SELECTOR, "--workers", "1")) == 0
    _same_output(out, reference, ARRAYS + SELECTOR_ARRAYS)
    attrs = zarr.open_group(str(reference), mode="r").attrs["matseg"]
    rewritten, audited = len(attrs["rewritten"]), len(attrs["audited"])
    layers = report["grid"][0]
    assert made[:layers] == [layer] * layers  # the cheap pass, a layer at a time
    written = int(
        (~np.isnan(zarr.open_group(str(reference), mode="r")["progress/audit-written"][:, 0])).sum()
    )
    # then the audited tiles, the rewritten ones and the audited cells' writes, a layer at a
    # time (the seam score last)
    later = made[layers:-1]
    assert (
        sum(later) == audited + rewritten + written and 2 < len(later) <= 3 * layers and max(later) <= layer
    )


def test_single_model_run_resumes_to_the_same_output(tmp_path_factory, tmp_path, volume, random_weights):
    reference, report = _reference(
        tmp_path_factory, volume, random_weights, "--model", "expensive", "--workers", "1"
    )
    out = tmp_path / "phases.zarr"
    args = _args(volume, out, random_weights, "--model", "expensive", "--workers", "1")
    assert _kill_after(args, out, report["tiles"] // 3)
    assert run(args) == 0
    run_info = json.loads((out / "matseg-report.json").read_text())["run"]
    assert 0 < run_info["computed_tiles"]["tiles"] < report["tiles"]
    _same_output(out, reference, ARRAYS)


def test_unfinished_run_of_other_settings_needs_overwrite(tmp_path, volume, random_weights, capsys):
    from .test_bad_input import snapshot

    out = tmp_path / "phases.zarr"
    args = _args(volume, out, random_weights, "--max-expensive-fraction", "0.5", "--workers", "1")
    assert _kill_after(args, out, 3)
    before = snapshot(tmp_path)
    other = _args(volume, out, random_weights, "--max-expensive-fraction", "0.25")
    assert run(other) == 2
    err = capsys.readouterr().err
    assert "unfinished matseg run with other settings (max_expensive_fraction)" in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before  # nothing lost or changed
    audit = _args(volume, out, random_weights, "--max-expensive-fraction", "0.5", "--tolerance", "0.02")
    assert run(audit) == 2  # a member of the audit's settings is named, not just "audit"
    assert "other settings (audit tolerance)" in capsys.readouterr().err
    assert run([*other, "--overwrite"]) == 0
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["selector"]["max_expensive_fraction"] == 0.25


@pytest.mark.parametrize("error", ["gpu", "host"])
def test_out_of_memory_is_one_line_and_the_run_resumes(
    tmp_path, volume, random_weights, monkeypatch, capsys, error
):
    """A GPU (or the machine) out of memory mid-run: one line, exit code 1, the finished
    tiles kept; the same command then resumes to an uninterrupted run's output."""
    import torch

    from matseg.candidates import registry as candidates

    out, whole = tmp_path / "o.zarr", tmp_path / "whole.zarr"
    assert run(_args(volume, whole, random_weights, "--model", "cheap", "--workers", "1")) == 0
    segment_probs, calls = candidates.segment_probs, []

    def runs_out(model, tile, *batching):
        calls.append(1)
        if len(calls) > 3 and error == "gpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(calls) > 3:
            raise MemoryError()
        return segment_probs(model, tile, *batching)

    monkeypatch.setattr(candidates, "segment_probs", runs_out)
    args = _args(volume, out, random_weights, "--model", "cheap", "--workers", "1")
    capsys.readouterr()
    assert run(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "ran out of memory" in err[0] and "Traceback" not in err[0], err
    assert ("the GPU" in err[0]) == (error == "gpu")
    assert _done_rows(out) == 3  # the tiles finished before it are kept
    monkeypatch.setattr(candidates, "segment_probs", segment_probs)
    assert run(args) == 0
    for name in ARRAYS:
        a, b = zarr.open_group(str(out), mode="r")[name][:], zarr.open_group(str(whole), mode="r")[name][:]
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_default_lambda_spelt_out_is_the_same_run(tmp_path, volume, random_weights, capsys):
    """--lambda at the selector's own default asks for the run the default made: a no-op."""
    out = tmp_path / "phases.zarr"
    assert run(_args(volume, out, random_weights)) == 0
    lam = json.loads((out / "matseg-report.json").read_text())["selector"]["lambda"]
    capsys.readouterr()
    assert run([*_args(volume, out, random_weights), "--lambda", str(lam)]) == 0
    assert "nothing computed now" in capsys.readouterr().out
