"""Can the reference's probabilities stand in for the truth within 0.01 mIoU? The audit's
estimator, checked cell by cell against the truth on the coverage study's 40 volumes.

    python benchmarks/audit_truth.py [--work DIR] [--cells 48] [--out docs/audit-truth.json]

On each volume of `benchmarks/audit_coverage.py` (eight imaging kinds, calibration seeds
7000..., validation seeds 7100...), ``--cells`` random cells of the audit's size
(``AUDIT_CELL``, one slice, ``AUDIT_HALO`` of context) are segmented by every candidate the
audit measures, as the audit does. On those cells, for each candidate c the mIoU change
"c instead of the reference" is computed twice: against the truth, and as the audit estimates
it (expected confusion matrices under a model of the truth). Four models of the truth:

- ``T``: the reference's probabilities softened by a temperature T (the shipped estimator;
  T 1 ... 6);
- ``votes``: the reference's log-probabilities scaled by a, plus a weight per candidate
  for the phase that candidate says (a product of experts), fitted by maximum likelihood
  of the true phase on the calibration volumes' voxels;
- ``votes-disagreeing``: the same fitted on the voxels where some candidate disagrees with
  the reference (where the estimate is decided);
- ``T(disagreement)``: a temperature that falls as the candidate disagrees more with the
  reference (T = T0 (d / 0.05)^-g, clipped to 1 ... 6), fitted to the calibration volumes'
  true changes.

Also per volume: on the voxels where a candidate and the reference disagree, how often each
is right, against what the T = 2 model says. The models are fitted on the calibration
volumes and scored on the validation volumes: bias (mean of estimate minus truth), mean
absolute error and largest error of each candidate's change.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from audit_coverage import KINDS, SHAPE, volumes

from matseg.candidates.registry import CANDIDATES, Context
from matseg.io.read import open_volume
from matseg.metrics import iou_per_phase
from matseg.models.store import load_segmenter
from matseg.normalize import intensity_range
from matseg.pipeline.audit import AUDIT_CELL, AUDIT_HALO
from matseg.sample import write_sample
from matseg.selector.policy import load_selector
from matseg.synth import SampleConfig

REFERENCE = "expensive"
MEASURED = ("cheap", "medium", "classical")  # what the audit measures beside the reference
TEMPERATURES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def cells_of(path: Path, seed: int, n_cells: int, context_of) -> dict:
    """Every measured candidate's labels, the reference's probabilities and the truth on
    ``n_cells`` random cells of one volume."""
    volume, truth = open_volume(path), open_volume(path, labels=True).data
    norm = intensity_range(volume, 3)
    context = context_of(norm)
    rng = np.random.default_rng(seed)
    z = rng.integers(0, volume.shape[0], n_cells)
    y = rng.integers(0, volume.shape[1] // AUDIT_CELL, n_cells) * AUDIT_CELL
    x = rng.integers(0, volume.shape[2] // AUDIT_CELL, n_cells) * AUDIT_CELL
    out: dict[str, list] = {"truth": [], "probs": [], **{c: [] for c in (*MEASURED, REFERENCE)}}
    for zi, yi, xi in zip(z, y, x):
        ya, yb = max(yi - AUDIT_HALO, 0), min(yi + AUDIT_CELL + AUDIT_HALO, volume.shape[1])
        xa, xb = max(xi - AUDIT_HALO, 0), min(xi + AUDIT_CELL + AUDIT_HALO, volume.shape[2])
        crop = norm(np.asarray(volume.data[zi : zi + 1, ya:yb, xa:xb]))
        core = (slice(None), slice(yi - ya, yi - ya + AUDIT_CELL), slice(xi - xa, xi - xa + AUDIT_CELL))
        for name in (*MEASURED, REFERENCE):
            probs = CANDIDATES[name].run(context, crop)[0][core]
            out[name].append(probs.argmax(0).astype(np.uint8))
            if name == REFERENCE:
                out["probs"].append(probs.astype(np.float32))
        out["truth"].append(np.asarray(truth[zi, yi : yi + AUDIT_CELL, xi : xi + AUDIT_CELL]))
    return {key: np.stack(value) for key, value in out.items()}


def flat(cells: dict) -> dict:
    """Per voxel: log-probabilities of the reference (n, k), every candidate's label, truth."""
    k = cells["probs"].shape[1]
    logp = np.log(np.clip(cells["probs"], 1e-7, 1)).transpose(0, 2, 3, 1).reshape(-1, k)
    labels = {c: cells[c].ravel().astype(np.int64) for c in (*MEASURED, REFERENCE)}
    return {"logp": logp, "labels": labels, "truth": cells["truth"].ravel().astype(np.int64), "k": k}


