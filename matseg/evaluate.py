"""``matseg evaluate``: the selector against every baseline, on volumes with ground truth.

Every candidate runs once on every tile (the tile table); any plan is then
scored exactly from the chosen tiles' confusion matrices, and its GFLOPs are
those ``matseg segment`` would spend (cheap pass, selector, candidates and the
blending recomputation). Baselines at the selector's GFLOPs: random tiles and
an uncertainty-threshold cascade upgraded to the expensive net; the oracle
takes the best candidate per tile under the same reward. Finally the default λ
is run for real, to check the table's numbers against an actual output.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matseg.candidates.registry import CANDIDATES, Context
from matseg.errors import MatsegError
from matseg.io.guard import EVALUATION_MARKER, check_replaceable, output_kind, remove_output, replacing
from matseg.io.paths import check_distinct
from matseg.io.read import open_labels, open_volume
from matseg.metrics import match_truth
from matseg.models.store import load_segmenter
from matseg.pipeline.job import halo_of, weights_phases
from matseg.selector.policy import check_pairing, choose_by_lambda, load_selector
from matseg.selector.table import plan_iou, plan_miou, reward, tile_iou, tile_table
from matseg.tiling import DEFAULT_TILE
from matseg.validate import check_number

progress_log = logging.getLogger("matseg.progress.evaluate")  # per-stage lines: --quiet hides them

LAMBDAS = (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.3, 1.0)
RANDOM_REPEATS = 20


class _Volumes:
    """Tile tables of several volumes, scored together (confusions summed over volumes)."""

    def __init__(self, tables: Sequence[dict], selector, policy_gflops_per_tile: float):
        from matseg.selector.plan import stage2_gflops

        for t in tables:
            if not t["labelled"].all():
                raise MatsegError("evaluate needs volumes labelled everywhere; some tiles have no labels")
        self.tables = tables
        self.names = tables[0]["names"]
        self.confusion = np.concatenate([t["confusion"] for t in tables])
        self.gflops = np.concatenate([t["gflops"] for t in tables])
        self.features = np.concatenate([t["features"] for t in tables])
        self.iou = tile_iou(self.confusion)
        self.offsets = np.cumsum([0] + [len(t["features"]) for t in tables])
        self.policy_gflops = policy_gflops_per_tile * len(self.features)
        self._stage2 = stage2_gflops
        self.selector = selector

    def cost(self, choice: np.ndarray) -> float:
        """GFLOPs ``matseg segment`` spends on this plan (cheap pass + selector + stage 2)."""
        total = float(self.gflops[:, 0].sum()) + self.policy_gflops
        for t, (a, b) in zip(self.tables, zip(self.offsets[:-1], self.offsets[1:])):
            extra = t["gflops"] - t["gflops"][:, :1]
            total += self._stage2(choice[a:b], t["grid"], extra, t["recompute"])[0]
        return total

    def miou(self, choice: np.ndarray) -> tuple[float, np.ndarray]:
        """The plan's mIoU over the phases the truth holds, as a real run's (docs/metrics.md);
        its per-phase IoU, NaN for a phase absent from the truth."""
        return plan_miou(self.confusion, choice), plan_iou(self.confusion, choice)

    def absent_from_truth(self) -> list[int]:
        """The phases (by value) no tile's truth holds."""
        return [int(k) for k in np.flatnonzero(self.confusion[:, 0].sum(axis=(0, 1)) == 0)]

    def point(self, label: str, choice: np.ndarray, gflops: float | None = None) -> dict:
        miou, per_phase = self.miou(choice)
        gflops = self.cost(choice) if gflops is None else gflops
        mix = {n: int((choice == k).sum()) for k, n in enumerate(self.names)}
        iou = [None if np.isnan(v) else float(v) for v in per_phase]  # null: absent from the truth
        return {"method": label, "miou": miou, "iou": iou, "gflops": gflops, "mix": mix}

    def alone(self, name: str) -> dict:
        """Candidate ``name`` run on every tile by itself, with no cheap pass or selector (each
        table's column holds the cheap pass plus the candidate; the cheap net is column 0)."""
        k = self.names.index(name)
        spent = self.gflops[:, k] - (self.gflops[:, 0] if k else 0.0)
        return self.point(f"all-{name}", np.full(len(self.features), k), float(spent.sum()))

    def oracle(self, lam: float, allowed: Sequence[int] | None = None) -> dict:
        """The best candidate per tile under the selector's reward at ``lam``, among the
        ``allowed`` columns (default: every candidate)."""
        r = reward(self.iou, self.gflops, lam)
        if allowed is not None:
            masked = np.full_like(r, -np.inf)
            masked[:, allowed] = r[:, allowed]
            r = masked
        return self.point("oracle", r.argmax(axis=1))

    def upgrade_until(self, order: np.ndarray, target: float) -> np.ndarray:
        """Upgrade tiles to the expensive net in ``order`` until the plan costs ``target`` GFLOPs."""
        k = self.names.index("expensive")
        lo, hi = 0, len(order)
        while lo < hi:  # the cost grows with every tile added: bisect on the count
            mid = (lo + hi + 1) // 2
            choice = np.zeros(len(self.features), int)
            choice[order[:mid]] = k
            if self.cost(choice) <= target:
                lo = mid
            else:
                hi = mid - 1
        choice = np.zeros(len(self.features), int)
        choice[order[:lo]] = k
        return choice


