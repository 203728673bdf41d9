"""The run-time audit: the reference on a stratified sample of cells, its answer kept, and
the report's estimate of the change against an all-reference run."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import matseg
from matseg.pipeline.audit import AUDIT_CELL, TEMPERATURES, AuditPlan, stats_width
from matseg.pipeline.confidence import estimate_change
from matseg.sample import write_sample
from matseg.synth import SampleConfig

from .test_bad_input import assert_refused


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "s.zarr"
    write_sample(path, (8, 192, 192), 11, SampleConfig(profile="test"))
    return path


def test_the_report_estimates_the_change_and_the_reference_answer_is_kept(volume, tmp_path):
    report = matseg.segment(volume, tmp_path / "o.zarr", audit_fraction=0.05, lam=0.5, tolerance=None)
    estimate = report["estimate"]
    low, high = estimate["ci95"]
    assert low <= estimate["delta_miou"] <= high and high - low > 0
    assert estimate["audited_cells"] >= 2 and estimate["reference"] == "expensive"
    assert sum(p["value"] for p in estimate["phase_fractions"].values()) == pytest.approx(1.0)
    assert report["gflops_breakdown"]["audit"] > 0
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    cells = root["audit/cells"][:]
    expensive = report["candidates"].index("expensive")
    decisions, phases = root["labels/decisions/0"], root["labels/phases/0"]
    ref = matseg.segment(volume, tmp_path / "e.zarr", model="expensive")
    assert ref["model"] == "expensive"
    whole = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["labels/phases/0"]
    agree = []
    for _, z, y0, x0, h, w in cells:
        where = (z, slice(y0, y0 + h), slice(x0, x0 + w))
        assert (decisions[where] == expensive).all()
        agree.append((phases[where] == whole[where]).mean())
    # the reference on a cell with a smaller halo: the whole run's answer almost everywhere
    assert np.mean(agree) > 0.97


def test_the_same_seed_draws_the_same_cells_and_no_audit_leaves_no_estimate(volume, tmp_path):
    a = matseg.segment(volume, tmp_path / "a.zarr", audit_fraction=0.05, lam=0.5, tolerance=None)
    b = matseg.segment(volume, tmp_path / "b.zarr", audit_fraction=0.05, lam=0.5, tolerance=None)
    cells = [zarr.open_group(str(tmp_path / n), mode="r")["audit/cells"][:] for n in ("a.zarr", "b.zarr")]
    assert np.array_equal(*cells) and a["estimate"] == b["estimate"]
    none = matseg.segment(volume, tmp_path / "n.zarr", audit_fraction=0.0, lam=0.5)
    assert "estimate" not in none and "audit" not in none["gflops_breakdown"]


def test_a_run_that_agrees_with_the_reference_is_estimated_at_no_change():
    k, n = 3, 6
    stats = np.zeros((n, stats_width(k)))
    rng = np.random.default_rng(0)
    for i in range(n):
        cm = np.diag(rng.uniform(100, 400, k)) + rng.uniform(0, 20, (k, k))
        stats[i, 1 + 2 * k :] = np.tile(cm.ravel(), 2 * len(TEMPERATURES))  # run == reference
    cells = np.array([[0, 0, 0, AUDIT_CELL * i, AUDIT_CELL, AUDIT_CELL] for i in range(n)])
    audit = AuditPlan(
        cells, np.array([0, 0, 0, 1, 1, 1]), np.array([50, 80]), np.array([3, 3]), 2, np.array([0, 1])
    )
    out = estimate_change(audit, stats, np.array([1000, 500, 800]), ("a", "b", "c"), "expensive")
    assert out["delta_miou"] == pytest.approx(0.0, abs=1e-12)
    assert out["ci95"][0] == pytest.approx(0.0, abs=1e-12) and out["ci95"][1] == pytest.approx(0.0, abs=1e-12)


def test_a_run_worse_than_the_reference_is_estimated_below_it():
    k, n = 3, 8
    stats = np.zeros((n, stats_width(k)))
    good = np.diag([300.0, 300.0, 300.0])
    bad = good.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0  # the run calls half of phase 0 phase 1
    for i in range(n):
        stats[i, 1 + 2 * k :] = np.tile(np.concatenate([bad.ravel(), good.ravel()]), len(TEMPERATURES))
    cells = np.array([[0, 0, 0, AUDIT_CELL * i, AUDIT_CELL, AUDIT_CELL] for i in range(n)])
    audit = AuditPlan(cells, np.zeros(n, int), np.array([100]), np.array([n]), 2, np.array([0]))
    out = estimate_change(audit, stats, np.zeros(k), ("a", "b", "c"), "expensive")
    assert out["ci95"][1] < 0 and out["delta_miou"] < -0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "nonsense"], "--reference nonsense"),
        (["--audit-fraction", "1.5"], "--audit-fraction"),
    ],
)
def test_bad_audit_options_are_one_line_and_exit_2(volume, tmp_path, args, message, capsys):
    assert_refused(tmp_path, ["segment", volume, "-o", tmp_path / "o.zarr", *args], capsys, message)


def test_a_budget_caps_the_audit_too(volume, tmp_path):
    dry = matseg.segment(volume, tmp_path / "d.zarr", dry_run=True, lam=0.5)
    budget = dry["cheap_pass_gflops"] * 1.02
    report = matseg.segment(volume, tmp_path / "b.zarr", budget_gflops=budget)
    assert report["gflops"] <= budget
    assert "skipped" in report["estimate"] and "audit" not in report["gflops_breakdown"]
