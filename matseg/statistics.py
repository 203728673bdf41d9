"""The training statistics of a weights folder: what its segmenters were trained on.

:func:`matseg.train` and fine-tuning record them as they write weights;
:func:`record_statistics` adds them to weights trained before (the bundled ones,
from their regenerated training volumes), without touching the network files.
Runs compare a volume with them (:mod:`matseg.candidates.fit`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from matseg.candidates.fit import load_statistics, save_statistics, statistics_of
from matseg.errors import MatsegError
from matseg.io.read import open_volume
from matseg.models.store import load_segmenter, read_manifest
from matseg.normalize import intensity_range

logger = logging.getLogger(__name__)


def normalised_slices(image: str | os.PathLike, slices: Sequence[int] | None = None) -> np.ndarray:
    """Slices of ``image`` (all by default), normalised as ``matseg segment`` normalises the volume."""
    volume = open_volume(image)
    data = volume.data if volume.ndim == 3 else volume.data[None]
    z = list(range(data.shape[0]) if slices is None else slices)
    bad = [s for s in z if not 0 <= s < data.shape[0]]
    if bad:
        raise MatsegError(f"slices {bad} are outside 0..{data.shape[0] - 1} of {volume.source}")
    return intensity_range(volume)(np.asarray(data[z].compute()))


def record_statistics(
    weights: str | os.PathLike,
    images: Sequence[np.ndarray],
    source: str,
    keep: Sequence[dict] = (),
    shown_as: str | os.PathLike | None = None,
) -> dict:
    """Measure normalised training slices ``images`` with the cheap net of ``weights`` and record them.

    Parameters
    ----------
    weights : path
        Weights folder holding ``cheap``; only its manifest changes.
    images : sequence of ndarray
        Normalised slices (N, Y, X) the segmenters were trained on.
    source : str
        What they are, recorded with them.
    keep : sequence of dict
        Earlier sets to keep beside the new one (fine-tuning keeps the initial weights').
    shown_as : path, optional
        The folder's name in the log line, when ``weights`` is a copy that takes its place
        later (:func:`matseg.train` writes a hidden sibling, then renames it); default ``weights``.

    Returns
    -------
    dict
        The new set.
    """
    if "cheap" not in read_manifest(weights):
        raise MatsegError(f"{weights} holds no cheap segmenter; training statistics are measured with it")
    cheap = load_segmenter("cheap", weights)
    entry = statistics_of(cheap, images, source)
    save_statistics(weights, cheap, [*keep, entry])
    where = shown_as or weights
    logger.info(f"training statistics of {source} ({entry['tiles']} tiles) recorded in {where}")
    return entry


def statistics_from_volumes(
    images: Sequence[str], weights: str | os.PathLike, slices: Sequence[int] | None = None
) -> dict:
    """Record the statistics of training volumes ``images`` for ``weights`` (``matseg train
    --statistics-only``): for weights trained on them before statistics were recorded."""
    data = [normalised_slices(i, slices) for i in images]
    return record_statistics(weights, data, ", ".join(map(str, images)))


def previous_sets(weights: str | os.PathLike | None) -> list[dict]:
    """The statistics sets ``weights`` records (none if it records none)."""
    statistics = load_statistics(weights)
    return list(statistics["sets"]) if statistics else []
