"""``matseg.measure``: every metric of a label volume, with intervals from the segmentation's uncertainty."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import dask
import numpy as np

from matseg._version import __version__
from matseg.errors import MatsegError
from matseg.io.guard import MEASURE_REPORT
from matseg.microstructure.blocks import Reader
from matseg.microstructure.calibration import calibrated_interval
from matseg.microstructure.calibration import load as load_calibration
from matseg.microstructure.metrics import Settings, full_table, rev_curves
from matseg.microstructure.source import LabelSource, open_labels
from matseg.microstructure.tortuosity import solve_memory, split
from matseg.microstructure.uncertainty import Perturbed
from matseg.validate import check_number

logger = logging.getLogger(__name__)

REPORT_JSON, REPORT_CSV = MEASURE_REPORT, "measure.csv"
FILES = (REPORT_JSON, REPORT_CSV, "sizes.png", "rev.png")  # every file a measure run may write
MAX_PHASES = 16


def _phase_index(name: str, names: tuple[str, ...], option: str) -> int:
    if name in names:
        return names.index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise MatsegError(f"{option} '{name}' is not a phase of this volume; phases: {', '.join(names)}")


def _settings(
    source: LabelSource, transport_phase, tpb, max_radius, block, tol, device, transport_block
) -> Settings:
    low, top = (int(v) for v in dask.compute(source.labels.min(), source.labels.max()))
    if low < 0 or top >= MAX_PHASES:
        raise MatsegError(
            f"{source.source} holds labels {low}..{top}; matseg measure expects phase labels "
            f"0..{MAX_PHASES - 1} (one value per phase, not one per particle)"
        )
    names = list(source.phase_names)
    names += [f"phase{i}" for i in range(len(names), top + 1)]
    names = tuple(names)
    if len(names) < 2:
        raise MatsegError(
            f"{source.source} holds one phase only ({names[0]}); there is nothing to measure between phases"
        )
    if transport_phase is None:
        transport = names.index("pore") if "pore" in names else 0
    else:
        transport = _phase_index(str(transport_phase), names, "--phase")
    if tpb is None:
        triple = (0, 1, 2) if len(names) == 3 else None
    else:
        triple = tuple(_phase_index(str(p), names, "--tpb") for p in tpb)
        if len(triple) != 3 or len(set(triple)) != 3:
            raise MatsegError(f"--tpb {','.join(map(str, tpb))}: name three different phases")
    if max_radius < 1:
        raise MatsegError(f"--max-radius {max_radius}: give at least 1 voxel")
    try:
        block = tuple(int(v) for v in block)
    except (TypeError, ValueError):
        raise MatsegError(f"block {block!r}: give three sides Z,Y,X") from None
    if len(block) != 3 or min(block) < 1:
        raise MatsegError(f"block {block}: give three sides Z,Y,X of at least 1 voxel")
    _check_device(device)
    if transport_block is not None:
        transport_block = tuple(int(v) for v in transport_block)
        if len(transport_block) != 3 or min(transport_block) < 3:
            raise MatsegError(
                f"--transport-block {','.join(map(str, transport_block))}: give three sides Z,Y,X of "
                "at least 3 voxels each"
            )
    return Settings(
        names,
        source.voxel_size,
        source.unit,
        transport,
        triple,
        max_radius,
        block,
        tol,
        device,
        transport_block,
    )


def _check_device(device) -> None:
    """A torch device the diffusion solve can run on here (None: a GPU when present)."""
    if device is None:
        return
    import torch

    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise MatsegError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if where.type not in ("cpu", "cuda") or (where.type == "cuda" and not torch.cuda.is_available()):
        raise MatsegError(f"device {device}: the solve runs on cpu, or cuda where torch sees a GPU")


def interval(value: float, draws: list[float], width: float = 2.0) -> tuple[float | None, float | None]:
    """``value`` plus or minus ``width`` times the draws' root-mean-square deviation from it (>= 0).

    Centred on the segmentation's own value, not on the draws: random draws
    roughen interfaces, so their mean is biased for some metrics (areas up); their
    spread around the value, bias included, is the width, on both sides.
    """
    values = np.asarray(draws, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size or not math.isfinite(value):
        return None, None
    spread = width * float(np.sqrt(np.mean((values - value) ** 2)))
    return max(0.0, value - spread), value + spread


def measure(
    source: str | os.PathLike,
    labels: bool = False,
    voxel_size: tuple[float, float, float] | None = None,
    unit: str | None = None,
    phase: str | int | None = None,
    tpb: tuple | None = None,
    samples: int = 8,
    seed: int = 0,
    correlation: float = 2.0,
    max_radius: int = 12,
    transport: bool = True,
    connectivity: bool = True,
    rev: bool = True,
    tol: float = 1e-8,
    device: str | None = None,
    block: tuple[int, int, int] = (64, 128, 128),
    transport_block: tuple[int, int, int] | None = None,
    calibrated: bool = True,
) -> dict:
    """Microstructure metrics of a segmentation, each with an interval from its own uncertainty.

    Parameters
    ----------
    source : str or path
        A ``matseg segment`` output, or (``labels=True``) any integer label volume.
    labels : bool
        Measure ``source`` as a plain label volume (no intervals).
    voxel_size, unit : optional
        Physical voxel size (Z, Y, X) and its unit, when the store records none.
    phase : str or int, optional
        Phase for the diffusion solve (default: ``pore``, else phase 0).
    tpb : three phase names or indices, optional
        Triple for the triple-phase boundary (default: the three phases of a
        three-phase volume).
    samples : int
        Label volumes drawn from the uncertainty (0: no intervals).
    seed, correlation : int, float
        Seed of the draws and the correlation length (voxels) of their noise.
    max_radius : int
        Largest inscribed-sphere radius (voxels) of the size distributions.
    transport, connectivity, rev : bool
        Run the diffusion solves; the global labelling (connectivity); the
        representative-volume curves. Without the first two every metric streams.
    tol : float
        Relative residual at which the conjugate-gradient solve stops.
    device : str, optional
        Torch device for the solve (default: a GPU when present).
    block : (int, int, int)
        Block shape of the streamed metrics.
    transport_block : (int, int, int), optional
        Solve the diffusion on sub-volumes of at most this shape, one at a time,
        combined in series along the axis and in parallel across it (default:
        the whole volume in one solve).
    calibrated : bool
        Widen the draws' intervals by the margins fitted on volumes with truth
        (``matseg.microstructure.calibration``); False: the draws' spread alone.

    Returns
    -------
    dict
        ``rows``: one dict per metric (``metric``, ``phases``, ``axis``, ``unit``,
        ``value``, ``low``, ``high``); ``draws`` (each draw's values by row key
        ``metric/phases/axis/unit``); ``sizes``, ``rev``, ``solves``, ``input``,
        ``uncertainty`` (the scheme and draws) and ``seconds``.
    """
    start = time.perf_counter()
    if samples < 0:
        raise MatsegError(f"--samples {samples}: give 0 (no intervals) or more")
    check_number("--tol", tol, low=0.0, high=1.0, open_low=True, open_high=True)

    src = open_labels(source, labels=labels, voxel_size=voxel_size, unit=unit)
    settings = _settings(src, phase, tpb, max_radius, block, tol, device, transport_block)
    reader = Reader(src.labels)
    solved = src.shape
    if transport_block is not None:
        solved = tuple(max(s.stop - s.start for s in split(n, b)) for n, b in zip(src.shape, transport_block))
    if transport:
        held = (
            "the volume"
            if transport_block is None
            else f"one block of {'x'.join(map(str, solved))} at a time"
        )
        logger.info("the diffusion solve holds %s in memory: ~%.0f MiB", held, solve_memory(solved) / 2**20)
    table, details = full_table(reader, settings, transport, connectivity)
    draws = []
    if src.uncertainty is not None and samples > 0:
        for k in range(samples):
            logger.info("draw %d of %d", k + 1, samples)
            perturbed = Perturbed(src.labels, src.uncertainty, settings.n_phases, k, seed, correlation)
            draws.append(full_table(perturbed, settings, transport, connectivity, draw=k + 1)[0])
    for key, stuck in stuck_in_draws(table, draws).items():  # the segmentation's own is said already
        _, phase, axis, _ = key.split("/", 3)
        logger.info(
            "phase %s does not percolate along %s in %d of %d draws: its tortuosity interval reaches inf",
            phase, axis, stuck, len(draws),
        )  # fmt: skip
    calibration = load_calibration() if calibrated and draws else None
    not_calibrated = calibration and uncalibrated_reason(src)
    if not_calibrated:  # margins of another segmenter's errors would mislead: the draws alone
        logger.warning("%s: intervals from the draws alone (calibration not applied)", not_calibrated)
        calibration = None
    rows = []
    for key, value in table.items():
        metric, phases, axis, unit_text = key.split("/", 3)
        low, high = calibrated_interval(
            metric, value, [d[key] for d in draws if key in d], calibration, 2 * min(src.voxel_size)
        )
        rows.append(
            {
                "metric": metric,
                "phases": phases,
                "axis": axis,
                "unit": unit_text,
                "value": float(value),
                "low": low,
                "high": high,
            }
        )
    report = {
        "matseg_version": __version__,
        "input": {
            "source": src.source,
            "shape": list(src.shape),
            "phases": list(settings.phase_names),
            "voxel_size": list(src.voxel_size),
            "unit": src.unit,
            "voxel_size_from": src.voxel_size_from,
        },
        "settings": {
            "transport_phase": settings.phase_names[settings.transport_phase] if transport else None,
            "tpb_phases": [settings.phase_names[p] for p in settings.tpb_phases]
            if settings.tpb_phases
            else None,
            "max_radius_voxels": max_radius,
            "tolerance": tol,
            "block": list(block),
            "transport_block": list(transport_block) if transport_block else None,
        },
        "uncertainty": {
            "samples": len(draws),
            "seed": seed,
            "correlation_voxels": correlation,
            "scheme": "entropy-driven boundary re-assignment (docs/measure.md)"
            if draws
            else "none: no uncertainty image or samples=0",
            "calibration": {k: calibration[k] for k in ("level", "fitted_on", "margins")}
            if calibration
            else None,
            "calibration_not_applied": not_calibrated or None,
        },
        "rows": rows,
        "draws": draws,
        "sizes": details["sizes"],
        "solves": details["solves"],
        "solve_memory_bytes": solve_memory(solved) if transport else 0,
    }
    if rev:
        report["rev"] = rev_curves(reader, settings)
    report["seconds"] = time.perf_counter() - start
    return report


def stuck_in_draws(table: dict[str, float], draws: list[dict[str, float]]) -> dict[str, int]:
    """Tortuosities the segmentation solved (finite) but some uncertainty draws could not (the
    phase does not percolate in them): {key: number of such draws}."""
    stuck = {}
    for key, value in table.items():
        if key.startswith("tortuosity_factor/") and math.isfinite(value):
            n = sum(1 for d in draws if key in d and not math.isfinite(d[key]))
            if n:
                stuck[key] = n
    return stuck


def write_report(report: dict, folder: str | os.PathLike) -> list[Path]:
    """Write ``measure.json``, ``measure.csv`` and the plots into ``folder``; return the files.

    An earlier run's files that this report does not rewrite (``rev.png`` of a run with
    representative-volume curves) are removed, so the folder holds this run's files only."""
    from matseg.microstructure.plots import plot_rev, plot_sizes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / REPORT_JSON, folder / REPORT_CSV, folder / "sizes.png"]
    files[0].write_text(json.dumps(_finite(report), indent=1, default=_jsonable))
    with open(files[1], "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["metric", "phases", "axis", "unit", "value", "low", "high"]
        )
        writer.writeheader()
        writer.writerows(report["rows"])
    plot_sizes(report).savefig(files[2], dpi=110)
    if "rev" in report:
        files.append(folder / "rev.png")
        plot_rev(report).savefig(files[3], dpi=110)
    for name in set(FILES) - {f.name for f in files}:  # an earlier run's, not this one's
        (folder / name).unlink(missing_ok=True)
    return files


def _finite(value):
    """The report with infinities and NaN as null, for strict JSON (tau is inf without percolation)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def uncalibrated_reason(src) -> str | None:
    """Why the shipped calibration does not fit ``src``, or None where it does. Its margins were
    fitted on segmentations by the bundled weights: a segmentation by other nets, or by the
    classical candidate alone, makes other errors, which those margins do not measure."""
    from matseg.models.store import default_weights_dir, read_manifest

    if src.made_by is None:
        return None
    if not src.made_by:
        return (
            f"{src.source} was segmented without networks; the calibration margins belong to the "
            "bundled weights"
        )
    bundled = {e.get("sha256") for e in read_manifest(default_weights_dir()).values() if isinstance(e, dict)}
    if not set(src.made_by) <= bundled:
        return (
            f"{src.source} was segmented with other weights than the bundled ones, whose errors the "
            "calibration margins measure"
        )
    return None
