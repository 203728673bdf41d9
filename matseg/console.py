"""What a person reads of a run on the command line: the summaries of its reports (the run,
its audit, a dry run, an evaluation, a measurement). Progress bars and log lines while it
runs: :mod:`matseg.terminal`."""

from __future__ import annotations


def _tiles(report: dict) -> str:
    """The run's tile count in words: 16 tiles, 1 tile."""
    return f"{report['tiles']} tile{'' if report['tiles'] == 1 else 's'}"


def _physical(report: dict) -> str:
    """The volume's physical extent, when its voxel size is known: ", 5.1 x 5.1 x 0.3 micrometer"."""
    size = report["input"].get("voxel_size")
    if not size:
        return ""
    extent = " x ".join(f"{n * v:.4g}" for n, v in zip(report["input"]["shape"], size["values"]))
    return f", {extent} {size['unit'] or 'units'}"


def region_text(report: dict) -> str:
    """`` [4:12, 0:140, 0:192]``: the box of the input a ``--region`` run segmented, else nothing."""
    region = report["input"].get("region")
    return f" [{', '.join(f'{a}:{b}' for a, b in region)}]" if region else ""


def format_report(report: dict) -> str:
    """The end-of-run summary a user reads."""
    shape = " x ".join(map(str, report["input"]["shape"]))
    models = (
        ", ".join(
            f"{m['name']} ({m['params'] / 1e3:,.1f} K params, sha256 {m['sha256'][:10]})"
            for m in report["models"]
        )
        or f"{report['model']} (no network weights)"
    )
    if report["model"] not in ("auto", *(m["name"] for m in report["models"])):  # e.g. expensive-tta
        models = f"{report['model']}: {models}"
    t = report["timings"]
    tiles = _tiles(report)
    lines = [
        f"matseg segment: {report['input']['source']}{region_text(report)} -> {report['output']}",
        f"  model      {models}",
        f"  voxels     {report['voxels']:,} ({shape}) in {tiles}{_physical(report)}",
        f"  time       {t['total_s']:.1f} s total, {t['segment_s']:.1f} s segmenting "
        f"({t['voxels_per_s']:,.0f} voxels/s)",
        f"  GFLOPs     {report['gflops']:,.1f} ({report['gflops_per_megavoxel']:.1f} per megavoxel)",
        "  phases     " + "  ".join(f"{k} {v:.3f}" for k, v in report["volume_fractions"].items()),
    ]
    run = report.get("run", {})
    if run.get("devices"):
        lines.insert(3, "  device     " + "; ".join(run["devices"]))
    if run.get("started_as") == "finished":
        lines.insert(2, "  finished   earlier, with these settings: nothing computed now (stored summary)")
    if run.get("started_as") in ("resume", "after-dry-run"):
        from matseg.pipeline.report import computed_text  # (not at start-up: it brings zarr and dask)

        how = (
            "resumed    from its finished tiles"
            if run["started_as"] == "resume"
            else ("continued  from its dry run (its cheap pass and audit reused)")
        )
        lines.insert(2, f"  {how}; computed now: {computed_text(run['computed_tiles'])}")
    if run.get("scheduler") not in (None, "threads"):
        lines.insert(
            2,
            f"  cluster    {run['scheduler']} at {run['address']}: {run['workers']} workers, "
            f"{run['threads']} threads" + (", placement by cost" if run["placement_by_cost"] else ""),
        )
    if "selector" in report:
        s = report["selector"]
        mix = ", ".join(f"{n} {c}" for n, c in report["decisions"].items())
        trade = f"lambda {s['lambda']}" if s["lambda"] is not None else _budget_text(s)
        lines.insert(2, f"  selector   {trade}: {mix} tiles; expected gain {s['expected_gain']:+.4f}")
        lines.append(
            f"  cost       {100 * report['gflops_fraction_of_all_expensive']:.1f} % of an "
            f"all-{report.get('cost_reference', 'expensive')} run ({report['all_expensive_gflops']:,.1f} "
            "GFLOPs)" + _audit_share(report)
        )
    if "estimate" in report:
        lines.append(f"  estimate   {format_estimate(report['estimate'])}")
        estimate, fraction = report["estimate"], report.get("gflops_fraction_of_all_expensive", 0.0)
        if estimate.get("every_tile") == estimate.get("reference") == "expensive" and fraction > 1:
            lines.append(  # the tolerance sent every tile to expensive: the cheap pass and audit were extra
                f"             every tile ran expensive: --model expensive alone gives these labels for "
                f"{100 / fraction:.0f} % of this run's GFLOPs"
            )
    lines.append(f"  seams      {_seam_text(report['seam']['score'])}")
    lines.extend(_fit_line(report))
    metrics = report.get("metrics")
    if metrics:
        absent = metrics.get("absent_from_truth", [])
        per_phase = ", ".join(
            f"{k} {v:.3f}" if v is not None else f"{k} absent from truth"
            for k, v in metrics["iou"].items()
            if v is not None or k in absent
        )
        lines.append(f"  mIoU       {metrics['miou']:.4f} ({per_phase})")
        note = metrics.get("truth_match", {}).get("note")
        if note:
            lines.append(f"             {note}")
        if "hard" in metrics:
            lines.append(
                f"             hard regions {metrics['hard']['miou']:.4f}, "
                f"clean regions {metrics['clean']['miou']:.4f}"
            )
    return "\n".join(lines)


