"""What the selector sees of a tile: statistics of the cheap pass and of the image.

Every feature is independent of the number of phases, so one selector design
serves a 3-phase cathode and a 2-phase particle image alike.
"""

from __future__ import annotations

import warnings

import numpy as np

from matseg.models.labels import phase_counts

FEATURE_NAMES = (
    "uncertainty_mean",
    "uncertainty_p90",
    "uncertain_fraction_25",
    "uncertain_fraction_50",
    "margin_mean",
    "low_margin_fraction",
    "boundary_density",
    "minority_phase_fraction",
    "image_std",
    "image_noise",
    "image_gradient",
    "row_profile_std",
    "column_profile_std",
)


def tile_features(
    image: np.ndarray, probs: np.ndarray, uncertainty: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Feature vector of one tile (halo cropped).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Normalised intensities.
    probs : ndarray, shape (Z, C, Y, X)
        The cheap segmenter's phase probabilities.
    uncertainty : ndarray, shape (Z, Y, X)
        Its normalised predictive entropy (0 certain, 1 uniform).
    labels : ndarray, shape (Z, Y, X)
        Its most probable phase per voxel (:func:`matseg.models.labels.phase_labels`).

    Returns
    -------
    ndarray, shape (len(FEATURE_NAMES),), float32
    """
    # margin between the two most probable phases (equal maxima: margin 0), as a running
    # top two over the few phases: 0.6 ms where a masked copy and take_along_axis took 8
    top = probs[:, 0].copy()
    second = np.full_like(top, -np.inf)
    for phase in range(1, probs.shape[1]):
        np.maximum(second, np.minimum(top, probs[:, phase]), out=second)
        np.maximum(top, probs[:, phase], out=top)
    margin = top - second
    fractions = phase_counts(labels, probs.shape[1]) / labels.size
    # noise: the median absolute Laplacian is dominated by noise, not by edges
    lap = 4 * image[:, 1:-1, 1:-1] - image[:, :-2, 1:-1] - image[:, 2:, 1:-1] - image[:, 1:-1, :-2]
    lap = lap - image[:, 1:-1, 2:]
    grad = np.hypot(np.diff(image, axis=-1)[:, :-1, :], np.diff(image, axis=-2)[:, :, :-1])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tile 1 or 2 voxels wide: no pairs
        boundary = np.mean(labels[..., 1:, :] != labels[..., :-1, :]) + np.mean(
            labels[..., :, 1:] != labels[..., :, :-1]
        )
        values = _values(uncertainty, margin, boundary, fractions, image, lap, grad)
    # what a tile too small to have (a neighbour, a Laplacian) counts as none: 0
    return np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=np.inf, neginf=-np.inf)


def _values(uncertainty, margin, boundary, fractions, image, lap, grad) -> tuple:
    return (
        uncertainty.mean(),
        np.percentile(uncertainty, 90),
        np.mean(uncertainty > 0.25),
        np.mean(uncertainty > 0.5),
        margin.mean(),
        np.mean(margin < 0.5),
        boundary,
        fractions.min(),
        image.std(),
        median(np.abs(lap)) / 0.6745 / np.sqrt(20),
        grad.mean(),
        image.mean(axis=-1).std(),  # shading and horizontal banding
        image.mean(axis=-2).std(),  # curtaining stripes run along Y
    )


def median(values: np.ndarray):
    """``np.median(values)``, bit for bit, from a partition at one index.

    numpy partitions at the two middle indices and the last (for NaN) at once, an order
    of magnitude slower on a tile's values.
    """
    flat = values.ravel()
    half = flat.size // 2
    if flat.size == 0 or np.isnan(flat.max()):
        return np.median(flat)
    part = np.partition(flat, half)
    middle = part[half : half + 1] if flat.size % 2 else np.stack([part[:half].max(), part[half]])
    return middle.mean()  # as numpy takes the mean of the middle one or two


def tile_features_torch(image, probs, uncertainty, labels) -> np.ndarray:
    """:func:`tile_features` of tensors, computed on their device (a GPU: only the feature
    vector comes back), in float64; equal to the numpy features to float32 rounding.

    Parameters
    ----------
    image : Tensor, shape (Z, Y, X)
    probs : Tensor, shape (Z, C, Y, X)
    uncertainty : Tensor, shape (Z, Y, X)
    labels : Tensor, shape (Z, Y, X), integer

    Returns
    -------
    ndarray, shape (len(FEATURE_NAMES),), float32
    """
    import torch

    image, probs, uncertainty = image.double(), probs.double(), uncertainty.double()
    if probs.shape[1] > 1:
        top, second = probs.topk(2, dim=1).values.unbind(dim=1)
        margin = top - second
    else:  # one phase: no second, an infinite margin (as the running top two gives)
        margin = torch.full_like(probs[:, 0], np.inf)
    boundary = (labels[..., 1:, :] != labels[..., :-1, :]).double().mean() + (
        labels[..., :, 1:] != labels[..., :, :-1]
    ).double().mean()
    fractions = torch.bincount(labels.flatten().long(), minlength=probs.shape[1]).double() / labels.numel()
    lap = 4 * image[:, 1:-1, 1:-1] - image[:, :-2, 1:-1] - image[:, 2:, 1:-1] - image[:, 1:-1, :-2]
    lap = lap - image[:, 1:-1, 2:]
    grad = torch.hypot(torch.diff(image, dim=-1)[:, :-1, :], torch.diff(image, dim=-2)[:, :, :-1])
    values = torch.stack(
        [
            uncertainty.mean(),
            _percentile(uncertainty, 90),
            (uncertainty > 0.25).double().mean(),
            (uncertainty > 0.5).double().mean(),
            margin.mean(),
            (margin < 0.5).double().mean(),
            boundary,
            fractions.min(),
            image.std(correction=0),
            _percentile(lap.abs(), 50) / 0.6745 / np.sqrt(20),
            grad.mean(),
            image.mean(dim=-1).std(correction=0),
            image.mean(dim=-2).std(correction=0),
        ]
    )
    values = values.cpu().numpy().astype(np.float32)  # the one copy back to the host
    return np.nan_to_num(values, nan=0.0, posinf=np.inf, neginf=-np.inf)


def _percentile(values, q: float):
    """``np.percentile(values, q)`` (linear interpolation) of a tensor, by selection: no
    sort of the whole tile, and no size limit (``torch.quantile`` takes 2**24 values at most)."""
    flat = values.flatten()
    position = q / 100 * (flat.numel() - 1)
    low = int(np.floor(position))
    below = flat.kthvalue(low + 1).values
    if low + 1 >= flat.numel():
        return below
    above = flat.kthvalue(low + 2).values
    return below + (above - below) * (position - low)
