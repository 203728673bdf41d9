"""The accuracy tolerance: after the audit, the plan sends to the reference the strata where
the volume's own evidence says the run would lose too much.

The audit (:mod:`matseg.pipeline.audit`) runs after the selector's plan and before the
costlier candidates. Its cells are drawn by stratum — the tile's candidate crossed with a
tercile of its cheap-pass uncertainty — so it measures, stratum by stratum, how far the
plan's answers fall below the reference's. With ``--tolerance t`` a run must end with the
95 % interval of its change against an all-reference run above ``-t``. When the interval
reaches below, whole strata go to the reference, greedily by how much each raises the
interval's lower bound per GFLOP it costs, until it no longer does (or every stratum went:
the all-reference run, change 0). This recalibrates the selector's plan per volume: where
the cheap or medium answer is confidently wrong the audit sees it and spending follows;
where the audit finds no loss the plan stands. The decision is stored before the
candidates run, so a killed run resumes to it and nothing is computed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import zarr

from matseg.candidates.registry import CANDIDATES
from matseg.pipeline.audit import AUDIT_HALO, AuditPlan, audit_gflops
from matseg.pipeline.confidence import estimate_change
from matseg.pipeline.job import Job
from matseg.pipeline.resume import set_status
from matseg.selector.plan import with_choice


def plan_escalation(
    audit: AuditPlan,
    evidence: np.ndarray,
    common: np.ndarray,
    phases: Sequence[str],
    reference: str,
    tolerance: float,
    costs: np.ndarray,
    fits: Callable[[list[int]], bool] = lambda strata: True,
    seed: int = 0,
) -> tuple[list[int], dict]:
    """The strata to send to the reference, and the estimate that sending them predicts.

    Parameters
    ----------
    audit, evidence, common, phases, reference
        As :func:`matseg.pipeline.confidence.estimate_change` takes them.
    tolerance : float
        The largest loss of mIoU against the all-reference run the 95 % interval may reach.
    costs : ndarray (strata,)
        GFLOPs that sending each stratum to the reference adds.
    fits : callable
        Whether sending these strata keeps the run within its budget.
    seed : int
        The bootstrap's seed (the same draws for every plan compared).
    """

    def predicted(strata) -> dict:
        return estimate_change(
            audit, evidence, common, phases, reference, seed=seed, upgraded=frozenset(strata)
        )

    chosen: list[int] = []
    current = predicted(chosen)
    while current["ci95"][0] < -tolerance:
        options = [h for h in range(len(audit.population)) if h not in chosen and fits([*chosen, h])]
        if not options:
            break
        trials = {h: predicted([*chosen, h]) for h in options}
        best = max(options, key=lambda h: (trials[h]["ci95"][0] - current["ci95"][0]) / max(costs[h], 1e-9))
        chosen.append(best)
        current = trials[best]
    return sorted(chosen), current


def decide(
    job: Job,
    root: zarr.Group,
    plan: dict,
    audit: AuditPlan,
    evidence: np.ndarray,
    counts: np.ndarray,
    spent: float,
) -> dict:
    """The tolerance's decision on this volume (stored in the output's attributes): the strata
    and tiles sent to the reference, the interval that predicts, and what it adds.

    ``counts``: each tile's phase counts in the cheap pass (the reference's tiles have not run
    yet: their counts, which weigh both runs alike, are taken from it); ``spent``: the GFLOPs
    of the run so far and of the plan as it stands (for a budget)."""
    reference = audit.reference
    common = counts[plan["choice"] == reference].sum(0)
    before = plan["stage2_gflops"]

    def added(strata) -> float:
        choice = plan["choice"].copy()
        choice[np.isin(audit.tile_stratum, strata)] = reference
        return with_choice(plan, choice, job.grid)["stage2_gflops"] - before

    def fits(strata) -> bool:
        """Within --budget-gflops and --max-expensive-fraction, where given."""
        settings = job.settings
        if settings.budget_gflops is not None and spent + added(strata) > settings.budget_gflops:
            return False
        if settings.max_expensive_fraction is not None:  # tiles on a candidate other than cheap
            tiles = (plan["choice"] > 0) | np.isin(audit.tile_stratum, strata)
            return tiles.sum() <= np.floor(settings.max_expensive_fraction * len(tiles) + 1e-9)
        return True

    costs = np.array([added([h]) for h in range(len(audit.population))])
    strata, predicted = plan_escalation(
        audit, evidence, common, job.phases, job.names[reference], job.settings.tolerance, costs, fits,
        job.settings.audit_seed,
    )  # fmt: skip
    tiles = np.flatnonzero(np.isin(audit.tile_stratum, strata))
    decision = {
        "strata": strata,
        "tiles": [list(job.indices[t]) for t in tiles],
        "predicted_ci95": predicted["ci95"],
        "added_gflops": added(strata) if strata else 0.0,
    }
    set_status(root, escalation=decision)
    return decision


def apply(plan: dict, decision: dict | None, job: Job) -> dict:
    """``plan`` with the decision's tiles on the reference."""
    if not decision or not decision["tiles"]:
        return plan
    position = {idx: t for t, idx in enumerate(job.indices)}
    choice = plan["choice"].copy()
    for idx in decision["tiles"]:
        choice[position[tuple(idx)]] = job.names.index(job.settings.reference)
    return with_choice(plan, choice, job.grid)


def audit_cost(job: Job, audit: AuditPlan, choice: np.ndarray) -> float:
    """The audit's GFLOPs (known before it runs)."""
    candidates = [CANDIDATES[n] for n in job.names]
    return audit_gflops(audit, job.grid.with_halo(AUDIT_HALO), candidates, choice, job.context)


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
    dropped = frozenset(decision["strata"]) if decision else frozenset()
    out = estimate_change(
        audit, evidence, common, job.phases, job.names[audit.reference], seed=job.settings.audit_seed,
        dropped=dropped,
    )  # fmt: skip
    tolerance = job.settings.tolerance
    if tolerance is not None:
        out["tolerance"] = tolerance
        out["escalated_tiles"] = len(decision["tiles"]) if decision else 0
        out["escalated_gflops"] = decision["added_gflops"] if decision else 0.0
        out["within_tolerance"] = bool(out["ci95"][0] >= -tolerance)
    return out
