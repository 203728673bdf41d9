"""Labels from probabilities: phases, their counts and the uncertainty of a tile."""

from __future__ import annotations

import numpy as np


def phase_labels(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=1)`` as uint8 (the first phase wins a tie), for phases along axis 1.

    A running maximum over the few phases: numpy's argmax across a middle axis walks
    the array with a stride, several times slower.
    """
    best = probs[:, 0].copy()
    labels = np.zeros(best.shape, np.uint8)
    for phase in range(1, probs.shape[1]):
        better = probs[:, phase] > best
        labels[better] = phase
        np.maximum(best, probs[:, phase], out=best)
    return labels


def phase_counts(labels: np.ndarray, n_phases: int) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength=n_phases)`` for labels below ``n_phases``:
    one comparison per phase instead of bincount's copy of the labels as int64."""
    return np.array([np.count_nonzero(labels == phase) for phase in range(n_phases)], np.int64)


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of phase probabilities (axis 1) divided by log(C): 0 certain, 1 uniform."""
    terms = np.clip(probs, 1e-8, None)  # p log p in one array, in place: no temporaries
    np.log(terms, out=terms)
    terms *= probs
    return -terms.sum(axis=1) / np.float32(np.log(probs.shape[1]))
