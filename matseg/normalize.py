"""Intensity scaling: the robust range of a volume, measured in one streaming pass, mapped
to the models' range; and the multi-Otsu thresholds of the classical candidate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matseg.errors import MatsegError
from matseg.io.read import Volume, computed
from matseg.monitor import Monitor
from matseg.tiling import CHUNKS_AT_ONCE, slabs
from matseg.validate import check_intensities

PERCENTILES = (0.5, 99.5)
# levels of the normalised intensity quantiles kept for comparing a volume with the
# weights' training data (:mod:`matseg.candidates.fit`)
QUANTILE_LEVELS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.5, 99.0)
_SUBSAMPLE_VOXELS = 1 << 22
# one value at an end of the range holding this share of the voxels or more: a fill around the
# scanned region (a CT reconstruction's circle, a registered stack's margins) or a saturated
# detector; generated volumes clip at most ~3 % (docs/models.md, "A fill around the scan")
FILL_SHARE = 0.1
FILL_MIN_VALUES = 16  # an image of fewer values (a mask, labels) has no fill to tell apart


@dataclass(frozen=True)
class Normalization:
    """Maps raw intensities to the models' range: (raw - low) / (high - low)."""

    low: float
    high: float
    thresholds: tuple[float, ...] = ()  # multi-Otsu thresholds between phases, normalised units
    quantiles: tuple[float, ...] = ()  # normalised intensities at QUANTILE_LEVELS
    fill: dict | None = None  # {"value", "share", "end"}: one extreme value on FILL_SHARE or more

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        scale = self.high - self.low if self.high > self.low else 1.0
        if raw.dtype.itemsize <= 2 or raw.dtype == np.float32:  # exact in float32
            return (raw.astype(np.float32) - np.float32(self.low)) / np.float32(scale)
        # 32- and 64-bit integers, float64: the offset first, in float64 (a detector's 2**30 + x in
        # float32 keeps steps of 128, and a 256-level image far from zero would collapse)
        return ((raw.astype(np.float64) - self.low) / scale).astype(np.float32)

    def as_dict(self) -> dict:
        """As stored in an output's attributes and report."""
        saved = {"low": self.low, "high": self.high, "thresholds": list(self.thresholds)}
        saved |= {"quantiles": list(self.quantiles)} if self.quantiles else {}
        return saved | ({"fill": self.fill} if self.fill else {})

    @classmethod
    def from_dict(cls, saved: dict) -> Normalization:
        thresholds, quantiles = tuple(saved.get("thresholds", ())), tuple(saved.get("quantiles", ()))
        return cls(saved["low"], saved["high"], thresholds, quantiles, saved.get("fill"))


def fill_of(sample: np.ndarray, smallest: float, largest: float) -> dict | None:
    """The volume's minimum or maximum where it holds :data:`FILL_SHARE` of the subsample or
    more (the end with the larger share), else None; None for an image of fewer than
    :data:`FILL_MIN_VALUES` values."""
    shares = {end: float(np.count_nonzero(sample == value)) / sample.size for end, value in
              (("minimum", smallest), ("maximum", largest))}  # fmt: skip
    end = max(shares, key=shares.get)
    if shares[end] < FILL_SHARE or np.unique(sample.ravel()[: 1 << 20]).size < FILL_MIN_VALUES:
        return None  # a binary or few-valued image (labels, a mask): its ends hold it all
    value = smallest if end == "minimum" else largest
    return {"value": float(value), "share": round(shares[end], 4), "end": end}


def describe_fill(normalization: dict) -> str | None:
    """The summary's line on a fill (:func:`fill_of`) of a report's ``normalization``, if any."""
    fill = normalization.get("fill")
    if not fill:
        return None
    share, value, end = fill["share"] * 100, fill["value"], fill["end"]
    return (
        f"{share:.0f} % of the voxels hold one value, {value:g} (the volume's {end}): "
        "a fill around the scanned region, or a saturated detector? They are segmented and counted "
        "as a phase in the fractions and the estimate (the intensity range and the fit leave them "
        "out): crop the volume to the scan if they are outside it (--region)"
    )


