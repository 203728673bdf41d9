"""The plan: which candidate runs on which tile, and what that costs in GFLOPs.

Pure bookkeeping over the tile grid: the per-tile cost of each candidate (halo
included), the cost of a whole plan including the blending it causes, and the
choice itself, by λ through the policy or under a budget by expected gain per
GFLOP.
"""

from __future__ import annotations

import numpy as np

from matseg.candidates.registry import CANDIDATES, Context
from matseg.errors import MatsegError
from matseg.selector.policy import Selector, choose_by_budget, choose_by_lambda
from matseg.tiling import TileGrid


def tile_shapes(grid: TileGrid) -> list[tuple[int, int, int]]:
    """(slices, height, width) of every tile with its halo, in grid order."""
    shapes = []
    for index in grid.indices():
        region = grid.region(index)
        halo = grid.halo_of(index)
        n = region[0].stop - region[0].start if len(region) == 3 else 1
        h = region[-2].stop - region[-2].start + sum(halo[-2])
        w = region[-1].stop - region[-1].start + sum(halo[-1])
        shapes.append((n, h, w))
    return shapes


def stage2_gflops(
    choice: np.ndarray, grid: TileGrid, candidate_gflops: np.ndarray, recompute_gflops: np.ndarray
) -> tuple[float, np.ndarray]:
    """GFLOPs stage 2 adds for a plan, and which tiles it rewrites.

    Costly tiles run their candidate; a tile is rewritten when it or a neighbour
    ran a costly candidate; the cheap pass is recomputed (for blending) on every
    rewritten tile whose 3 x 3 neighbourhood, itself included, kept the cheap pass
    somewhere (the rule :func:`matseg.segment` runs tile by tile).
    """
    from scipy.ndimage import maximum_filter

    footprint = np.zeros((1,) * (len(grid.grid_shape) - 2) + (3, 3), bool)
    footprint[..., :, :] = True
    plan = choice.reshape(grid.grid_shape)
    costly = plan > 0
    near_costly = maximum_filter(costly, footprint=footprint, mode="constant")
    near_cheap = maximum_filter(~costly, footprint=footprint, mode="constant")
    rewritten = costly | near_costly
    recompute = rewritten & near_cheap
    flat = choice.astype(int)
    total = float(candidate_gflops[np.arange(len(flat)), flat][flat > 0].sum())
    total += float(recompute_gflops[recompute.ravel()].sum())
    return total, rewritten.ravel()


def with_choice(plan: dict, choice: np.ndarray, grid: TileGrid) -> dict:
    """``plan`` with another ``choice``: its stage-2 GFLOPs and rewritten tiles follow."""
    stage2, rewritten = stage2_gflops(choice, grid, plan["candidate_gflops"], plan["recompute_gflops"])
    return {**plan, "choice": choice, "stage2_gflops": stage2, "rewritten": rewritten}


def candidate_grid(grid: TileGrid, name: str, context: Context) -> TileGrid:
    """The tiles with the halo candidate ``name`` runs with."""
    return grid.with_halo(CANDIDATES[name].halo(context))


def candidate_gflops(grid: TileGrid, context: Context, names) -> np.ndarray:
    """GFLOPs of each candidate (columns) on each tile (rows), on the candidate's own halo."""
    columns = []
    for name in names:
        shapes = tile_shapes(candidate_grid(grid, name, context))
        columns.append([CANDIDATES[name].gflops(context, s) for s in shapes])
    return np.array(columns).T


def blend_gflops(grid: TileGrid, context: Context) -> np.ndarray:
    """GFLOPs of recomputing the cheap pass on each tile for blending (cheap on its blending halo)."""
    return candidate_gflops(grid, context, ["cheap"])[:, 0]


def cheap_pass_gflops(grid: TileGrid, context: Context) -> np.ndarray:
    """GFLOPs of stage 1 on each tile: the cheap net on its own, smaller halo."""
    cheap = context.models["cheap"]
    return np.array([cheap.gflops(s) for s in tile_shapes(grid.with_halo(cheap.halo))])


def check_budget(budget_gflops: float | None, base_gflops: float) -> None:
    """A budget must at least pay for the cheap pass and the selector."""
    if budget_gflops is not None and budget_gflops < base_gflops:
        raise MatsegError(
            f"--budget-gflops {budget_gflops:g} is below the cheap pass alone "
            f"({base_gflops:.1f} GFLOPs); raise it"
        )


def all_expensive_gflops(grid: TileGrid, context: Context, names) -> tuple[str, float]:
    """The candidate a run's cost is told against, and its GFLOPs on every tile: ``expensive``,
    or, for a selector without it (a lab's weights trained with ``--model cheap``), the
    costliest of its candidates."""
    if "expensive" in names:
        return "expensive", float(candidate_gflops(grid, context, ["expensive"]).sum())
    totals = candidate_gflops(grid, context, names).sum(0)
    k = int(np.argmax(totals))
    return names[k], float(totals[k])


def make_plan(selector: Selector, cheap, grid, context, names, lam, budget_gflops, max_fraction) -> dict:
    features = cheap["features"]
    gain = selector.expected_gain(features)
    gain[:, 0] = 0.0
    cand_gflops = candidate_gflops(grid, context, names)
    recompute = blend_gflops(grid, context)
    policy_gflops = selector.gflops(len(features))

    def cost_of(choice):
        return stage2_gflops(choice, grid, cand_gflops, recompute)[0]

    if budget_gflops is None and max_fraction is None:
        lam = selector.default_lambda if lam is None else lam
        choice = choose_by_lambda(selector, features, lam)
    else:
        base = float(cheap["gflops"].sum()) + policy_gflops
        check_budget(budget_gflops, base)
        extra = None if budget_gflops is None else budget_gflops - base
        slots = None if max_fraction is None else int(np.floor(max_fraction * len(features) + 1e-9))
        choice = choose_by_budget(gain, cost_of, extra, slots, cand_gflops)
    stage2, rewritten = stage2_gflops(choice, grid, cand_gflops, recompute)
    return {
        "choice": choice,
        "gain": gain,
        "lambda": lam,
        "candidate_gflops": cand_gflops,
        "recompute_gflops": recompute,
        "policy_gflops": policy_gflops,
        "stage2_gflops": stage2,
        "rewritten": rewritten,
    }
