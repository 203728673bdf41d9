"""The run-time audit: the reference on a stratified sample of cells, its answer kept, and
the report's estimate of the change against an all-reference run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import zarr

import matseg
from matseg.cli import main
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
    used = [name for name, tiles in report["decisions"].items() if tiles]  # one tile: one candidate
    assert estimate["every_tile"] == used[0] and estimate["fixed"][used[0]]["gflops"] > 0
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
    # had every tile gone to the reference, at more than all-expensive's GFLOPs, the summary says
    # that the reference alone was cheaper
    from matseg.console import format_report

    assert "--model expensive alone gives these labels" not in format_report(report)
    dearer = {**report, "gflops_fraction_of_all_expensive": 1.156}
    dearer["estimate"] = {**estimate, "every_tile": "expensive", "moved_tiles": {"medium->expensive": 4}}
    assert "--model expensive alone gives these labels for 87 % of this run's GFLOPs" in format_report(dearer)


def test_the_same_seed_draws_the_same_cells_and_no_audit_leaves_no_estimate(volume, tmp_path):
    a = matseg.segment(volume, tmp_path / "a.zarr", audit_fraction=0.05, lam=0.5, tolerance=None)
    b = matseg.segment(volume, tmp_path / "b.zarr", audit_fraction=0.05, lam=0.5, tolerance=None)
    cells = [zarr.open_group(str(tmp_path / n), mode="r")["audit/cells"][:] for n in ("a.zarr", "b.zarr")]
    assert np.array_equal(*cells) and a["estimate"] == b["estimate"]
    none = matseg.segment(volume, tmp_path / "n.zarr", audit_fraction=0.0, lam=0.5)
    assert "estimate" not in none and "audit" not in none["gflops_breakdown"]


def _evidence(run: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """``n`` cells' numbers where candidate 0 (the run's) has the expected confusion matrix
    ``run`` and candidate 1 (the reference) ``ref``, at every temperature."""
    k = len(ref)
    stats = np.zeros((n, stats_width(k, 2)))
    conf = np.stack([run.ravel(), ref.ravel()])  # (candidate, k*k)
    stats[:, 1:] = np.tile(conf.ravel(), len(TEMPERATURES))
    return stats


def _plan(strata: list[int], population: list[int]) -> AuditPlan:
    n = len(strata)
    cells = np.array([[0, 0, 0, AUDIT_CELL * i, AUDIT_CELL, AUDIT_CELL] for i in range(n)])
    sampled = np.bincount(strata)
    h = len(population)
    return AuditPlan(
        cells,
        np.array(strata),
        np.array(population),
        sampled,
        1,
        np.arange(h),
        np.zeros(h, int),
        np.array([0, 1]),
    )


def test_a_run_that_agrees_with_the_reference_is_estimated_at_no_change():
    cm = np.diag([300.0, 200.0, 250.0]) + 10.0
    audit = _plan([0, 0, 0, 1, 1, 1], [50, 80])
    out = estimate_change(
        audit, _evidence(cm, cm, 6), np.array([1000, 500, 800]), ("a", "b", "c"), "expensive"
    )
    assert out["delta_miou"] == pytest.approx(0.0, abs=1e-12)
    assert out["ci95"][0] == pytest.approx(0.0, abs=1e-12) and out["ci95"][1] == pytest.approx(0.0, abs=1e-12)


def test_a_run_worse_than_the_reference_is_estimated_below_it_and_moving_it_closes_the_gap():
    good = np.diag([300.0, 300.0, 300.0])
    bad = good.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0  # the run calls half of phase 0 phase 1
    audit = _plan([0] * 8, [100])
    stats = _evidence(bad, good, 8)
    out = estimate_change(audit, stats, np.zeros(3), ("a", "b", "c"), "expensive")
    assert out["ci95"][1] < 0 and out["delta_miou"] < -0.1
    moved = estimate_change(audit, stats, np.zeros(3), ("a", "b", "c"), "expensive", assigned=[1])
    assert moved["delta_miou"] == pytest.approx(0.0, abs=1e-12)


def test_the_tolerance_moves_the_losing_stratum_and_keeps_the_other():
    """Two strata on the cheap candidate: one loses half a phase, the other nothing. With a
    tolerance the losing one goes to the reference, the other stays; without one, nothing."""
    from matseg.pipeline.escalate import plan_escalation

    good = np.diag([300.0, 300.0, 300.0])
    bad = good.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0
    stats = np.concatenate([_evidence(bad, good, 4), _evidence(good, good, 4)])
    audit = _plan([0] * 4 + [1] * 4, [40, 40])

    def cost_of(assigned):
        return sum(10.0 if c == 1 else 1.0 for c in assigned)

    assigned, predicted = plan_escalation(audit, stats, np.zeros(3), ("a", "b", "c"), "e", 0.01, cost_of)
    assert assigned == [1, 0] and predicted["ci95"][0] >= -0.01
    loose, _ = plan_escalation(audit, stats, np.zeros(3), ("a", "b", "c"), "e", 0.5, cost_of)
    assert loose == [0, 0]  # within a loose tolerance the plan stands
    capped, _ = plan_escalation(
        audit, stats, np.zeros(3), ("a", "b", "c"), "e", 0.01, cost_of, fits=lambda a: sum(a) == 0
    )
    assert capped == [0, 0]  # a budget that allows no move


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "nonsense"], "--reference nonsense"),
        (["--audit-fraction", "1.5"], "--audit-fraction"),
        (["--tolerance", "lots"], "--tolerance"),
        (["--tolerance", "2"], "--tolerance"),
        (["--model", "medium", "--tolerance", "0.01"], "--tolerance only applies with --model auto"),
        (
            ["--model", "cheap", "--reference", "medium", "--no-recalibrate"],
            "--reference and --no-recalibrate only apply with --model auto",
        ),
        (["--model", "expensive", "--audit-fraction", "0.1"], "--audit-fraction only applies"),
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


def test_the_tolerance_moves_tiles_until_the_interval_keeps_it(volume, tmp_path):
    """An all-cheap plan loses more than 0.01 here; a tolerance of 0.01 moves the losing
    strata to costlier candidates until the interval stays within it, and says so."""
    thrifty = matseg.segment(volume, tmp_path / "t.zarr", lam=1.0, truth=volume)
    assert thrifty["estimate"]["ci95"][0] < -0.01 and "tolerance" not in thrifty["estimate"]
    kept = matseg.segment(volume, tmp_path / "k.zarr", lam=1.0, tolerance=0.01, truth=volume)
    estimate = kept["estimate"]
    assert estimate["tolerance"] == 0.01 and estimate["moved_tiles"]
    assert estimate["within_tolerance"] and estimate["ci95"][0] >= -0.01
    assert kept["gflops"] > thrifty["gflops"] and kept["metrics"]["miou"] > thrifty["metrics"]["miou"]
    root = zarr.open_group(str(tmp_path / "k.zarr"), mode="r")
    decision = root.attrs["matseg"]["escalation"]
    moved = sum(decision["moved_tiles"].values())
    assert moved == sum(n for k, n in kept["decisions"].items() if k != "cheap") - thrifty_costly(thrifty)
    # the selector's own plan is kept as it was; the decision says what the run made of it
    assert np.array_equal(
        root["selector/choice"][:], zarr.open_group(str(tmp_path / "t.zarr"))["selector/choice"][:]
    )


def thrifty_costly(report: dict) -> int:
    return sum(n for k, n in report["decisions"].items() if k != "cheap")


def test_a_dry_run_expects_what_the_tolerance_will_spend(volume, tmp_path):
    out = tmp_path / "d.zarr"
    dry = matseg.segment(volume, out, lam=1.0, dry_run=True, tolerance=0.01)
    expected = dry["expected"]
    assert expected["escalation"]["moved_tiles"] and expected["audit_gflops"] > 0
    real = matseg.segment(volume, out, lam=1.0, tolerance=0.01)
    assert real["run"]["cheap_pass_reused"] and real["run"]["started_as"] == "after-dry-run"
    from matseg.console import format_report

    assert "continued  from its dry run" in format_report(real) and "resumed" not in format_report(real)
    assert real["run"]["computed_tiles"]["audit"] == 0  # the dry run's audit stands
    assert real["gflops_breakdown"]["audit"] == pytest.approx(expected["audit_gflops"])
    assert real["decisions"] == dry["decisions"]
    assert abs(real["gflops"] - expected["gflops"]) <= 0.02 * real["gflops"]


def test_no_recalibration_keeps_the_selectors_plan(volume, tmp_path):
    out = tmp_path / "o.zarr"
    main(
        ["segment", str(volume), "-o", str(out), "--lambda", "0.5", "--tolerance", "off", "--no-recalibrate"]
    )
    report = json.loads((out / "matseg-report.json").read_text())
    assert "tolerance" not in report["estimate"] and "moved_tiles" not in report["estimate"]
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["matseg"]["escalation"] is None
    chosen = np.bincount(root["selector/choice"][:], minlength=len(report["candidates"]))
    assert {n: c for n, c in report["decisions"].items() if c} == {
        n: int(c) for n, c in zip(report["candidates"], chosen) if c
    }


GOOD = np.diag([300.0, 300.0, 300.0])  # a cell's confusion where the answer is the reference's


def _three_candidates(cheap_confusions, choice) -> tuple:
    """``plan_recalibration``'s first arguments for an audit of cheap, medium and the reference
    (GFLOPs 1, 3 and 10 a stratum), one stratum per cheap confusion (4 cells each; medium
    always right), the selector having chosen ``choice``; and the cost function."""
    n = len(cheap_confusions)
    stats = np.zeros((4 * n, stats_width(3, 3)))
    for h, cheap in enumerate(cheap_confusions):
        conf = np.stack([cheap.ravel(), GOOD.ravel(), GOOD.ravel()])  # cheap, medium, reference
        stats[4 * h : 4 * h + 4, 1:] = np.tile(conf.ravel(), len(TEMPERATURES))
    audit = replace(
        _plan([h for h in range(n) for _ in range(4)], [40] * n),
        reference=2, stratum_choice=np.array(choice), measured=np.array([0, 1, 2]),
    )  # fmt: skip

    def cost_of(assigned):
        return sum((1.0, 3.0, 10.0)[c] for c in assigned)

    return (audit, stats, np.zeros(3), ("a", "b", "c"), "e"), cost_of


def test_the_recalibration_takes_the_moves_the_audit_finds_worth_their_cost():
    """The selector's trade-off with the audit's gains, three candidates (cheap, medium, the
    reference): at a small λ the cheap stratum that loses half a phase goes to medium (as right
    as the reference, for less), the cheap one that loses nothing stays, and a medium stratum
    that gains nothing over cheap comes down; at λ = 1 only the cost counts."""
    from matseg.pipeline.escalate import plan_recalibration

    bad = GOOD.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0
    args, cost_of = _three_candidates((bad, GOOD, GOOD), [0, 0, 1])
    assigned, predicted = plan_recalibration(*args, 0.05, cost_of, 30.0)
    assert assigned == [1, 0, 0] and predicted["delta_miou"] == pytest.approx(0.0, abs=1e-12)
    assert plan_recalibration(*args, 1.0, cost_of, 30.0)[0] == [0, 0, 0]
    capped, _ = plan_recalibration(*args, 0.05, cost_of, 30.0, fits=lambda a: a[0] == 0)
    assert capped == [0, 0, 0]  # a budget that forbids the move up: the saving is still taken
    # the policy, trained on labels, found cheap better than medium on the first stratum's
    # tiles: the audit (agreement with the reference) may not reverse that
    disagree = np.array([[0.0, -0.05, 0.01], [0.0, 0.02, 0.03], [0.0, 0.0, 0.0]])
    kept, _ = plan_recalibration(*args, 0.05, cost_of, 30.0, predicted_gain=disagree)
    assert kept == [2, 0, 0]  # the reference, which the policy too finds better than cheap
    agree = np.array([[0.0, 0.05, 0.06], [0.0, 0.02, 0.03], [0.0, 0.0, 0.0]])
    assert plan_recalibration(*args, 0.05, cost_of, 30.0, predicted_gain=agree)[0] == [1, 0, 0]


def test_the_recalibration_never_trades_a_measured_loss_for_gflops():
    """The estimate understates a cheaper candidate's loss, so a saving is taken only where the
    audit finds none: a medium stratum whose cheap answer loses a little stays medium even at
    λ = 1, where only the cost counts; one whose cheap answer loses nothing comes down."""
    from matseg.pipeline.escalate import plan_recalibration

    slightly = GOOD.copy()
    slightly[0, 0], slightly[1, 0] = 290.0, 10.0
    args, cost_of = _three_candidates((slightly, GOOD), [1, 1])
    assert plan_recalibration(*args, 1.0, cost_of, 20.0)[0] == [1, 0]


def test_the_default_run_recalibrates_and_says_how_far(volume, tmp_path):
    """By default the audit re-chooses the plan at the selector's λ: the decision is stored,
    the report and the summary say what moved, a dry run expects what the run then spends,
    and the moves are exactly the difference from the selector's own plan."""
    out = tmp_path / "d.zarr"
    dry = matseg.segment(volume, out, dry_run=True, lam=0.1, tile=(8, 96, 96))
    report = matseg.segment(volume, out, lam=0.1, tile=(8, 96, 96), truth=volume)
    estimate = report["estimate"]
    assert estimate["recalibrated_lambda"] == 0.1 and "tolerance" not in estimate
    assert dry["expected"]["escalation"]["moved_tiles"] == estimate["moved_tiles"]
    assert abs(report["gflops"] - dry["expected"]["gflops"]) <= 0.02 * report["gflops"]
    root = zarr.open_group(str(out), mode="r")
    names = report["candidates"]
    counts = dict.fromkeys(names, 0)
    for c in root["selector/choice"][:]:
        counts[names[c]] += 1
    for step, n in estimate["moved_tiles"].items():
        was, now = step.split("->")
        counts[was], counts[now] = counts[was] - n, counts[now] + n
    assert {n: c for n, c in counts.items() if c} == {n: c for n, c in report["decisions"].items() if c}
    assert root.attrs["matseg"]["escalation"]["lambda"] == 0.1
    from matseg.console import format_estimate

    assert "recalibrated at λ 0.1" in format_estimate(estimate)