# the reference stands in for the truth; thresholds of grey levels are a weak stand-in
CLASSICAL_REFERENCE = (
    "(the reference is the classical candidate, thresholds without a network: the estimate "
    "measures agreement with it, not accuracy; --reference names another)"
)


def format_estimate(estimate: dict) -> str:
    """The audit's estimate in one line: the change against the all-reference run and its interval."""
    if "skipped" in estimate:
        return f"none: {estimate['skipped']}"
    low, high = estimate["ci95"]
    line = (
        f"vs all-{estimate['reference']}: {_signed(estimate['delta_miou'])} mIoU "
        f"(95 % {_signed(low)} … {_signed(high)}), "
        f"{100 * estimate['audited_fraction']:.1f} % of the other cells audited "
        f"({estimate['audited_cells']})"
    )
    if estimate["reference"] == "classical":  # the selector's training found no net better
        line += "\n" + " " * 13 + CLASSICAL_REFERENCE
    if "moved_tiles" in estimate:
        rule = _rule(estimate.get("tolerance"), estimate.get("recalibrated_lambda"))
        line += "\n" + " " * 13 + format_moves(rule, estimate["moved_tiles"])
        if "every_tile" in estimate and estimate["moved_tiles"]:
            line += f": every tile now runs {estimate['every_tile']}"
        if not estimate.get("within_tolerance", True):
            reach = f"−{estimate['tolerance']:g}"
            line += f"; the interval still reaches below {reach} (a budget, or the estimate moved)"
    if "better_fixed" in estimate:
        line += "\n" + " " * 13 + format_better_fixed(estimate)
    elif estimate.get("every_tile") in estimate.get("fixed", {}) and estimate.get("run_gflops"):
        name = estimate["every_tile"]  # the plan is one candidate everywhere: say the cheaper way to it
        share = 100 * estimate["fixed"][name]["gflops"] / estimate["run_gflops"]
        line += (
            "\n" + " " * 13 + f"every tile on {name}: --model {name} alone (no selector, no audit) gives the "
            f"same labels outside the audited cells for {share:.0f} % of this run's GFLOPs"
        )
    return line


def format_better_fixed(estimate: dict) -> str:
    """The fixed candidate the audit finds as accurate as the run for fewer GFLOPs, in words."""
    name = estimate["better_fixed"]
    fixed = estimate["fixed"][name]
    low, high = fixed["ci95"]
    share = 100 * fixed["gflops"] / estimate["run_gflops"]
    return (
        f"--model {name} alone (no selector, no audit) looks as accurate on this volume for {share:.0f} % of "
        "this run's GFLOPs: "
        f"{_signed(fixed['delta_miou'])} (95 % {_signed(low)} … {_signed(high)}) by the audit"
    )


def _decision_of(decision: dict) -> str:
    return format_moves(_rule(decision["tolerance"], decision.get("lambda")), decision["moved_tiles"])


def _rule(tolerance: float | None, lam: float | None) -> str:
    return f"tolerance {tolerance:g}" if tolerance is not None else f"recalibrated at λ {lam:g}"


def format_moves(rule: str, moved: dict) -> str:
    """What the audit's decision (``rule``: by a tolerance or by λ) did to the selector's plan."""
    if not moved:
        return f"{rule}: the audit kept the selector's plan"
    steps = ", ".join(f"{step.replace('->', ' → ')} {n}" for step, n in moved.items())
    return f"{rule}: the audit moved tiles {steps}"


def _audit_share(report: dict) -> str:
    audit = report.get("gflops_breakdown", {}).get("audit")
    if not audit:
        return ""
    return f", the audit {100 * audit / report['all_expensive_gflops']:.1f} % of it"


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def format_evaluation(result: dict) -> str:
    """The evaluation table: every method's mIoU, GFLOPs and IoU/GFLOP gain over all-expensive."""
    lines = [f"{'method':<14}{'lambda':>7}{'mIoU':>8}{'GFLOPs':>10}{'% exp':>7}{'IoU/GF x':>10}"]

    def row(name, lam, p):
        lines.append(
            f"{name:<14}{lam:>7}{p['miou']:>8.4f}{p['gflops']:>10.1f}"
            f"{100 * p['gflops_fraction']:>7.1f}{p['gain_over_all_expensive']:>10.2f}"
        )

    row("all-cheap", "", result["all_cheap"])
    row("all-expensive", "", result["all_expensive"])
    for r in result["sweep"]:
        for method in ("selector", "cascade", "random", "oracle"):
            row(method, f"{r['lambda']:g}", r[method])
    if result.get("absent_from_truth"):
        lines.append(
            "absent from the truth, so in no mIoU (as in real runs): "
            + ", ".join(result["absent_from_truth"])
        )
    for model, run in result.get("real", {}).items():
        lines.append(
            f"real run --model {model}: mIoU {run['miou']:.4f}, {run['gflops']:.1f} GFLOPs, "
            f"{run['seconds']:.1f} s, seam {_seam_text(_worst_seam(run['seam']))}"
        )
    return "\n".join(lines)


