"""Whether a volume looks like what the weights were trained on.

Training records, beside the weights (the manifest's ``training_statistics``), two
things about its normalised training images: their intensity quantiles, and the
spread over tiles of the cheap pass's selector features
(:mod:`matseg.candidates.features`: uncertainty, margins, boundary density, noise,
gradient, stripes). A run compares its own volume with them after the cheap pass:

- intensity: the mean absolute difference of the normalised quantile functions (the
  1-Wasserstein distance between the two intensity distributions, from 15 quantiles);
  other phase proportions, a saturated detector or another kind of image show here;
- contrast: that distance over the same distance for the volume with inverted grey
  levels (its quantile function reflected). Above 1 the inverted volume looks more like
  the training data than the volume itself: the contrast may be inverted. Scaled down for
  a volume within half the intensity threshold, where both distances are too small to
  compare. Other phase proportions can reflect the distribution too (a `train`-profile
  sample at 0.96 mIoU read 1.79), so above its threshold the net is asked
  (:func:`polarity`): a net is surer of images in the grey levels it was trained on, and
  the part counts only where it is surer of the volume inverted than as it is;
- uncertainty: per uncertainty feature of the cheap net (mean and 90th percentile of
  its entropy, the fractions above 0.25 and 0.5, the low-margin fraction, and the mean
  margin, sign reversed), how far the volume's median over its tiles lies *above* the
  training tiles' median, in units of their spread (half their 10–90 % range, over
  tiles of 8 x 64 x 64), averaged. Other noise, blur and artefacts make the cheap net
  unsure; a volume that is easier than the training data (less uncertain) is not
  flagged. The image features (noise, gradient, stripes) and the microstructure ones
  (boundary density, minority fraction) are recorded but not compared: they vary as
  much between volumes the weights segment well as between those they do not.

Each part is divided by its threshold (calibrated on generated volumes, see
docs/models.md, "Does a volume fit the weights?"), and the distance is the larger:
a volume does not fit when it exceeds 1. A weights folder may record several sets
(fine-tuning adds the corrected slices' set): the nearest counts. A set of fewer than
:data:`MIN_FEATURE_TILES` tiles is compared by its intensities only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from matseg.candidates.features import FEATURE_NAMES, tile_features
from matseg.io.guard import replace_file
from matseg.models.inference import segment_probs
from matseg.models.labels import normalized_entropy, phase_labels
from matseg.models.segmenter import Segmenter
from matseg.models.store import MANIFEST, default_weights_dir, is_bundled, read_manifest
from matseg.normalize import QUANTILE_LEVELS

logger = logging.getLogger(__name__)

STATISTICS = "training_statistics"  # the manifest's entry
# each part's distance at which a volume stops fitting (calibrated: docs/models.md)
INTENSITY_THRESHOLD = 0.075
CONTRAST_THRESHOLD = 1.0
# nearer than this to the training intensities, the contrast ratio means nothing (a volume
# whose distribution is its own mirror image has both distances small): it is scaled down
CONTRAST_FLOOR = INTENSITY_THRESHOLD / 2
FEATURE_THRESHOLD = 0.75
# fewer tiles than this (a few corrected slices) measure no spread worth comparing with:
# such a set is compared by its intensities only
MIN_FEATURE_TILES = 16
THRESHOLD = 1.0  # of the distance: the larger part, each divided by its own threshold
# the polarity probe (:func:`polarity`): slices spread along Z, a crop of at most this side
PROBE_SLICES = 4
PROBE_SIDE = 512
# the thresholds were calibrated on volumes of 16 x 256 x 256 (~1 M voxels); a much smaller
# one has phase proportions of its own by chance, which the intensity part reads as a
# difference (docs/models.md): below this many voxels a volume that does not fit is said so
# as a question, not a verdict
CALIBRATED_VOXELS = 500_000
# tiles the training images are cut into: smaller than a run's (8 x 256 x 256) so that a few
# training volumes give enough tiles to measure the spread of the features over tiles
TILE = (8, 64, 64)
# the uncertainty features, and the one whose larger values mean more certainty
UNCERTAIN = ("uncertainty_mean", "uncertainty_p90", "uncertain_fraction_25", "uncertain_fraction_50",
             "low_margin_fraction")  # fmt: skip
CERTAIN = ("margin_mean",)
ADVICE = (
    "the weights may be wrong here: start label-free with --model classical (its phases named dark to "
    "bright), correct a few slices in the napari plugin, then 'matseg train --from-corrections' "
    "(docs/models.md, 'Your own data')"
)
# for a lab's own weights: a label-free start would throw away what they learnt
OWN_ADVICE = (
    "these weights may be wrong here: correct a few slices of this volume in the napari plugin, "
    "then fine-tune them with 'matseg train --from-corrections' (docs/models.md, 'Your own data')"
)


def slice_features(model: Segmenter, images: np.ndarray, tile: Sequence[int] = TILE) -> np.ndarray:
    """The cheap pass's selector features of every tile of normalised slices ``images`` (N, Y, X).

    Slices are cut into tiles of ``tile`` (slices, Y, X); the net sees each tile alone
    (no halo), which changes only its outermost pixels.
    """
    nz, ny, nx = (int(t) for t in tile)
    rows = []
    for z in range(0, len(images), nz):
        for y in range(0, images.shape[1], ny):
            for x in range(0, images.shape[2], nx):
                block = np.ascontiguousarray(images[z : z + nz, y : y + ny, x : x + nx], np.float32)
                if min(block.shape[1:]) < 16:  # a sliver at the border says nothing about a tile
                    continue
                probs = segment_probs(model, block)
                rows.append(tile_features(block, probs, normalized_entropy(probs), phase_labels(probs)))
    return np.asarray(rows, np.float32).reshape(-1, len(FEATURE_NAMES))


def statistics_of(model: Segmenter, images: Sequence[np.ndarray], source: str) -> dict:
    """One set of training statistics: normalised slices ``images`` (each (N, Y, X)) seen by ``model``.

    Parameters
    ----------
    model : Segmenter
        The cheap segmenter of the weights (its features are the selector's).
    images : sequence of ndarray
        Normalised training slices, as training drew its patches from them.
    source : str
        What they are (recorded).

    Returns
    -------
    dict
        ``quantiles`` (at :data:`matseg.normalize.QUANTILE_LEVELS`), per-feature ``median``,
        ``low`` and ``high`` (10 and 90 % over tiles of :data:`TILE`), ``tiles``, ``source``.
    """
    features = np.concatenate([slice_features(model, np.asarray(i)) for i in images])
    quantiles = np.mean([np.percentile(np.asarray(i, np.float64), QUANTILE_LEVELS) for i in images], axis=0)
    low, median, high = np.percentile(features, (10, 50, 90), axis=0)
    return {
        "source": source,
        "tiles": len(features),
        "quantiles": [round(float(q), 5) for q in quantiles],
        "median": [float(v) for v in median],
        "low": [float(v) for v in low],
        "high": [float(v) for v in high],
    }


def save_statistics(folder: str | os.PathLike, model: Segmenter, sets: Sequence[dict]) -> None:
    """Record training statistics ``sets`` in the manifest of ``folder`` (the network files are untouched).

    ``model`` is the cheap segmenter they were measured with; its sha256 is recorded so a
    run with another cheap net compares only intensities.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    manifest[STATISTICS] = {
        "sha256": model.sha256,
        "features": list(FEATURE_NAMES),
        "quantile_levels": list(QUANTILE_LEVELS),
        "sets": list(sets),
    }
    replace_file(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def load_statistics(folder: str | os.PathLike | None) -> dict | None:
    """The training statistics a weights folder records (default: the bundled weights), or None."""
    entry = read_manifest(folder if folder is not None else default_weights_dir()).get(STATISTICS)
    if not isinstance(entry, dict) or not entry.get("sets"):
        return None
    if list(entry.get("quantile_levels", ())) != list(QUANTILE_LEVELS):
        return None
    return entry


def polarity(model: Segmenter, data, norm) -> dict:
    """How sure ``model`` is of a few slices of ``data`` as they are and with inverted grey levels.

    A net is surer (lower uncertainty) of images in the grey levels it was trained on: over
    generated volumes the cheap net's mean uncertainty on the inverted slices was 1.03–1.43
    times that on the slices as they are, and 0.66–0.99 times it on volumes whose grey levels
    had been inverted (docs/models.md). Reads :data:`PROBE_SLICES` slices spread along Z, each
    a crop of at most :data:`PROBE_SIDE` in-plane: of those centred on the slice and on its
    quarters, the one whose middle plane varies most.

    Parameters
    ----------
    model : Segmenter
    data : array-like (Z, Y, X) or (Y, X)
        The raw volume (a dask array is read only where the slices are).
    norm : callable
        The run's intensity normalisation.

    Returns
    -------
    dict
        ``as_is`` and ``inverted``: the mean normalised entropy of the net's probabilities.
    """
    depth = data.shape[0] if data.ndim == 3 else 1
    planes = np.unique(np.linspace(0, depth - 1, min(PROBE_SLICES, depth)).round().astype(int))

    def read(z: int, crop: tuple) -> np.ndarray:
        return np.asarray(data[(z, *crop)] if data.ndim == 3 else data[crop])

    # of the crops centred on the slice and on its quarters, the one with the most structure in
    # the middle plane (a scan off-centre in its field of view leaves the centre all fill)
    starts = [
        sorted({max(0, min(n - PROBE_SIDE, round(f * n) - PROBE_SIDE // 2)) for f in (0.5, 0.25, 0.75)})
        for n in data.shape[-2:]
    ]
    crops = [tuple(slice(a, a + PROBE_SIDE) for a in corner) for corner in itertools.product(*starts)]
    middle = int(planes[len(planes) // 2])
    crop = max(crops, key=lambda c: float(np.std(read(middle, c), dtype=np.float64)))
    x = np.ascontiguousarray(norm(np.stack([read(int(z), crop) for z in planes])), np.float32)
    as_is = float(normalized_entropy(segment_probs(model, x)).mean())
    inverted = float(normalized_entropy(segment_probs(model, np.ascontiguousarray(1.0 - x))).mean())
    return {"as_is": round(as_is, 4), "inverted": round(inverted, 4)}


def fit_of(
    statistics: dict,
    quantiles: Sequence[float],
    features: np.ndarray | None,
    cheap_sha256: str,
    voxels: int | None = None,
    probe: Callable[[], dict] | None = None,
) -> dict:
    """How far a volume lies from the training statistics, and whether it fits.

    Parameters
    ----------
    statistics : dict
        :func:`load_statistics` of the weights.
    quantiles : sequence of float
        The volume's normalised intensity quantiles (:attr:`matseg.normalize.Normalization.quantiles`).
    features : ndarray (tiles, F) or None
        Its cheap pass's features per tile; None (a single-model run) compares intensities only.
    cheap_sha256 : str
        The cheap net that made ``features``; features of another net than the recorded one
        are not compared.
    voxels : int, optional
        The volume's size: below :data:`CALIBRATED_VOXELS` a volume that does not fit gets
        ``small`` (its size), and the line says the distance may be chance.
    probe : callable, optional
        :func:`polarity` of the volume, called where the contrast part exceeds its threshold:
        the part counts only where the net is surer of the volume inverted. Without it the
        part counts as it is.

    Returns
    -------
    dict
        ``fits``, ``distance``, ``threshold``, its parts ``intensity``, ``contrast`` and ``uncertainty`` (each
        divided by its own threshold; None when not compared), ``polarity`` where the net was
        asked (its two uncertainties and ``confirmed``), ``advice`` when it does not fit,
        ``small`` when it does not fit and is smaller than the volumes the check was calibrated on.
    """
    compare_features = (
        features is not None
        and len(features) > 0
        and statistics.get("sha256") == cheap_sha256
        and list(statistics.get("features", ())) == list(FEATURE_NAMES)
    )
    volume_median = np.median(features, axis=0) if compare_features else None
    parts = []
    for entry in statistics["sets"]:
        # the quantile levels are symmetric about 50 %: reflecting the quantile function
        # gives the quantiles of the inverted volume
        reference = np.asarray(entry["quantiles"])
        away = float(np.mean(np.abs(np.asarray(quantiles) - reference)))
        away_inverted = float(np.mean(np.abs(1.0 - np.asarray(quantiles)[::-1] - reference)))
        intensity = away / INTENSITY_THRESHOLD
        contrast = away / max(away_inverted, 1e-6) / CONTRAST_THRESHOLD * min(1.0, away / CONTRAST_FLOOR)
        part = None
        if volume_median is not None and entry.get("tiles", 0) >= MIN_FEATURE_TILES:
            spread = np.maximum((np.subtract(entry["high"], entry["low"])) / 2, 1e-3)
            z = (volume_median - np.asarray(entry["median"])) / spread
            sign = np.array([1.0 if n in UNCERTAIN else -1.0 for n in UNCERTAIN + CERTAIN])
            picked = np.array([FEATURE_NAMES.index(n) for n in UNCERTAIN + CERTAIN])
            part = float(np.mean(np.maximum(sign * z[picked], 0.0))) / FEATURE_THRESHOLD
        parts.append(
            {
                "intensity": intensity,
                "contrast": contrast,
                "uncertainty": part,
                "set": _names(entry["source"]),
            }
        )
    asked = probe() if probe is not None and any(p["contrast"] > CONTRAST_THRESHOLD for p in parts) else None
    inverted = asked is None or asked["inverted"] < asked["as_is"]  # a contrast part that counts
    for p in parts:
        p["distance"] = max(p["intensity"], p["contrast"] if inverted else 0.0, p["uncertainty"] or 0.0)
    best = min(parts, key=lambda p: p["distance"])
    fits = best["distance"] <= THRESHOLD
    result = {
        "fits": bool(fits),
        "distance": round(best["distance"], 3),
        "threshold": THRESHOLD,
        "intensity": round(best["intensity"], 3),
        "contrast": round(best["contrast"], 3),
        "uncertainty": None if best["uncertainty"] is None else round(best["uncertainty"], 3),
        "nearest": best["set"],
    }
    if asked is not None:
        result["polarity"] = asked | {"confirmed": inverted}
    if not fits:
        result["advice"] = ADVICE
        if voxels is not None and voxels < CALIBRATED_VOXELS:
            result["small"] = int(voxels)
    return result


def _names(source: str) -> str:
    """The training volumes' names, without the folders of the machine that trained them."""
    return ", ".join(Path(part.strip()).name for part in source.split(","))


def check_fit(
    weights: str | os.PathLike | None,
    quantiles: Sequence[float],
    features: np.ndarray | None,
    cheap_sha256: str,
    voxels: int | None = None,
    probe: Callable[[], dict] | None = None,
) -> dict | None:
    """:func:`fit_of` against the statistics of ``weights``; None when they record none (or no quantiles).
    A lab's own weights that do not fit are pointed to fine-tuning, not to a label-free start."""
    statistics = load_statistics(weights)
    if statistics is None or not quantiles:
        return None
    fit = fit_of(statistics, quantiles, features, cheap_sha256, voxels, probe)
    if not fit["fits"] and not is_bundled(weights):
        fit["advice"] = OWN_ADVICE
    if not fit["fits"]:
        logger.warning(describe_fit(fit))
    return fit


def describe_fit(fit: dict) -> str:
    """The fit in one line, as the summary shows it."""
    if fit["fits"]:
        return f"like the weights' training data (distance {fit['distance']:.2f} <= {fit['threshold']:g})"
    if fit.get("small"):
        return (
            f"UNLIKE the weights' training data? (distance {fit['distance']:.2f} > {fit['threshold']:g} "
            f"on only {fit['small']:,} voxels: a volume under {CALIBRATED_VOXELS:,} can differ by chance; "
            "check a larger part of it before you act on this): if it holds, " + fit["advice"]
        )
    return (
        f"UNLIKE the weights' training data (distance {fit['distance']:.2f} > {fit['threshold']:g}): "
        + fit["advice"]
    )
