"""One table of metrics for one label volume (the segmentation, a draw of it, or a sub-volume)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from matseg.microstructure.blocks import Reader, Region, as_dask
from matseg.microstructure.connectivity import AXES, connectivity
from matseg.microstructure.interfaces import local_metrics
from matseg.microstructure.thickness import quantiles, thickness_histograms
from matseg.microstructure.tortuosity import block_tortuosity, tortuosity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What to measure and how; shared by the segmentation, its draws and its sub-volumes."""

    phase_names: tuple[str, ...]
    voxel_size: tuple[float, float, float]
    unit: str
    transport_phase: int | None
    tpb_phases: tuple[int, int, int] | None
    max_radius: int = 12
    block: tuple[int, int, int] = (64, 128, 128)
    tol: float = 1e-8
    device: str | None = None
    transport_block: tuple[int, int, int] | None = None

    @property
    def n_phases(self) -> int:
        return len(self.phase_names)


def row(metric: str, phases: str, axis: str, unit: str) -> str:
    """The key of one metric in a table: ``metric/phases/axis/unit``."""
    return f"{metric}/{phases}/{axis}/{unit}"


def local_table(reader: Reader, settings: Settings, within: Region | None = None) -> dict[str, float]:
    """Volume fractions, specific surface areas, interfacial areas and TPB density."""
    names, unit = settings.phase_names, settings.unit
    local = local_metrics(
        reader, settings.n_phases, settings.voxel_size, settings.tpb_phases, settings.block, within
    )
    table = {}
    for i, name in enumerate(names):
        table[row("volume_fraction", name, "", "1")] = float(local["fraction"][i])
    for i, name in enumerate(names):
        table[row("specific_surface_area", name, "", f"1/{unit}")] = (
            local["surface_area"][i] / local["volume"]
        )
    for (i, j), area in local["interface_area"].items():
        table[row("interfacial_area", f"{names[i]}|{names[j]}", "", f"1/{unit}")] = area / local["volume"]
    if settings.tpb_phases is not None:
        triple = "|".join(names[p] for p in settings.tpb_phases)
        table[row("tpb_density", triple, "", f"1/{unit}^2")] = local["tpb_length"] / local["volume"]
    return table


def full_table(
    reader: Reader,
    settings: Settings,
    transport: bool = True,
    connected: bool = True,
    draw: int | None = None,
) -> tuple[dict[str, float], dict]:
    """Every metric of the whole volume, and the size histograms and solver details behind them
    (``draw``: the number of the uncertainty draw ``reader`` is, whose skipped solves are debug lines:
    the segmentation's own says it once)."""
    names, unit = settings.phase_names, settings.unit
    table = local_table(reader, settings)
    sizes = thickness_histograms(
        reader, settings.n_phases, settings.voxel_size, settings.max_radius, settings.block
    )
    for i, name in enumerate(names):
        d10, d50, d90 = quantiles(sizes["counts"][i], sizes["diameters"])
        for key, value in (("d10", d10), ("d50", d50), ("d90", d90)):
            table[row(f"thickness_{key}", name, "", unit)] = value
        counts = sizes["counts"][i]
        # thicker features read as the cap: this share says whether --max-radius is large enough
        capped = float(counts[-1] / counts.sum()) if counts.sum() else float("nan")
        table[row("thickness_capped_fraction", name, "", "1")] = capped
    links = connectivity(as_dask(reader, settings.block), settings.n_phases) if connected else {}
    for i, name in enumerate(names if connected else ()):
        for axis in AXES:
            for kind, value in links[i][axis].items():
                table[row(f"{kind}_fraction", name, axis, "1")] = value
    solves = []
    if transport and settings.transport_phase is not None:
        phase = settings.transport_phase
        if settings.transport_block is None:
            mask = reader.whole(settings.block[0]) == phase
        for axis, name in enumerate(AXES):
            if settings.transport_block is None:
                solve = tortuosity(mask, axis, settings.voxel_size, settings.tol, device=settings.device)
            else:
                solve = block_tortuosity(
                    lambda region: reader.read(region) == phase,
                    reader.shape,
                    axis,
                    settings.transport_block,
                    settings.voxel_size,
                    settings.tol,
                    settings.device,
                )
            solves.append(solve)
            if solve["skipped"]:  # said plainly: 0 iterations and residual 0 would read as a solve
                log.log(
                    logging.INFO if draw is None else logging.DEBUG,
                    "%s%s; tau inf, D_eff/D_bulk 0",
                    "" if draw is None else f"draw {draw}: ",
                    solve["skipped"].replace("the phase", f"phase {names[phase]}"),
                )
            table[row("tortuosity_factor", names[phase], name, "1")] = float(solve["tau"])
            table[row("relative_diffusivity", names[phase], name, "1")] = float(solve["relative_diffusivity"])
    details = {
        "sizes": {"diameters": sizes["diameters"].tolist(), "counts": sizes["counts"].tolist()},
        "solves": solves,
    }
    return table, details


def rev_curves(reader: Reader, settings: Settings, steps=(0.25, 0.4, 0.55, 0.7, 0.85, 1.0)) -> dict:
    """Local metrics on centred sub-volumes whose sides are ``steps`` of the volume's."""
    shape = np.asarray(reader.shape)
    curves = {"edge_fraction": list(steps), "voxels": [], "tables": []}
    for step in steps:
        sides = np.maximum(np.round(shape * step).astype(int), 2)
        starts = (shape - sides) // 2
        within = tuple(slice(int(a), int(a + s)) for a, s in zip(starts, sides))
        curves["voxels"].append(int(np.prod(sides)))
        curves["tables"].append(local_table(reader, settings, within))
    return curves