def test_the_summary_says_what_the_tolerance_did():
    from matseg.console import format_estimate

    estimate = {
        "delta_miou": -0.006, "ci95": [-0.009, -0.002], "audited_fraction": 0.03, "audited_cells": 62,
        "reference": "expensive", "tolerance": 0.01, "within_tolerance": True,
        "moved_tiles": {"cheap->expensive": 2, "medium->expensive": 9}, "every_tile": "expensive",
    }  # fmt: skip
    lines = format_estimate(estimate).splitlines()
    assert lines[0].startswith("vs all-expensive: −0.006 mIoU (95 % −0.009 … −0.002)")
    assert (
        "cheap → expensive 2, medium → expensive 9" in lines[1]
        and "every tile now runs expensive" in lines[1]
    )
    estimate.pop("every_tile")
    kept = format_estimate({**estimate, "moved_tiles": {}, "within_tolerance": False})
    assert "kept the selector's plan" in kept and "still reaches below −0.01" in kept


def test_a_plan_of_one_candidate_everywhere_says_the_cheaper_way_to_it():
    """Every tile ran medium (the demo's plan): --model medium alone gives the same labels but
    on the audited cells, without the cheap pass and the audit; the summary says for how much."""
    from matseg.console import format_estimate

    estimate = {
        "delta_miou": -0.009, "ci95": [-0.017, -0.001], "audited_fraction": 0.03, "audited_cells": 62,
        "reference": "expensive", "recalibrated_lambda": 0.1, "moved_tiles": {}, "every_tile": "medium",
        "run_gflops": 506.2,
        "fixed": {"medium": {"delta_miou": -0.010, "ci95": [-0.02, 0.0], "gflops": 283.4}},
    }  # fmt: skip
    lines = format_estimate(estimate).splitlines()
    assert "kept the selector's plan" in lines[1] and "now runs" not in lines[1]
    assert "every tile on medium: --model medium alone (no selector, no audit)" in lines[2]
    assert "outside the audited cells for 56 % of this run's GFLOPs" in lines[2]
    named = {**estimate, "better_fixed": "medium"}  # said once, by the line that names it
    assert format_estimate(named).count("--model medium alone") == 1