def _budget_text(selector: dict) -> str:
    if selector["budget_gflops"] is not None:
        return f"budget {selector['budget_gflops']:g} GFLOPs"
    return f"at most {selector['max_expensive_fraction']:g} of tiles upgraded"


def format_dry_run(report: dict) -> str:
    """What a --dry-run expects the real run to cost."""
    e = report["expected"]
    mix = ", ".join(f"{n} {c}" for n, c in report["decisions"].items())
    return "\n".join(
        [
            f"matseg segment --dry-run: {report['input']['source']}{region_text(report)} ({_tiles(report)})",
            f"  mix        {mix}",
            f"  GFLOPs     {e['gflops']:,.1f} expected "
            f"({report['cheap_pass_gflops']:,.1f} spent on the cheap pass, "
            f"{e['audit_gflops']:,.1f} on the audit)",
            *([f"  audit      {_decision_of(e['escalation'])}"] if "escalation" in e else []),
            *([f"  estimate   {format_estimate(e['estimate'])}"] if "estimate" in e else []),
            f"  time       ~{e['seconds']:.1f} s more for the costlier candidates and blending",
            f"  memory     ~{e['peak_rss_mb']:,.0f} MB peak",
            *_fit_line(report),
            f"  cheap pass kept in {report['output']}: the real run reuses it",
        ]
    )


def _fit_line(report: dict) -> list[str]:
    """The summary's fit lines: a fill holding many voxels (:func:`matseg.normalize.fill_of`), and
    whether the volume looks like the weights' training data, if checked."""
    from matseg.normalize import describe_fill

    fill = describe_fill(report.get("normalization", {}))
    lines = [f"  fill       {fill}"] if fill else []
    if report.get("fit"):
        from matseg.candidates.fit import describe_fit

        lines.append(f"  fit        {describe_fit(report['fit'])}")
    return lines


def format_measure(report: dict) -> str:
    """The metrics table a user reads: value and interval of each metric."""
    source = report["input"]
    lines = [
        f"matseg measure: {source['source']} ({' x '.join(map(str, source['shape']))} voxels of "
        f"{' x '.join(f'{v:g}' for v in source['voxel_size'])} {source['unit']}, "
        f"voxel size from {source['voxel_size_from']}); {report['uncertainty']['samples']} draws",
    ]
    # columns as wide as their longest entry, two spaces apart (thickness_capped_fraction is 25)
    metric_w = max([len("metric"), *(len(r["metric"]) for r in report["rows"])]) + 2
    phases_w = max([len("phases"), *(len(r["phases"]) for r in report["rows"])]) + 2
    lines.append(
        f"  {'metric':<{metric_w}}{'phases':<{phases_w}}{'axis':<5}{'value':>11}  {'interval':<25}unit"
    )
    for r in report["rows"]:
        interval = f"[{r['low']:.4g}, {r['high']:.4g}]" if r["low"] is not None else ""
        value = f"{r['value']:>11.4g}"
        lines.append(
            f"  {r['metric']:<{metric_w}}{r['phases']:<{phases_w}}{r['axis']:<5}{value}  "
            f"{interval:<25}{r['unit']}"
        )
    phase = report.get("settings", {}).get("transport_phase")
    for solve in report["solves"]:
        if solve.get("skipped"):
            lines.append(
                f"  solve axis {solve['axis']}: {solve['skipped'].replace('the phase', f'phase {phase}')}"
            )
            continue
        lines.append(
            f"  solve axis {solve['axis']}: {solve['iterations']} iterations on {solve['device']}, relative "
            f"residual {solve['residual']:.1e}, flux mismatch {solve['flux_mismatch']:.1e}"
        )
    return "\n".join(lines)


def _seam_text(score: float | None) -> str:
    """A seam score for the summary; None where the volume has no tile border in-plane."""
    if score is None:
        return "none to score (one tile in-plane: no tile borders)"
    return f"score {score:.2f} (1 = no seam at tile borders)"


def _worst_seam(scores) -> float | None:
    """The largest of several volumes' seam scores, those without tile borders left out."""
    scored = [s for s in scores if s is not None]
    return max(scored) if scored else None
