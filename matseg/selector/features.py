"""What the selector sees of a tile: statistics of the cheap pass and of the image.

Every feature is independent of the number of phases, so one selector design
serves a 3-phase cathode and a 2-phase particle image alike.
"""

from __future__ import annotations

import numpy as np

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
        Its most probable phase per voxel (:func:`matseg.models.weights.phase_labels`).

    Returns
    -------
    ndarray, shape (len(FEATURE_NAMES),), float32
    """
    # margin between the two most probable phases (the top one masked out: as a sort
    # along the phase axis gives it, ties included, at a fraction of the time)
    top = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    others = probs.copy()
    np.put_along_axis(others, labels[:, None], -np.inf, axis=1)
    margin = top - others.max(axis=1)
    boundary = np.mean(labels[..., 1:, :] != labels[..., :-1, :]) + np.mean(
        labels[..., :, 1:] != labels[..., :, :-1]
    )
    fractions = np.bincount(labels.ravel(), minlength=probs.shape[1]) / labels.size
    # noise: the median absolute Laplacian is dominated by noise, not by edges
    lap = 4 * image[:, 1:-1, 1:-1] - image[:, :-2, 1:-1] - image[:, 2:, 1:-1] - image[:, 1:-1, :-2]
    lap = lap - image[:, 1:-1, 2:]
    grad = np.hypot(np.diff(image, axis=-1)[:, :-1, :], np.diff(image, axis=-2)[:, :, :-1])
    values = (
        uncertainty.mean(),
        np.percentile(uncertainty, 90),
        np.mean(uncertainty > 0.25),
        np.mean(uncertainty > 0.5),
        margin.mean(),
        np.mean(margin < 0.5),
        boundary,
        fractions.min(),
        image.std(),
        np.median(np.abs(lap)) / 0.6745 / np.sqrt(20),
        grad.mean(),
        image.mean(axis=-1).std(),  # shading and horizontal banding
        image.mean(axis=-2).std(),  # curtaining stripes run along Y
    )
    return np.asarray(values, np.float32)
