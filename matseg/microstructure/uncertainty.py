"""Label volumes drawn from the segmentation's own uncertainty, for error bars on every metric.

matseg keeps, per voxel, the cheap pass's normalised entropy ``h`` (0 certain,
1 uniform over the C phases), not the probabilities. The scheme reads ``h`` as a
two-way confusion between the voxel's phase and the phase next to it (errors of
a segmentation sit on interfaces, between the two phases that meet there): the
probability ``q`` that the voxel belongs to the other phase solves
``H2(q) = h ln C`` with ``H2`` the binary entropy (``q`` at most 1/2). A draw
re-assigns a voxel to the most frequent other phase among its 26 neighbours
when a uniform variable falls below ``q``. The uniform variables are spatially
correlated (white noise smoothed by a Gaussian of ``correlation`` voxels, mapped
back to uniform): a boundary moves by patches, as segmentation errors do, rather
than by independent voxels, which would roughen every surface and bias areas up.

Each draw depends on global voxel coordinates only, so a block read with any
halo gives the same voxels as the whole volume: every streamed metric runs on
draws unchanged. Voxels with no other phase among their neighbours never flip:
a wholly missed particle is outside this model.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.ndimage as ndi
from scipy.special import ndtr

from matseg.microstructure.blocks import Reader, Region

_TABLE_Q = np.linspace(0.0, 0.5, 2001)
with np.errstate(divide="ignore", invalid="ignore"):
    _TABLE_H = np.nan_to_num(-_TABLE_Q * np.log(_TABLE_Q) - (1 - _TABLE_Q) * np.log1p(-_TABLE_Q))


def flip_probability(entropy: np.ndarray, n_phases: int) -> np.ndarray:
    """``q`` with ``H2(q) = entropy * ln(n_phases)``, for normalised entropies in [0, 1]."""
    nats = np.clip(entropy, 0.0, 1.0) * np.log(max(n_phases, 2))
    return np.interp(nats, _TABLE_H, _TABLE_Q)


def _hash_uniform(region: Region, key: int) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on the voxel's global coordinates and ``key``."""
    grids = np.meshgrid(
        *[np.arange(s.start, s.stop, dtype=np.int64) + (1 << 20) for s in region], indexing="ij"
    )
    x = np.uint64((key * 0x9E3779B97F4A7C15) % (1 << 64))
    for g, prime in zip(grids, (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB)):
        x = (x ^ g.astype(np.uint64)) * np.uint64(prime)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Perturbed(Reader):
    """Draw number ``sample`` of the labels, read a region at a time (see the module's scheme)."""

    def __init__(
        self,
        labels: da.Array,
        uncertainty: da.Array,
        n_phases: int,
        sample: int,
        seed: int = 0,
        correlation: float = 2.0,
    ):
        super().__init__(labels)
        self.uncertainty = uncertainty
        self.n_phases = n_phases
        self.key = seed * 1_000_003 + sample + 1
        self.correlation = correlation
        self.radius = int(3.0 * correlation + 0.5)
        delta = np.zeros((2 * self.radius + 1,) * 3)
        delta[(self.radius,) * 3] = 1.0
        kernel = ndi.gaussian_filter(delta, correlation, truncate=3.0, mode="constant")
        self.noise_std = float(np.sqrt(np.sum(kernel**2) / 12.0))

    def _uniform(self, region: Region) -> np.ndarray:
        grown = tuple(slice(s.start - self.radius, s.stop + self.radius) for s in region)
        noise = _hash_uniform(grown, self.key) - 0.5
        smooth = ndi.gaussian_filter(noise, self.correlation, truncate=3.0, mode="constant")
        inner = tuple(slice(self.radius, -self.radius) for _ in region)
        return ndtr(smooth[inner] / self.noise_std)

    def read(self, region: Region) -> np.ndarray:
        padded = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(region, self.shape))
        crop = tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(region, padded))
        labels = np.asarray(self.labels[padded].compute(scheduler="synchronous"))
        entropy = (
            np.asarray(self.uncertainty[region].compute(scheduler="synchronous"), dtype=np.float32) / 255
        )
        counts = np.stack(
            [
                ndi.uniform_filter((labels == p).astype(np.float32), 3, mode="constant")
                for p in range(self.n_phases)
            ]
        )[(slice(None), *crop)]
        own = labels[crop]
        np.put_along_axis(counts, own[None].astype(np.int64).clip(0, self.n_phases - 1), -1.0, axis=0)
        other = counts.argmax(axis=0)
        has_other = counts.max(axis=0) > 1e-6
        flip = has_other & (self._uniform(region) < flip_probability(entropy, self.n_phases))
        return np.where(flip, other, own).astype(own.dtype)
