"""After the audit, the plan moves strata of tiles to other candidates by the volume's own
evidence: by default to maximise the selector's own λ trade-off with the gains the audit
measured (:func:`plan_recalibration`), or, with an accuracy tolerance, until the run's
interval keeps it (:func:`plan_escalation`).

The audit (:mod:`matseg.pipeline.audit`) runs after the selector's plan and before the
costlier candidates. Its cells are drawn by stratum — the tile's candidate crossed with a
tercile of its cheap-pass uncertainty — and on each it runs the reference and every
candidate cheaper than it, so it estimates, stratum by stratum, what each of them would
lose against the reference. With ``--tolerance t`` a run must end with the 95 % interval of
its change against an all-reference run above ``-t``. While the interval reaches below,
the move of one stratum to another candidate that raises the interval's lower bound most
per GFLOP is taken (moving every stratum to the reference is the all-reference run, change
0); then, while it stays within, the moves that save most. This recalibrates the selector's
plan per volume: where the cheap or medium answer is confidently wrong the audit sees it
and spending follows; where the audit finds no loss the plan stands or gets cheaper. The
decision is stored before the candidates run, so a killed run resumes to it and nothing
is computed twice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import zarr

from matseg.pipeline.audit import AUDIT_HALO, AuditPlan
from matseg.pipeline.audit_tasks import audit_gflops
from matseg.pipeline.confidence import estimate_change
from matseg.pipeline.job import Job
from matseg.pipeline.resume import set_status
from matseg.selector.plan import with_choice


def _moves(audit: AuditPlan, assigned: list[int], fits: Callable[[list[int]], bool]):
    """Every plan one stratum's move away from ``assigned``, to a candidate the audit has
    evidence for, that ``fits``: (stratum, candidate, plan)."""
    for h in range(len(assigned)):
        for c in audit.allowed(h):
            if c != assigned[h]:
                moved = [*assigned[:h], c, *assigned[h + 1 :]]
                if fits(moved):
                    yield h, c, moved


def plan_escalation(
    audit: AuditPlan,
    evidence: np.ndarray,
    common: np.ndarray,
    phases: Sequence[str],
    reference: str,
    tolerance: float,
    cost_of: Callable[[list[int]], float],
    fits: Callable[[list[int]], bool] = lambda assigned: True,
    seed: int = 0,
) -> tuple[list[int], dict]:
    """The candidate for each stratum's tiles, and the estimate that this predicts.

    First, while the interval reaches below ``-tolerance``, the move of one stratum to a
    candidate with evidence (:meth:`AuditPlan.allowed`) that raises the interval's lower bound
    most per GFLOP it adds (a move that raises it and costs nothing first). Then, while the
    interval stays within the tolerance, the move that saves the most GFLOPs.

    Parameters
    ----------
    audit, evidence, common, phases, reference
        As :func:`matseg.pipeline.confidence.estimate_change` takes them.
    tolerance : float
        The largest loss of mIoU against the all-reference run the 95 % interval may reach.
    cost_of : callable
        GFLOPs the candidates' stage costs with a candidate per stratum.
    fits : callable
        Whether a candidate per stratum keeps the run within its budget.
    seed : int
        The bootstrap's seed (the same draws for every plan compared).
    """

    def predicted(assigned) -> dict:
        return estimate_change(audit, evidence, common, phases, reference, seed=seed, assigned=assigned)

    assigned = [int(c) for c in audit.stratum_choice]
    current, cost = predicted(assigned), cost_of(assigned)
    while current["ci95"][0] < -tolerance:
        best, score = None, 0.0
        for _, _, moved in _moves(audit, assigned, fits):
            estimate, extra = predicted(moved), cost_of(moved) - cost
            gain = estimate["ci95"][0] - current["ci95"][0]
            value = gain / extra if extra > 0 else (math.inf if gain > 0 else -math.inf)
            if gain > 0 and value > score:
                best, score, found = moved, value, estimate
        if best is None:
            break
        assigned, current, cost = best, found, cost_of(best)
    while current["ci95"][0] >= -tolerance:
        best, saved = None, 0.0
        for _, _, moved in _moves(audit, assigned, fits):
            less = cost - cost_of(moved)
            if less > saved:
                estimate = predicted(moved)
                if estimate["ci95"][0] >= -tolerance:
                    best, saved, found = moved, less, estimate
        if best is None:
            break
        assigned, current, cost = best, found, cost_of(best)
    return assigned, current


def plan_recalibration(
    audit: AuditPlan,
    evidence: np.ndarray,
    common: np.ndarray,
    phases: Sequence[str],
    reference: str,
    lam: float,
    cost_of: Callable[[list[int]], float],
    scale: float,
    fits: Callable[[list[int]], bool] = lambda assigned: True,
    seed: int = 0,
    predicted_gain: np.ndarray | None = None,
) -> tuple[list[int], dict]:
    """The candidate for each stratum's tiles by the selector's own trade-off, with the gains
    this volume's audit measured in place of the ones the policy predicted.

    The policy was trained to maximise ``(1 - λ) ΔIoU - λ GFLOPs / max GFLOPs`` per tile; here
    the same objective is taken over the whole plan, ``ΔIoU`` being the audit's point estimate
    of the run's change against the all-reference run and ``scale`` the GFLOPs of the costliest
    candidate on every tile. From the selector's choice, the one-stratum move that raises the
    objective most is taken until none does: where the cheap answer is confidently wrong the
    audit sees the loss and the stratum moves up; where a costlier candidate gains nothing it
    moves down. A move that saves GFLOPs is taken only where the audit finds no loss of
    accuracy at all: the estimate understates a cheaper candidate's loss (by ~0.02 for the
    cheap net at the shipped temperature, docs/benchmarks.md "Why the estimate leans"), so
    trading a measured loss for GFLOPs moved tiles medium -> cheap that lost 0.02-0.05 mIoU on
    small volumes like the selector's training data.

    The audit measures agreement with the reference, not accuracy: it cannot see a candidate
    that is *better* than the reference on some tiles, which the selector, trained on labels,
    can. So with ``predicted_gain`` (strata x candidates: the policy's mean predicted IoU gain
    over cheap on each stratum's tiles) a move is taken only where the audit finds the change
    in accuracy the policy predicts in sign (any, where the policy predicts none): the audit
    corrects how much a move is worth, not its direction. The other arguments are as
    :func:`plan_escalation` takes them.
    """

    def point(assigned) -> float:  # the point estimate only: the bootstrap is for the plan found
        return estimate_change(
            audit, evidence, common, phases, reference, seed=seed, assigned=assigned, interval=False
        )["delta_miou"]

    def value(assigned, delta: float) -> float:
        return (1 - lam) * delta - lam * cost_of(assigned) / scale

    def agree(h: int, was: int, now: int, audited: float) -> bool:
        if predicted_gain is None:
            return True
        predicted = predicted_gain[h, now] - predicted_gain[h, was]
        return predicted == 0 or np.sign(predicted) == np.sign(audited)

    assigned = [int(c) for c in audit.stratum_choice]
    delta = point(assigned)
    score = value(assigned, delta)
    while True:
        best, cost = None, cost_of(assigned)
        for h, c, moved in _moves(audit, assigned, fits):
            found = point(moved)
            # never a saving that costs accuracy: the estimate understates a cheaper one's loss
            if found < delta - 1e-9 and cost_of(moved) < cost:
                continue
            moved_score = value(moved, found)
            if moved_score > score + 1e-9 and agree(h, assigned[h], c, found - delta):
                best, score, best_delta = moved, moved_score, found
        if best is None:
            break
        assigned, delta = best, best_delta
    return assigned, estimate_change(audit, evidence, common, phases, reference, seed=seed, assigned=assigned)


def recalibrates(settings, plan: dict) -> bool:
    """Whether the audit re-chooses the plan by λ: a selector run by λ (not by a budget) with
    recalibration on and no tolerance (which decides instead)."""
    return settings.recalibrate and settings.tolerance is None and plan["lambda"] is not None


def decide(
    job: Job,
    root: zarr.Group,
    plan: dict,
    audit: AuditPlan,
    evidence: np.ndarray,
    counts: np.ndarray,
    spent: float,
) -> dict:
    """The audit's decision on this volume — by the tolerance (:func:`plan_escalation`) or,
    without one, by the selector's λ (:func:`plan_recalibration`) — stored in the output's
    attributes: the candidate of each stratum, the interval that predicts, the tiles moved
    and the GFLOPs that adds (negative: saves).

    ``counts``: each tile's phase counts in the cheap pass (the reference's tiles have not run
    yet: their counts, which weigh both runs alike, are taken from it); ``spent``: the GFLOPs
    of the run so far and of the plan as it stands (for a budget)."""
    common = counts[plan["choice"] == audit.reference].sum(0)
    before = plan["stage2_gflops"]

    @functools.cache
    def plan_of(assigned: tuple[int, ...]) -> dict:
        """The plan with a candidate per stratum (each asked for by both the cost and the budget)."""
        return _moved(plan, audit, assigned, job)

    def cost_of(assigned) -> float:
        return plan_of(tuple(assigned))["stage2_gflops"]

    def fits(assigned) -> bool:
        """Within --budget-gflops and --max-expensive-fraction, where given."""
        settings = job.settings
        moved = plan_of(tuple(assigned))
        if (
            settings.budget_gflops is not None
            and spent + moved["stage2_gflops"] - before > settings.budget_gflops
        ):
            return False
        if settings.max_expensive_fraction is not None:  # tiles on a candidate other than cheap
            tiles = moved["choice"] > 0
            return tiles.sum() <= np.floor(settings.max_expensive_fraction * len(tiles) + 1e-9)
        return True

    reference, settings = job.names[audit.reference], job.settings
    if settings.tolerance is not None:
        assigned, predicted = plan_escalation(
            audit, evidence, common, job.phases, reference, settings.tolerance, cost_of, fits,
            settings.audit_seed,
        )  # fmt: skip
    else:
        scale = float(plan["candidate_gflops"].max(axis=1).sum())
        strata = range(len(audit.population))
        gain = np.array([plan["gain"][audit.tile_stratum == h].mean(axis=0) for h in strata])
        assigned, predicted = plan_recalibration(
            audit, evidence, common, job.phases, reference, plan["lambda"], cost_of, scale, fits,
            settings.audit_seed, gain,
        )  # fmt: skip
    moved: dict[str, int] = {}
    for h, (was, now) in enumerate(zip(audit.stratum_choice, assigned)):
        if was != now:
            step = f"{job.names[was]}->{job.names[now]}"
            moved[step] = moved.get(step, 0) + int((audit.tile_stratum == h).sum())
    decision = {
        "tolerance": settings.tolerance,
        "lambda": None if settings.tolerance is not None else plan["lambda"],
        "assigned": [job.names[c] for c in assigned],
        "moved_tiles": moved,
        "predicted_ci95": predicted["ci95"],
        "added_gflops": cost_of(assigned) - before,
    }
    set_status(root, escalation=decision)
    return decision


def _moved(plan: dict, audit: AuditPlan, assigned, job: Job) -> dict:
    choice = plan["choice"].copy()
    for h, c in enumerate(assigned):
        choice[audit.tile_stratum == h] = c
    return with_choice(plan, choice, job.grid)


def apply(plan: dict, decision: dict | None, audit: AuditPlan, job: Job) -> dict:
    """``plan`` with each stratum's tiles on the candidate the decision gave it."""
    if not decision:
        return plan
    return _moved(plan, audit, [job.names.index(n) for n in decision["assigned"]], job)


