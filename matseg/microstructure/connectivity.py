"""Connectivity: how much of each phase connects the two faces along each axis.

A global labelling of each phase's face-connected clusters, done by dask-image's
``ndmeasure.label`` (each chunk labelled by scipy, then the labels that touch
across chunk faces merged by a connected-components pass over the graph of
touching labels): the chunks stream, only the list of labels and their sizes is
global. Along each axis a cluster is percolating when it touches both faces,
dead-end when it touches one, isolated when it touches neither.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

AXES = ("z", "y", "x")


def connectivity(labels: da.Array, n_phases: int) -> dict:
    """Percolating, dead-end and isolated fractions of each phase along each axis.

    Parameters
    ----------
    labels : dask array (Z, Y, X)
        Phase labels.
    n_phases : int
        Phases 0 .. n_phases - 1 are measured.

    Returns
    -------
    dict
        ``{phase: {axis: {"percolating": f, "dead_end": f, "isolated": f}}}``, each
        a fraction of the phase's volume (NaN for an absent phase).
    """
    from dask_image.ndmeasure import label

    out = {}
    for phase in range(n_phases):
        clusters, count = label(labels == phase)
        faces = []
        for axis in range(3):
            for end in (0, -1):
                index = [slice(None)] * 3
                index[axis] = end
                faces.append(da.unique(clusters[tuple(index)]))
        count, sizes, *faces = dask.compute(count, da.bincount(clusters.ravel()), *faces)
        sizes = np.pad(np.asarray(sizes), (0, int(count) + 1 - len(sizes)))
        total = sizes[1:].sum()
        out[phase] = {}
        for axis, name in enumerate(AXES):
            low, high = (np.isin(np.arange(len(sizes)), faces[2 * axis + k]) for k in (0, 1))
            low[0] = high[0] = False
            kinds = {"percolating": low & high, "dead_end": low ^ high, "isolated": ~(low | high)}
            kinds["isolated"][0] = False
            out[phase][name] = {
                k: float(sizes[m].sum() / total) if total else float("nan") for k, m in kinds.items()
            }
    return out
