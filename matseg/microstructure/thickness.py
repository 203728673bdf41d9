"""Size distributions: the local thickness of each phase, streamed block by block with a halo.

The local thickness of a voxel is the diameter of the largest sphere that fits
in its phase and covers it (Hildebrand and Ruegsegger, 1997; PoreSpy's
``local_thickness``). Computed per block from the Euclidean distance transform
(scipy) with radii up to ``max_radius`` voxels: a sphere of radius r centred at
a voxel whose distance to the other phases is at least r covers every voxel
closer than r to that centre. A halo of ``2 * max_radius`` makes each block's
answer equal the whole volume's; a thicker feature reads as ``2 * max_radius``
and the report gives the fraction of each phase at that cap. PoreSpy's version
works on a whole in-memory image, hence this streamed one.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from matseg.microstructure.blocks import Block, Reader, Region, reduce_blocks


def local_thickness(
    mask: np.ndarray, max_radius: int, sampling: tuple[float, ...] | None = None
) -> np.ndarray:
    """Local thickness (diameter, in voxels of the smallest voxel side) of the True voxels of ``mask``.

    Parameters
    ----------
    mask : ndarray of bool
        One phase; voxels outside the array count as the same phase.
    max_radius : int
        Largest sphere radius tried, in voxels.
    sampling : floats, optional
        Voxel size per axis; radii are in units of its smallest entry.

    Returns
    -------
    ndarray of float32
        0 outside the phase, else the diameter ``2 r`` of the largest covering sphere.
    """
    sampling = np.asarray(sampling if sampling is not None else (1.0,) * mask.ndim, dtype=float)
    sampling = tuple(sampling / sampling.min())
    radius = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any():
        return radius
    distance = ndi.distance_transform_edt(mask, sampling=sampling)
    for r in range(1, max_radius + 1):
        centres = distance >= r
        if not centres.any():
            break
        covered = ndi.distance_transform_edt(~centres, sampling=sampling) < r
        radius[covered & mask] = r
    return 2 * radius


def thickness_histograms(
    reader: Reader,
    n_phases: int,
    voxel_size: tuple[float, float, float],
    max_radius: int = 12,
    block: tuple[int, int, int] = (64, 128, 128),
    within: Region | None = None,
) -> dict:
    """Voxel counts per local-thickness diameter (0, 2, 4, ... ``2 * max_radius``) for every phase.

    Returns
    -------
    dict
        ``counts``: array (n_phases, max_radius + 1), entry r = voxels of diameter
        ``2 r`` (r = 0: single-voxel features, thinner than one sphere of radius 1);
        ``diameters``: those diameters in physical units (smallest voxel side).
    """
    halo = 2 * max_radius + 1

    def one(labels: np.ndarray, b: Block) -> dict:
        counts = np.zeros((n_phases, max_radius + 1), dtype=np.int64)
        for phase in range(n_phases):
            mask = labels == phase
            if not mask[b.core].any():
                continue
            diameter = local_thickness(mask, max_radius, voxel_size)[b.core]
            radii = (diameter[mask[b.core]] / 2).astype(np.int64)
            counts[phase] = np.bincount(radii, minlength=max_radius + 1)[: max_radius + 1]
        return {"counts": counts}

    total = reduce_blocks(reader, one, block, low=halo, high=halo, within=within)
    step = min(voxel_size)
    return {"counts": np.asarray(total["counts"]), "diameters": 2 * step * np.arange(max_radius + 1)}


def quantiles(counts: np.ndarray, diameters: np.ndarray, q=(0.1, 0.5, 0.9)) -> list[float]:
    """Volume-weighted quantiles of a diameter histogram (d10, d50, d90), NaN when empty."""
    total = counts.sum()
    if total == 0:
        return [float("nan")] * len(q)
    cumulative = np.cumsum(counts) / total
    return [float(diameters[min(np.searchsorted(cumulative, p), len(diameters) - 1)]) for p in q]