def evaluate(
    volumes: Sequence[str],
    output: str | os.PathLike,
    *,
    truths: Sequence[str] | None = None,
    truth_phases: Sequence[str] | None = None,
    weights: str | os.PathLike | None = None,
    lambdas: Sequence[float] = LAMBDAS,
    tile: Sequence[int] = DEFAULT_TILE,
    real_run: bool = True,
    overwrite: bool = False,
) -> dict:
    """Sweep λ and compare the selector with all baselines; write JSON and a Pareto plot.

    Parameters
    ----------
    volumes : sequence of str
        Image volumes with ground truth (``matseg sample`` stores carry their own).
    output : path
        Folder for ``evaluation.json``, ``pareto.png`` and the real run's output.
    truths : sequence of str, optional
        Label volume per image; default: each store's own ``labels/truth``.
    truth_phases : sequence of str, optional
        The names of the ``truths``' label values 0, 1, 2 ... (the weights' phases, each once),
        for truths that name none: they are then matched by name.
    lambdas : sequence of float
        The λ sweep.
    real_run : bool
        Also run ``matseg segment`` at the default λ and with the expensive net
        everywhere, for real (wall time, seam score, mIoU with blending).
    overwrite : bool
        Replace an earlier evaluation's folder at ``output`` (anything else is never replaced).

    Returns
    -------
    dict
        Everything written to ``evaluation.json``.
    """
    output = Path(output)
    if truths and len(truths) != len(volumes):
        raise MatsegError(
            f"{len(volumes)} volume(s) but {len(truths)} --truth; give one per volume, in order"
        )
    inputs = [("volume", v) for v in volumes] + [("--truth", t) for t in truths or ()]
    check_distinct(output, [*inputs, ("--weights", weights)])
    for lam in lambdas:
        check_number("--lambdas", lam, low=0.0, high=1.0)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        check_replaceable(output, ("evaluation",))
        if not overwrite:
            raise MatsegError(f"output {output} exists; pass --overwrite to replace it, or -o another folder")
    for volume in volumes:  # a missing or unreadable input: refused before any output exists
        open_volume(volume)
    if truth_phases is not None and not truths:
        raise MatsegError("--truth-phases names the phases of a --truth: give the truths too")
    for i, volume in enumerate(volumes):
        labels = open_labels(volume, truths[i] if truths else None, "give its labels with --truth")
        if truth_phases is not None:  # wrong names: refused before any output exists
            match_truth(labels.phases, weights_phases(weights), labels.source, truth_phases)
    if overwrite and output_kind(output) == "evaluation":  # back in place if this run fails
        with replacing(output, ("evaluation",)):
            return _evaluate(volumes, output, truths, truth_phases, weights, lambdas, tile, real_run)
    created = not output.exists()
    try:
        return _evaluate(volumes, output, truths, truth_phases, weights, lambdas, tile, real_run)
    except BaseException:
        if created and output_kind(output) == "evaluation":  # no empty or half-written folder is left
            remove_output(output, ("evaluation",))
        raise


