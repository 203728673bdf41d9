"""Shapes whose microstructure metrics are known in closed form, to validate
:mod:`matseg.microstructure` (tests and ``benchmarks/measure_validation.py``)."""

from __future__ import annotations

import numpy as np


def sphere_bed(radius: float = 8.0, spacing: int = 19, cells=(3, 3, 3), offset: float = 0.37):
    """Spheres of ``radius`` on a cubic lattice of ``spacing`` voxels, ``cells`` along Z, Y, X,
    centres ``offset`` off the voxel grid, none touching the volume's faces: (labels, count)."""
    shape = tuple(c * spacing for c in cells)
    grid = np.indices(shape, dtype=np.float32)
    distance = np.full(shape, np.inf, np.float32)
    for centre in np.ndindex(*cells):
        c = [(k + 0.5) * spacing - 0.5 + offset for k in centre]
        distance = np.minimum(distance, np.sqrt(sum((g - x) ** 2 for g, x in zip(grid, c))))
    return (distance <= radius).astype(np.uint8), int(np.prod(cells))