def test_an_audit_against_the_classical_candidate_says_what_it_measures():
    """A lab's selector trained on few images can find the classical thresholds its most accurate
    candidate; an estimate of −0.365 'vs all-classical' read as a loss of accuracy where the run
    was 0.30 better than all-classical (EMPS): the summary says the estimate is agreement."""
    from matseg.console import CLASSICAL_REFERENCE, format_estimate

    estimate = {
        "delta_miou": -0.365, "ci95": [-0.367, -0.350], "audited_fraction": 0.05, "audited_cells": 40,
        "reference": "classical",
    }  # fmt: skip
    lines = format_estimate(estimate).splitlines()
    assert lines[0].startswith("vs all-classical: −0.365 mIoU") and lines[1].strip() == CLASSICAL_REFERENCE
    assert "not accuracy" in CLASSICAL_REFERENCE and "--reference" in CLASSICAL_REFERENCE
    assert len(format_estimate({**estimate, "reference": "expensive"}).splitlines()) == 1


def test_a_plan_without_the_audit_loses_the_reference_answers_on_the_drawn_cells():
    """``keep_audited=False`` estimates the same plan run without an audit (a fixed candidate):
    the drawn cells then hold the run's answer, so it loses more; with every cell drawn the
    audited run is the all-reference run."""
    good = np.diag([300.0, 300.0, 300.0])
    bad = good.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0
    args = (_evidence(bad, good, 8), np.zeros(3), ("a", "b", "c"), "expensive")
    kept = estimate_change(_plan([0] * 8, [20]), *args)
    fixed = estimate_change(_plan([0] * 8, [20]), *args, keep_audited=False)
    assert fixed["delta_miou"] < kept["delta_miou"] < 0
    every = estimate_change(_plan([0] * 8, [8]), *args)
    assert every["delta_miou"] == pytest.approx(0.0, abs=1e-12)
    assert estimate_change(_plan([0] * 8, [8]), *args, keep_audited=False)["delta_miou"] < -0.1