def truth_model(v: dict, scale: float, votes=(0.0,) * len(MEASURED)) -> np.ndarray:
    """q(phase | voxel) ∝ exp(scale · log p_ref + Σ_c votes_c [label_c = phase])."""
    logit = scale * v["logp"]
    rows = np.arange(len(logit))
    for weight, c in zip(votes, MEASURED):
        logit[rows, v["labels"][c]] += weight
    logit -= logit.max(axis=1, keepdims=True)
    q = np.exp(logit)
    return q / q.sum(axis=1, keepdims=True)


def miou(confusion: np.ndarray) -> float:
    return float(np.nanmean(iou_per_phase(confusion[None])))


def expected_confusion(labels: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.stack([q[labels == i].sum(axis=0) for i in range(q.shape[1])])


def true_confusion(labels: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + truth, minlength=k * k).reshape(k, k).astype(float)


def changes(v: dict, q: np.ndarray) -> dict:
    """Each candidate's mIoU change against the reference: (true, estimated under ``q``)."""
    ref, k = v["labels"][REFERENCE], v["k"]
    true_ref, est_ref = miou(true_confusion(ref, v["truth"], k)), miou(expected_confusion(ref, q))
    return {
        c: (
            miou(true_confusion(v["labels"][c], v["truth"], k)) - true_ref,
            miou(expected_confusion(v["labels"][c], q)) - est_ref,
        )
        for c in MEASURED
    }


def fit_votes(vols: list[dict], disagreeing: bool, n: int = 60000, seed: int = 0) -> tuple:
    """The scale and vote weights of :func:`truth_model` by maximum likelihood of the truth."""
    rng = np.random.default_rng(seed)
    logp, votes, truth = [], [], []
    for v in vols:
        pool = np.arange(len(v["truth"]))
        if disagreeing:
            ref = v["labels"][REFERENCE]
            pool = np.flatnonzero(np.any([v["labels"][c] != ref for c in MEASURED], axis=0))
        pick = rng.choice(pool, min(n, len(pool)), replace=False)
        logp.append(v["logp"][pick])
        votes.append(np.stack([np.eye(v["k"])[v["labels"][c][pick]] for c in MEASURED], axis=1))
        truth.append(v["truth"][pick])
    logp_t, votes_t = torch.tensor(np.concatenate(logp)), torch.tensor(np.concatenate(votes))
    truth_t = torch.tensor(np.concatenate(truth))
    params = torch.zeros(1 + len(MEASURED), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=200)

    def closure():
        optimiser.zero_grad()
        logit = params[0].exp() * logp_t.double() + torch.einsum("c,ncp->np", params[1:], votes_t.double())
        loss = torch.nn.functional.cross_entropy(logit, truth_t)
        loss.backward()
        return loss

    optimiser.step(closure)
    found = params.detach().numpy()
    return float(np.exp(found[0])), tuple(float(w) for w in found[1:])


def disagreement_temperature(d: float, t0: float, g: float) -> float:
    return float(np.clip(t0 * (d / 0.05) ** (-g), 1.0, 6.0))


def scores(rows: list[dict], model: str) -> dict:
    """Bias, mean absolute error and largest error of each candidate's estimated change."""
    out = {}
    for c in MEASURED:
        err = np.array([r["changes"][model][c][1] - r["changes"][model][c][0] for r in rows])
        out[c] = {
            "bias": float(err.mean()),
            "mae": float(np.abs(err).mean()),
            "max": float(np.abs(err).max()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the generated volumes here (reused)")
    parser.add_argument("--cells", type=int, default=48, help="cells per volume")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    selector = load_selector()
    models = {m: load_segmenter(m) for m in ("cheap", "medium", "expensive")}

    def context_of(norm):
        return Context(models, norm.thresholds, selector.phase_order)

    rows, data = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for row in volumes():
            path = work / f"{row['kind']}-{row['seed']}.zarr"
            if not path.exists():
                write_sample(path, SHAPE, row["seed"], SampleConfig(**KINDS[row["kind"]]))
            data.append(flat(cells_of(path, row["seed"], args.cells, context_of)))
            rows.append(dict(row))
            print(f"{row['kind']} {row['seed']}: cells done", flush=True)
    calibration = [v for v, r in zip(data, rows) if r["split"] == "calibration"]
    fitted = {
        "votes": fit_votes(calibration, disagreeing=False),
        "votes-disagreeing": fit_votes(calibration, disagreeing=True),
    }
    for v, row in zip(data, rows):
        row["changes"] = {f"T{t}": changes(v, truth_model(v, 1 / t)) for t in TEMPERATURES}
        row["changes"].update({name: changes(v, truth_model(v, *p)) for name, p in fitted.items()})
        q2 = truth_model(v, 0.5)
        ref = v["labels"][REFERENCE]
        row["disagreement"] = {}
        for c in MEASURED:
            mine = v["labels"][c]
            apart = mine != ref
            row["disagreement"][c] = {
                "fraction": float(apart.mean()),
                "reference_right": float(np.mean(v["truth"][apart] == ref[apart])),
                "candidate_right": float(np.mean(v["truth"][apart] == mine[apart])),
                "model_reference": float(q2[apart, ref[apart]].mean()),
                "model_candidate": float(q2[apart, mine[apart]].mean()),
            }
    # T(disagreement): a temperature per candidate and volume from how often it disagrees
    grid = [(t0, g) for t0 in np.linspace(1.5, 4.0, 26) for g in np.linspace(0.0, 2.0, 21)]

    def interpolated(row, c, t0, g):
        t = disagreement_temperature(row["disagreement"][c]["fraction"], t0, g)
        est = [row["changes"][f"T{s}"][c][1] for s in TEMPERATURES]
        return row["changes"]["T2.0"][c][0], float(np.interp(t, TEMPERATURES, est))

    cal_rows = [r for r in rows if r["split"] == "calibration"]
    t0, g = min(
        grid,
        key=lambda p: sum(
            (e - t) ** 2 for r in cal_rows for c in ("cheap", "medium") for t, e in [interpolated(r, c, *p)]
        ),
    )
    for row in rows:
        row["changes"]["T(disagreement)"] = {c: interpolated(row, c, t0, g) for c in MEASURED}
    result = {
        "fitted": {
            **{k: {"scale": s, "votes": dict(zip(MEASURED, w))} for k, (s, w) in fitted.items()},
            "T(disagreement)": {"t0": float(t0), "g": float(g)},
        },  # fmt: skip
        "scores": {
            split: {m: scores([r for r in rows if r["split"] == split], m) for m in rows[0]["changes"]}
            for split in ("calibration", "validation")
        },
        "volumes": rows,
    }
    print(
        f"{'model':18} " + "  ".join(f"{c + ' bias / mae / max':>27}" for c in MEASURED) + "   (validation)"
    )
    for m, s in result["scores"]["validation"].items():
        print(
            f"{m:18} "
            + "  ".join(f"{s[c]['bias']:+9.4f} {s[c]['mae']:8.4f} {s[c]['max']:8.4f}" for c in MEASURED)
        )
    print("fitted:", json.dumps(result["fitted"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