def percentiles(sample: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``np.percentile(sample.astype(np.float64), q)``, bit for bit; from a histogram for
    8- and 16-bit integers (no sort of a float copy of the sample)."""
    if sample.dtype.kind not in "ui" or sample.dtype.itemsize > 2:
        return np.percentile(sample.astype(np.float64), q)
    smallest = int(np.iinfo(sample.dtype).min)
    flat = sample.ravel()
    counts = np.zeros(1 << (8 * sample.dtype.itemsize), np.int64)
    for start in range(0, flat.size, 1 << 20):  # bincount copies to intp: 8 MB at a time
        part = flat[start : start + (1 << 20)]
        part = part if smallest == 0 else part.astype(np.int32) - smallest
        counts += np.bincount(part, minlength=counts.size)
    cumulative = np.cumsum(counts)
    # numpy's "linear" method: the order statistics either side of (n - 1) q, and its lerp
    virtual = (flat.size - 1) * np.true_divide(np.asarray(q, np.float64), 100)
    before = np.floor(virtual)
    gamma = virtual - before
    a, b = (
        np.searchsorted(cumulative, k.astype(np.int64), side="right").astype(np.float64) + smallest
        for k in (before, np.minimum(before + 1, flat.size - 1))
    )
    return np.where(gamma >= 0.5, b - (b - a) * (1 - gamma), a + (b - a) * gamma)


def intensity_range(
    volume: Volume, n_phases: int | None = None, monitor: Monitor | None = None
) -> Normalization:
    """Robust intensity range of a volume in one streaming pass over all its chunks.

    The pass also proves every chunk is readable and finite, so bad data is
    refused before any output exists. Percentiles come from a fixed strided
    subsample, so they do not depend on tiling.

    Parameters
    ----------
    volume : Volume
    n_phases : int, optional
        Also find the multi-Otsu thresholds between this many intensity classes.
    monitor : Monitor, optional
        Reports the stage ``intensity pass`` slab by slab, and stops it when cancelled.
    """
    data = volume.data
    steps = [1] * data.ndim
    while np.prod([-(-s // k) for s, k in zip(data.shape, steps)]) > _SUBSAMPLE_VOXELS:
        axis = int(np.argmax([s / k for s, k in zip(data.shape, steps)]))
        steps[axis] *= 2
    parts, smallest, largest = [], math.inf, -math.inf
    # slab by slab of whole chunks along the first axis: a reduction's graph is some 13 kB a
    # chunk, far too much for the million chunks of a terabyte at once
    runs = slabs(data.chunks, CHUNKS_AT_ONCE)
    stage = (monitor or Monitor()).stage("intensity pass", len(runs))
    for start, stop in runs:
        slab = data[start:stop]  # (dask gives the array itself for its whole extent)
        extremes = (slab.min(), slab.max())  # reads every chunk; NaN and infinities show in them
        # the slab's part of one strided subsample of the whole volume
        first = -(-start // steps[0]) * steps[0]
        subsample = data[(slice(first, stop, steps[0]), *(slice(None, None, k) for k in steps[1:]))]
        (lo, hi), part = computed(volume, extremes, subsample)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise MatsegError(f"{volume.source} contains NaN or infinite values; clean or mask them first")
        smallest, largest = min(smallest, float(lo)), max(largest, float(hi))
        parts.append(part)
        stage.advance()
    sample = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if smallest == largest:
        raise MatsegError(
            f"{volume.source} holds one value ({smallest:g}) in every voxel: no phases to tell apart"
        )
    low, high, *levels = percentiles(sample, PERCENTILES + QUANTILE_LEVELS)
    classes = sample  # what the classical candidate's thresholds are drawn from
    fill = fill_of(sample, smallest, largest)
    if fill is not None and high > low:  # a fill around the scan: the range, quantiles and
        classes = sample[sample != fill["value"]]  # thresholds are the scan's own
        low, high, *levels = percentiles(classes, PERCENTILES + QUANTILE_LEVELS)
        low, high = (low, high) if high > low else (smallest, largest)
    elif high <= low:  # one value (a fill: zeros outside a scan) is over 99 % of the voxels
        rest = sample[sample != low]  # the robust range of the voxels other than the fill
        # the fill around a scan is no phase; but where the rest holds fewer values than there
        # are phases (a sparse binary image), the fill is one of them: the whole range then
        if np.unique(rest).size >= max(n_phases or 0, 2):
            low, high, *levels = percentiles(rest, PERCENTILES + QUANTILE_LEVELS)
            classes = rest
        low, high = (low, high) if high > low else (smallest, largest)
    check_intensities(volume.source, smallest, largest, float(low), float(high))
    norm = Normalization(float(low), float(high))
    quantiles = tuple(float(q) for q in norm(np.asarray(levels)))
    thresholds = multiotsu_thresholds(norm(classes), n_phases) if n_phases else ()
    return Normalization(norm.low, norm.high, thresholds, quantiles, fill)


def multiotsu_thresholds(sample: np.ndarray, n_phases: int) -> tuple[float, ...]:
    """Thresholds between ``n_phases`` intensity classes of a (normalised) subsample of the volume."""
    from skimage.filters import threshold_multiotsu

    values = np.asarray(sample, np.float32).ravel()
    if np.unique(values[: 1 << 20]).size < n_phases:
        return tuple(float(q) for q in np.quantile(values, np.linspace(0, 1, n_phases + 1)[1:-1]))
    # the histogram scikit-image makes of an image (256 bins over its range, normalised),
    # without the copy of the sample it flattens first; its search grows as bins ** (classes - 2),
    # so beyond 5 classes the bins shrink to keep it to what 5 classes take (seconds, not hours)
    bins = 256 if n_phases <= 5 else max(4 * n_phases, int(256 ** (3 / (n_phases - 2))))
    counts, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2.0
    found = threshold_multiotsu(hist=(counts / counts.sum(), centres), classes=n_phases)
    return tuple(float(_gap_middle(t, counts, centres)) for t in found)


# an empty run of this many of the 256 bins or more is a gap between classes, not between the
# grey levels of a quantised image (an 8-bit image spanning a quarter of its range leaves 3)
GAP_BINS = 8


def _gap_middle(threshold: float, counts: np.ndarray, centres: np.ndarray) -> float:
    """A threshold with empty bins above it, moved to the middle of that gap: every threshold in
    it splits the classes alike, and Otsu's search keeps the first, at the lower class's edge
    (an image of two grey levels: its threshold one bin above the dark level, where smoothing
    the image before thresholding grows the bright phase)."""
    i = int(np.searchsorted(centres, threshold))
    if i + 1 >= len(counts) or counts[i + 1] != 0:
        return threshold
    j = i + 1 + int(np.argmax(counts[i + 1 :] > 0))  # the next non-empty bin
    if counts[i] == 0 or counts[j] == 0 or j - i - 1 < GAP_BINS:  # the gaps between an 8-bit
        return threshold  # image's levels, where skimage's threshold stands
    return (centres[i] + centres[j]) / 2.0