def test_the_report_says_what_each_fixed_candidate_would_give_and_names_a_cheaper_one(volume, tmp_path):
    """Each candidate the audit measures, run alone, as the audit estimates it: its GFLOPs are
    what ``--model NAME`` spends; a fixed candidate is named only when it looks at least as
    accurate for fewer GFLOPs; a dry run says the same before the candidates run."""
    out = tmp_path / "o.zarr"
    dry = matseg.segment(volume, out, dry_run=True, tolerance=None)
    report = matseg.segment(volume, out, tolerance=None)
    estimate = report["estimate"]
    fixed = estimate["fixed"]
    assert set(fixed) == {"cheap", "medium", "expensive-2x", "classical"}  # cheaper than the reference
    assert estimate["run_gflops"] == pytest.approx(report["gflops"])
    for name in ("medium", "cheap"):
        alone = matseg.segment(volume, tmp_path / f"{name}.zarr", model=name)
        assert fixed[name]["gflops"] == pytest.approx(alone["gflops"], rel=0.02)
        low, high = fixed[name]["ci95"]
        assert low <= fixed[name]["delta_miou"] <= high
    named = [
        n
        for n, f in fixed.items()
        if f["gflops"] < report["gflops"] and f["delta_miou"] >= estimate["delta_miou"]
    ]
    if named:
        assert estimate["better_fixed"] == min(named, key=lambda n: fixed[n]["gflops"])
    else:
        assert "better_fixed" not in estimate
    expected = dry["expected"]["estimate"]
    assert set(expected["fixed"]) == set(fixed)
    assert expected["fixed"]["medium"]["gflops"] == pytest.approx(fixed["medium"]["gflops"])