def dropped_strata(decision: dict | None, audit: AuditPlan, job: Job) -> frozenset[int]:
    """Strata the decision sent to the reference (counted with the reference's tiles)."""
    if not decision:
        return frozenset()
    return frozenset(h for h, n in enumerate(decision["assigned"]) if job.names.index(n) == audit.reference)


def audit_cost(job: Job, audit: AuditPlan, choice: np.ndarray) -> float:
    """The audit's GFLOPs (known before it runs)."""
    return audit_gflops(audit, job.grid.with_halo(AUDIT_HALO), job.names, choice, job.context)


def audited_estimate(
    job: Job,
    plan: dict,
    audit: AuditPlan,
    evidence: np.ndarray,
    decision: dict | None,
    finish,
    written,
    stats: dict,
) -> dict:
    """What the audit adds to the run's numbers (its GFLOPs and the labels it replaced, in
    ``stats``), and the report's ``estimate``: the change against an all-reference run, with
    the tolerance's decision. ``finish``, ``written``: the records of the candidates and of
    the audited cells' writes."""
    gflops = float(evidence[:, 0].sum())
    stats["counts"] = stats["counts"] + np.nan_to_num(written.read()["change"]).sum(0)
    stats["gflops"] += gflops
    stats["breakdown"]["audit"] = gflops
    on_reference = plan["choice"] == audit.reference
    common = np.nan_to_num(finish.read()["counts"][on_reference]).sum(0)
    out = _plan_estimate(job, audit, evidence, decision, common)
    tolerance = job.settings.tolerance
    if tolerance is not None:
        out["tolerance"] = tolerance
        out["within_tolerance"] = bool(out["ci95"][0] >= -tolerance)
    elif decision:
        out["recalibrated_lambda"] = decision["lambda"]
    if tolerance is not None or decision:
        out["moved_tiles"] = decision["moved_tiles"] if decision else {}
        out["moved_gflops"] = decision["added_gflops"] if decision else 0.0
    if len(audit.cells):
        with_fixed(out, job, plan, audit, evidence, finish.read()["counts"], stats["gflops"])
    return out


