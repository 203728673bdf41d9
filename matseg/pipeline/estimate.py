"""A dry run's answer: what the costlier candidates would cost, from the plan and one sampled tile each."""

from __future__ import annotations

import numpy as np

from matseg.candidates.registry import CANDIDATES
from matseg.io.region import as_pairs
from matseg.pipeline.job import Job
from matseg.pipeline.tasks import candidate_task
from matseg.selector.plan import candidate_grid
from matseg.stitch import BAND
from matseg.tiling import tile_blocks


def estimate(plan, cheap, data, grid, norm, context, names, workers) -> dict:
    """Expected cost of the candidates' stage: GFLOPs exactly from the plan; time and memory
    from one sampled tile per candidate."""
    import resource

    indices = list(grid.indices())
    per_gflop = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in sorted(set(plan["choice"].tolist()) - {0}):
        t = int(np.flatnonzero(plan["choice"] == k)[0])
        idx = indices[t]
        own_grid = candidate_grid(grid, names[k], context)
        blocks = tile_blocks(data, own_grid, range(idx[0], idx[0] + 1))  # its layer's graph only
        _, gflops, seconds = candidate_task(
            blocks[idx].compute(), idx, own_grid, norm, context, CANDIDATES[names[k]], BAND
        )
        per_gflop[names[k]] = seconds / max(gflops, 1e-9)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cheap_rate = float(cheap["seconds"].sum()) / max(float(cheap["gflops"].sum()), 1e-9)
    seconds = 0.0
    for t, k in enumerate(plan["choice"]):
        if k:
            seconds += plan["candidate_gflops"][t, k] * per_gflop[names[k]]
    blend_gflops = plan["stage2_gflops"] - sum(
        plan["candidate_gflops"][t, k] for t, k in enumerate(plan["choice"]) if k
    )
    seconds += blend_gflops * cheap_rate
    return {
        "gflops": float(cheap["gflops"].sum()) + plan["policy_gflops"] + plan["stage2_gflops"],
        "stage2_gflops": plan["stage2_gflops"],
        "seconds": seconds / workers,
        "peak_rss_mb": (rss_after + (workers - 1) * max(0, rss_after - rss_before)) / 1024,
        "sampled_seconds_per_gflop": per_gflop,
    }


def dry_run_report(job: Job, plan, cheap, expected: dict) -> dict:
    """The report of a dry run: the plan's mix and the :func:`estimate`."""
    return {
        "dry_run": True,
        "input": {
            "source": str(job.input),
            "shape": list(job.volume.shape),
            **({"region": as_pairs(job.region)} if job.region else {}),
        },
        "output": str(job.output),
        "models": [m.describe() for m in job.models.values()],
        "selector": job.selector.describe() | {"lambda": plan["lambda"]},
        "tile": list(job.tile),
        "halo": job.halo,
        "tiles": job.grid.n_tiles,
        "voxels": int(np.prod(job.volume.shape)),
        "decisions": {n: int((plan["choice"] == k).sum()) for k, n in enumerate(job.names)},
        "cheap_pass_gflops": float(cheap["gflops"].sum()),
        "expected": expected,
    }
