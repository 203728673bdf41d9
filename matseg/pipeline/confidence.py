"""How far a run's mIoU falls below an all-reference run's, estimated without labels from
what the audit (:mod:`matseg.pipeline.audit`) found on its cells.

The estimator. With no truth at hand, the reference's probabilities, tempered (softened
by a temperature T: the reference is less often right than its softmax says, the more so
on volumes unlike its training data), stand in for it. Each audited cell gives the
expected confusion matrix (label x true phase) of the labels the run had there and of the
reference's labels. Stratum by stratum, the cells that were not drawn are represented by
the drawn ones (each drawn cell stands for ``population / sampled`` cells: uniform draws
within a stratum make this unbiased for the stratum's total), and tiles the selector sent
to the reference count the same in both runs (as their labels, correct: the reference is
the yardstick there). The change is the mIoU of the run's expected matrix minus that of
the all-reference run's, where the drawn cells hold the reference's answer (as the
output does).

The interval. A stratified bootstrap (cells redrawn with replacement within each stratum)
gives the sampling error; the temperature, which no label tells, is drawn per bootstrap
replicate from a range measured on volumes with truth (docs/benchmarks.md, "The audit"),
so the interval also spans what the choice of T changes. Both are percentile intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr

from matseg.io.progress import TileRecords
from matseg.metrics import iou_per_phase
from matseg.pipeline.audit import TEMPERATURES, AuditPlan, audit_evidence, load_audit

CONFIDENCE = 0.95
BOOTSTRAP = 2000
# The temperature of the point estimate, and the range the interval spans (measured with
# benchmarks/audit_coverage.py on volumes kept apart from those that report its coverage).
TEMPERATURE = 2.0
TEMPERATURE_RANGE = (1.5, 4.0)


def estimate_change(
    audit: AuditPlan,
    stats: np.ndarray,
    common: np.ndarray,
    phases: Sequence[str],
    reference: str,
    temperature: float = TEMPERATURE,
    temperature_range: tuple[float, float] = TEMPERATURE_RANGE,
    seed: int = 0,
    assigned: Sequence[int] | None = None,
    dropped: frozenset[int] = frozenset(),
    keep_audited: bool = True,
    interval: bool = True,
) -> dict:
    """The report's ``estimate``: the change in mIoU against an all-reference run and the
    volume's phase fractions, each with a 95 % interval.

    Parameters
    ----------
    audit : AuditPlan
        The drawn cells and their strata.
    stats : ndarray (cells, width)
        What each audited cell recorded (:func:`matseg.pipeline.audit.stats_width`).
    common : ndarray (phases,)
        Phase counts of the tiles the selector sent to the reference.
    phases : sequence of str
    reference : str
        The reference candidate's name.
    temperature, temperature_range : float
        The point estimate's temperature, and the range the interval's replicates draw from.
    seed : int
        The bootstrap's seed.
    assigned : sequence of int, optional
        The candidate each stratum's tiles run (default: the plan's, ``audit.stratum_choice``);
        another one predicts what moving them would give (:mod:`matseg.pipeline.escalate`).
    dropped : set of int
        Strata whose tiles were sent to the reference after the audit: counted in ``common``.
    keep_audited : bool
        Whether the drawn cells hold the reference's answer (a run with this audit) or the
        assigned candidate's (that plan run without an audit:
        :func:`matseg.pipeline.escalate.fixed_estimates`).
    interval : bool
        False: the point estimate alone (``ci95`` and the fractions' intervals are NaN), without
        the bootstrap — what a search over many plans needs (its cost grows with the cells).
    """
    k, n_t = len(phases), len(TEMPERATURES)
    n = len(audit.cells)
    if n == 0:  # every tile went to the reference: the run is the all-reference run
        fractions = common / max(common.sum(), 1)
        return {
            "delta_miou": 0.0,
            "ci95": [0.0, 0.0],
            "audited_cells": 0,
            "audited_fraction": 0.0,
            "reference": reference,
            "phase_fractions": {
                p: {"value": float(f), "ci95": [float(f)] * 2} for p, f in zip(phases, fractions)
            },
            "temperature": temperature,
            "temperature_range": list(temperature_range),
            "strata": 0,
        }
    n_c = (stats.shape[1] - 1) // (n_t * k * k)
    conf = stats[:, 1:].reshape(n, n_t, n_c, k * k)
    assigned = audit.stratum_choice if assigned is None else assigned
    ref = audit.reference
    base = np.diag(common.astype(float)).ravel()
    point_t = TEMPERATURES.index(temperature)
    allowed = [i for i, t in enumerate(TEMPERATURES) if temperature_range[0] <= t <= temperature_range[1]]
    rng = np.random.default_rng([seed, 95])
    final_b = np.tile(base, (BOOTSTRAP, 1))
    allref_b = np.tile(base, (BOOTSTRAP, 1))
    final_p, allref_p = base.copy(), base.copy()
    t_of = rng.choice(allowed, size=BOOTSTRAP)
    for h, (population, sampled) in enumerate(zip(audit.population, audit.sampled)):
        mine = np.flatnonzero(audit.stratum == h)
        run_h, ref_h = conf[mine, :, assigned[h]], conf[mine, :, ref]  # (cells, T, k*k)
        # the same draws whatever is assigned or dropped: estimates of two plans compare alike
        draws = (
            rng.multinomial(len(mine), np.full(len(mine), 1 / len(mine)), size=BOOTSTRAP)
            if interval
            else None
        )
        if h in dropped:
            continue
        kept, rest = (1.0, (population - sampled) / sampled) if keep_audited else (0.0, population / sampled)
        final_p += kept * ref_h[:, point_t].sum(0) + rest * run_h[:, point_t].sum(0)
        allref_p += population / sampled * ref_h[:, point_t].sum(0)
        if not interval:
            continue
        run_s = np.einsum("bc,bcf->bf", draws, run_h[:, t_of].transpose(1, 0, 2))
        ref_s = np.einsum("bc,bcf->bf", draws, ref_h[:, t_of].transpose(1, 0, 2))
        final_b += kept * ref_s + rest * run_s
        allref_b += population / sampled * ref_s
    low, high = (1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2
    if interval:
        delta_b, fractions_b = _miou(final_b, k) - _miou(allref_b, k), _fractions(final_b, k)
    else:
        delta_b, fractions_b = np.full(2, np.nan), np.full((2, k), np.nan)
    fractions_p = _fractions(final_p[None], k)[0]
    eligible = int(audit.population.sum())
    return {
        "delta_miou": float(_miou(final_p[None], k)[0] - _miou(allref_p[None], k)[0]),
        "ci95": [float(v) for v in np.quantile(delta_b, [low, high])],
        "audited_cells": n,
        "audited_fraction": n / eligible if eligible else 0.0,
        "reference": reference,
        "phase_fractions": {
            name: {
                "value": float(fractions_p[i]),
                "ci95": [float(v) for v in np.quantile(fractions_b[:, i], [low, high])],
            }
            for i, name in enumerate(phases)
        },
        "temperature": temperature,
        "temperature_range": list(temperature_range),
        "strata": len(audit.population),
    }


def stored_evidence(root: zarr.Group, n_phases: int, names: Sequence[str]) -> tuple:
    """What :func:`estimate_change` needs, read from a finished run's output: its audit, the
    cells' numbers, the phase counts of the tiles run by the reference (by the selector's plan
    or by the tolerance's), the candidate of each stratum and the strata sent to the reference."""
    audit = load_audit(root)
    evidence = audit_evidence(audit, TileRecords.open(root, "audit"), n_phases, len(names))
    decision = root.attrs["matseg"].get("escalation") or {}
    assigned = [names.index(n) for n in decision["assigned"]] if decision else list(audit.stratum_choice)
    dropped = frozenset(h for h, c in enumerate(assigned) if c == audit.reference)
    on_reference = root["selector/choice"][:] == audit.reference
    on_reference |= np.isin(audit.tile_stratum, list(dropped))
    counts = TileRecords.open(root, "finish").read()["counts"]
    return audit, evidence, np.nan_to_num(counts[on_reference]).sum(0), assigned, dropped


def _miou(flat: np.ndarray, k: int) -> np.ndarray:
    iou = iou_per_phase(flat.reshape(-1, k, k))
    return np.nanmean(iou, axis=1)


def _fractions(flat: np.ndarray, k: int) -> np.ndarray:
    truth = flat.reshape(-1, k, k).sum(axis=1)  # (label, true phase): totals per true phase
    return truth / truth.sum(axis=1, keepdims=True)