def predicted_estimate(
    job: Job, plan: dict, audit: AuditPlan, evidence, decision, counts, run_gflops: float
) -> dict:
    """Before the candidates run (a dry run): the estimate the run's plan would report, the
    reference's tiles counted from the cheap pass (``counts``), with the fixed candidates
    (:func:`with_fixed`; ``run_gflops``: what the run is expected to spend)."""
    out = _plan_estimate(job, audit, evidence, decision, counts[plan["choice"] == audit.reference].sum(0))
    return with_fixed(out, job, plan, audit, evidence, counts, run_gflops)


def _plan_estimate(job: Job, audit: AuditPlan, evidence, decision: dict | None, common) -> dict:
    """The estimate of the run's plan as the tolerance's ``decision`` (if any) left it."""
    assigned = [job.names.index(n) for n in decision["assigned"]] if decision else None
    return estimate_change(
        audit, evidence, common, job.phases, job.names[audit.reference], seed=job.settings.audit_seed,
        assigned=assigned, dropped=dropped_strata(decision, audit, job),
    )  # fmt: skip


def with_fixed(estimate: dict, job: Job, plan: dict, audit: AuditPlan, evidence, counts, run_gflops) -> dict:
    """``estimate`` with what each fixed candidate would give instead (``fixed``,
    :func:`fixed_estimates`) and, if one looks at least as accurate for fewer GFLOPs than the
    run's ``run_gflops``, its name (``better_fixed``): the plan says when a volume is better
    served by one candidate everywhere; ``every_tile``, the candidate every tile runs, if one."""
    fixed = fixed_estimates(job, audit, evidence, counts, plan["candidate_gflops"])
    estimate["fixed"] = fixed
    estimate["run_gflops"] = run_gflops
    used = np.unique(plan["choice"])
    if len(used) == 1:  # one candidate on every tile, by the selector's plan or the audit's moves
        estimate["every_tile"] = job.names[int(used[0])]
    better = [
        n for n, f in fixed.items() if f["gflops"] < run_gflops and f["delta_miou"] >= estimate["delta_miou"]
    ]
    if better:
        estimate["better_fixed"] = min(better, key=lambda n: fixed[n]["gflops"])
    return estimate