def _evaluate(volumes, output: Path, truths, truth_phases, weights, lambdas, tile, real_run) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    (output / EVALUATION_MARKER).write_text(json.dumps({"volumes": list(volumes)}) + "\n")
    selector = load_selector(weights)
    lambdas = sorted(set(lambdas) | {selector.default_lambda})
    names = selector.candidates
    needed = {"cheap"} | {m for n in names for m in CANDIDATES[n].needs}
    models = {m: load_segmenter(m, weights) for m in sorted(needed)}
    check_pairing(selector, models)
    if "expensive" not in names:
        raise MatsegError("evaluate compares with the expensive net: the selector must offer 'expensive'")
    context = Context(models, phase_order=selector.phase_order)
    halo = halo_of("auto", context, names)  # the halo a segment run of these candidates reads
    started = time.perf_counter()
    tables = []
    for i, volume in enumerate(volumes):
        progress_log.info("evaluate: every candidate on every tile of %s", volume)
        truth = truths[i] if truths else None
        tables.append(tile_table(volume, truth, context, names, tile, halo, truth_phases=truth_phases))
    data = _Volumes(tables, selector, selector.gflops(1))
    table_seconds = time.perf_counter() - started
    n = len(data.features)
    all_expensive, all_cheap = data.alone("expensive"), data.alone("cheap")
    uncertainty_order = np.argsort(-data.features[:, 0], kind="stable")
    rng = np.random.default_rng(0)
    sweep = []
    for lam in lambdas:
        choice = choose_by_lambda(selector, data.features, lam)
        policy = data.point("selector", choice)
        target = policy["gflops"]
        cascade = data.point("cascade", data.upgrade_until(uncertainty_order, target))
        randoms = [
            data.point("random", data.upgrade_until(rng.permutation(n), target))
            for _ in range(RANDOM_REPEATS)
        ]
        random_point = {
            "method": "random",
            "miou": float(np.mean([r["miou"] for r in randoms])),
            "miou_std": float(np.std([r["miou"] for r in randoms])),
            "gflops": float(np.mean([r["gflops"] for r in randoms])),
        }
        oracle = data.oracle(lam)
        row = {
            "lambda": lam,
            "selector": policy,
            "cascade": cascade,
            "random": random_point,
            "oracle": oracle,
        }
        for point in (policy, cascade, random_point, oracle):
            _add_efficiency(point, all_expensive)
        sweep.append(row)
        progress_log.info(
            "evaluate: lambda %g: selector mIoU %.4f at %.0f GFLOPs (%.1f %% of all-expensive); "
            "cascade %.4f, random %.4f, oracle %.4f",
            lam, policy["miou"], policy["gflops"], 100 * policy["gflops"] / all_expensive["gflops"],
            cascade["miou"], random_point["miou"], oracle["miou"],
        )  # fmt: skip
    for point in (all_cheap, all_expensive):
        _add_efficiency(point, all_expensive)
    result = {
        "volumes": list(volumes),
        "tile": list(tile),
        "halo": halo,
        "tiles": n,
        "candidates": list(names),
        "phases": list(models["cheap"].phases),
        "absent_from_truth": [models["cheap"].phases[k] for k in data.absent_from_truth()],
        "selector": selector.describe(),
        "default_lambda": selector.default_lambda,
        "all_cheap": all_cheap,
        "all_expensive": all_expensive,
        "sweep": sweep,
        "table_seconds": table_seconds,
    }
    if real_run:
        result["real"] = _real_runs(volumes, truths, truth_phases, output, weights, tile)
    (output / "evaluation.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    pareto_plot(result, output / "pareto.png")
    return result


def _add_efficiency(point: dict, all_expensive: dict) -> None:
    point["iou_per_gflop"] = point["miou"] / point["gflops"]
    point["gain_over_all_expensive"] = point["iou_per_gflop"] / (
        all_expensive["miou"] / all_expensive["gflops"]
    )
    point["gflops_fraction"] = point["gflops"] / all_expensive["gflops"]


def _real_runs(volumes, truths, truth_phases, output, weights, tile) -> dict:
    """The default λ and all-expensive, run for real on every volume."""
    import dask.array as da
    import zarr

    from matseg.metrics import confusion_matrix, summarize, truth_as_phases
    from matseg.pipeline.run import segment

    runs = {}
    for model in ("auto", "expensive"):
        total_cm, gflops, seconds, seams = None, 0.0, 0.0, []
        for i, volume in enumerate(volumes):
            out = output / f"{model}-{i}.zarr"
            remove_output(out, ("segment",))  # timed from scratch: no stored cheap pass reused
            report = segment(volume, out, model=model, weights=weights, tile=tile)
            labels = open_labels(volume, truths[i] if truths else None, "give its labels with --truth")
            match = match_truth(labels.phases, report["phases"], labels.source, truth_phases)
            truth = truth_as_phases(labels.data, match)
            pred = da.from_zarr(zarr.open_group(str(out), mode="r")["labels/phases/0"])
            cm = confusion_matrix(pred, truth.rechunk(pred.chunksize), len(report["phases"]))
            total_cm = cm if total_cm is None else total_cm + cm
            gflops += report["gflops"]
            seconds += report["timings"]["total_s"]
            seams.append(report["seam"]["score"])
        summary = summarize(total_cm, report["phases"])
        runs[model] = {
            "miou": summary["miou"],
            "iou": summary["iou"],
            "gflops": gflops,
            "seconds": seconds,
            "seam": seams,
        }
        progress_log.info(
            "evaluate: real run --model %s: mIoU %.4f, %.0f GFLOPs, %.1f s",
            model,
            summary["miou"],
            gflops,
            seconds,
        )
    return runs


def _json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def pareto_plot(result: dict, path: str | os.PathLike) -> None:
    """mIoU against GFLOPs: the selector's λ sweep, the baselines at equal GFLOPs, the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sweep = result["sweep"]
    for method, style in (("selector", "o-"), ("cascade", "s--"), ("random", "^:"), ("oracle", "d-")):
        points = sorted((row[method]["gflops"], row[method]["miou"]) for row in sweep)
        ax.plot(*zip(*points), style, label=method, alpha=0.9)
    for key, marker in (("all_cheap", "X"), ("all_expensive", "P")):
        p = result[key]
        ax.plot(p["gflops"], p["miou"], marker, markersize=11, label=key.replace("_", "-"))
    default = next((row for row in sweep if row["lambda"] == result["default_lambda"]), None)
    if default:
        p = default["selector"]
        ax.annotate(
            f"default λ={result['default_lambda']}",
            (p["gflops"], p["miou"]),
            textcoords="offset points",
            xytext=(8, -14),
        )
    ax.set_xlabel("GFLOPs spent (whole test set)")
    ax.set_ylabel("mIoU")
    ax.set_title("matseg selector vs baselines at equal GFLOPs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