def test_the_summary_names_the_fixed_candidate_the_audit_prefers():
    from matseg.console import format_estimate

    estimate = {
        "delta_miou": -0.023, "ci95": [-0.035, -0.007], "audited_fraction": 0.03, "audited_cells": 62,
        "reference": "expensive", "run_gflops": 517.8, "better_fixed": "medium",
        "fixed": {"medium": {"delta_miou": -0.020, "ci95": [-0.030, -0.005], "gflops": 282.5}},
    }  # fmt: skip
    lines = format_estimate(estimate).splitlines()
    assert lines[1].strip() == (
        "--model medium alone (no selector, no audit) looks as accurate on this volume for 55 % of "
        "this run's GFLOPs: −0.020 (95 % −0.030 … −0.005) by the audit"
    )
    estimate.pop("better_fixed")
    assert len(format_estimate(estimate).splitlines()) == 1


def test_the_default_reference_is_the_candidate_the_selector_found_most_accurate(volume, tmp_path):
    """A selector trained on a lab's data where the classical candidate scored best (EMPS)
    audits against it; the bundled one against expensive; --reference still chooses."""
    import shutil

    from matseg.models.store import default_weights_dir

    weights = tmp_path / "weights"
    shutil.copytree(default_weights_dir(), weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    scores = manifest["selector"]["mean_tile_iou"]
    assert max((n for n in scores if n != "cheap"), key=scores.get) == "expensive"
    manifest["selector"]["mean_tile_iou"] = {**scores, "classical": 0.99}
    (weights / "manifest.json").write_text(json.dumps(manifest))
    lab = matseg.segment(volume, tmp_path / "lab.zarr", weights=weights, lam=0.5)
    assert lab["estimate"]["reference"] == "classical"
    chosen = matseg.segment(volume, tmp_path / "chosen.zarr", weights=weights, lam=0.5, reference="medium")
    assert chosen["estimate"]["reference"] == "medium"
    bundled = matseg.segment(volume, tmp_path / "bundled.zarr", lam=0.5)
    assert bundled["estimate"]["reference"] == "expensive"


def test_the_point_estimate_alone_skips_the_bootstrap_and_equals_the_full_one():
    good = np.diag([300.0, 300.0, 300.0])
    bad = good.copy()
    bad[0, 0], bad[1, 0] = 150.0, 150.0
    args = (_plan([0] * 8, [20]), _evidence(bad, good, 8), np.zeros(3), ("a", "b", "c"), "expensive")
    full, point = estimate_change(*args), estimate_change(*args, interval=False)
    assert point["delta_miou"] == full["delta_miou"] < 0 and np.isnan(point["ci95"]).all()