def fixed_estimates(
    job: Job, audit: AuditPlan, evidence: np.ndarray, counts: np.ndarray, per_tile: np.ndarray
) -> dict:
    """What one measured candidate on every tile would have given instead of this run, as
    the audit estimates it: {name: change against the all-reference run, its 95 % interval,
    GFLOPs}. Every tile the selector did not send to the reference runs the candidate (as
    ``--model NAME`` would: no cheap pass, no audit, the candidate's own halo); the tiles it
    sent to the reference, which the audit does not see, keep the reference. ``counts``: each
    tile's phase counts as the run finished them; ``per_tile``: each candidate's GFLOPs on each
    tile on its own halo (the plan's ``candidate_gflops``)."""
    planned_reference = audit.tile_stratum < 0
    common = np.nan_to_num(counts[planned_reference]).sum(0)
    kept = float(per_tile[planned_reference, audit.reference].sum())
    reference, strata = job.names[audit.reference], len(audit.population)
    out = {}
    for c in (int(c) for c in audit.measured if c != audit.reference):
        found = estimate_change(
            audit, evidence, common, job.phases, reference, seed=job.settings.audit_seed,
            assigned=[c] * strata, keep_audited=False,
        )  # fmt: skip
        out[job.names[c]] = {
            "delta_miou": found["delta_miou"],
            "ci95": found["ci95"],
            "gflops": float(per_tile[~planned_reference, c].sum()) + kept,
        }
    return out
