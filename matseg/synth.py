"""Synthetic 3-phase cathode volumes (FIB-SEM of an NMC cathode) with exact ground truth.

The microstructure is a Boolean model of polydisperse overlapping spheres (disks in 2-D) for
the active particles, a carbon-binder (CBD) film of varying thickness on their surfaces plus
free CBD blobs, and pore elsewhere.  The image model adds pore shine-through, blur, shading,
curtaining and noise, all of which get worse inside smooth "hard" blobs of the volume.

Everything is a function of the seed and of global voxel coordinates: germs are drawn per
fixed spatial cell, noise per fixed tile, and operations with spatial extent run on the region
grown by a halo.  A region therefore renders identically alone or cropped from a larger render.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import expit, ndtri

from matseg.errors import MatsegError

PHASES = ("pore", "carbon-binder", "active")
PORE, BINDER, ACTIVE = 0, 1, 2

_GERM_CELL = 64  # germs are drawn per cell, so a region only generates the cells it touches
_NOISE_TILE = 32  # fixed noise tiles make the noise independent of how the caller chunks
_INDEX_OFFSET = 2**31  # SeedSequence words must be non-negative; halo cells have negative indices
_TRUNCATE = 3.0  # Gaussian kernels are cut at 3 sigma; halos are sized from this
(
    _TAG_PARTICLES,
    _TAG_SHINE_PARTICLES,
    _TAG_BLOBS,
    _TAG_THICKNESS,
    _TAG_DIFFICULTY,
    _TAG_SHADING,
    _TAG_CURTAIN,
    _TAG_NOISE,
    _TAG_IMAGING,
    _TAG_NOISE_FIELD,
) = range(10)

# Per-volume imaging parameters, drawn in this order from the seed.  For those in _TEST_SHIFTED
# the "test" profile draws from the interval just above the configured (train) range.
_IMAGING_FIELDS = (
    "pore_level",
    "binder_level",
    "active_level",
    "noise_std",
    "hard_noise_std",
    "shot_noise_gain",
    "blur_sigma",
    "hard_blur_sigma",
    "hard_binder_contrast_loss",
    "shine_gain",
    "hard_shine_gain",
    "shine_decay",
    "shine_sigma",
    "shading_amplitude",
    "curtain_amplitude",
    "hard_curtain_amplitude",
    "curtain_period",
)
_TEST_SHIFTED = (
    "noise_std",
    "hard_noise_std",
    "blur_sigma",
    "hard_blur_sigma",
    "shading_amplitude",
    "curtain_amplitude",
)
# The "wide" profile: imaging well outside both other profiles, for evaluation only (the bundled
# weights never train on it).  Noise and curtain amplitudes are fractions of the volume's grey
# range (active minus pore level, after the contrast change); the rest are in the units of
# SampleConfig.  ``contrast`` pulls the three phase levels toward their mean (0.5: half the
# phase contrast), ``blur_z_sigma`` blurs along Z (3-D only), and ``noise_variation`` scales the
# noise by a smooth field in (1 - noise_variation, 1], so it varies across the field of view.
_WIDE = {
    "noise_std": (0.02, 0.1),
    "hard_noise_std": (0.08, 0.3),
    "shot_noise_gain": (0.0, 0.5),
    "blur_sigma": (0.3, 1.5),
    "hard_blur_sigma": (0.8, 2.0),
    "hard_binder_contrast_loss": (0.2, 0.5),
    "shine_gain": (0.0, 0.3),
    "hard_shine_gain": (0.3, 0.8),
    "shading_amplitude": (0.0, 0.35),
    "curtain_amplitude": (0.0, 0.1),
    "hard_curtain_amplitude": (0.1, 0.2),
}
_WIDE_RELATIVE = ("noise_std", "hard_noise_std", "curtain_amplitude", "hard_curtain_amplitude")
_WIDE_EXTRA = {"contrast": (0.5, 1.0), "blur_z_sigma": (0.0, 4.0), "noise_variation": (0.0, 0.6)}
_NEUTRAL_EXTRA = {"contrast": 1.0, "blur_z_sigma": 0.0, "noise_variation": 0.0}
PROFILES = ("train", "test", "wide")
Box = list[tuple[int, int]]


@dataclass(frozen=True)
class SampleConfig:
    """Geometry and imaging settings of a synthetic cathode volume.

    Lengths are in voxels.  Tuple fields are (low, high) ranges from which one value per volume
    is drawn; ``hard_*`` values apply where the difficulty field is 1, the plain ones where it is
    0.  ``profile="test"`` shifts the noise, blur, shading and curtain ranges to disjoint
    intervals just above the configured ones, so test volumes have unseen imaging conditions.
    ``profile="wide"`` replaces the imaging ranges by much wider fixed ones (half the phase
    contrast, blur up to 2 voxels in-plane and 4 along Z, noise up to 0.3 of the grey range and
    varying across the field, shading up to 35 %, curtaining up to 0.2 of the grey range, strong
    shine-through): imaging no training profile covers, to test robustness.
    """

    particle_radius_mean: float = 9.0
    particle_radius_cv: float = 0.35
    active_fraction: float = 0.45
    binder_thickness: float = 2.5
    free_binder_fraction: float = 0.04
    profile: str = "train"
    hard_fraction: float = 0.25
    difficulty_wavelength: tuple[float, float] = (150.0, 400.0)
    pore_level: tuple[float, float] = (25.0, 45.0)
    binder_level: tuple[float, float] = (75.0, 95.0)
    active_level: tuple[float, float] = (175.0, 205.0)
    noise_std: tuple[float, float] = (3.0, 6.0)
    hard_noise_std: tuple[float, float] = (8.0, 12.0)
    shot_noise_gain: tuple[float, float] = (0.03, 0.1)
    blur_sigma: tuple[float, float] = (0.4, 0.7)
    hard_blur_sigma: tuple[float, float] = (1.0, 1.3)
    hard_binder_contrast_loss: tuple[float, float] = (0.3, 0.45)
    shine_gain: tuple[float, float] = (0.04, 0.08)
    hard_shine_gain: tuple[float, float] = (0.45, 0.6)
    shine_depth: int = 5
    shine_decay: tuple[float, float] = (1.5, 2.5)
    shine_sigma: tuple[float, float] = (1.5, 2.5)
    shading_amplitude: tuple[float, float] = (0.04, 0.08)
    curtain_amplitude: tuple[float, float] = (1.0, 2.5)
    hard_curtain_amplitude: tuple[float, float] = (30.0, 40.0)
    curtain_period: tuple[float, float] = (6.0, 14.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple):
                # lists from YAML/JSON become tuples so configs stay hashable and comparable
                object.__setattr__(self, f.name, _as_range(f.name, value))
        _require(self.profile in PROFILES, f"profile must be one of {PROFILES}, got {self.profile!r}")
        _require(self.particle_radius_mean > 0, "particle_radius_mean must be > 0")
        _require(self.particle_radius_cv >= 0, "particle_radius_cv must be >= 0")
        _require(0 < self.active_fraction < 1, "active_fraction must be in (0, 1)")
        _require(self.binder_thickness >= 0, "binder_thickness must be >= 0")
        _require(
            0 <= self.free_binder_fraction < 1 - self.active_fraction,
            "free_binder_fraction must be in [0, 1 - active_fraction)",
        )
        _require(0 <= self.hard_fraction <= 1, "hard_fraction must be in [0, 1]")
        _require(
            isinstance(self.shine_depth, int) and self.shine_depth >= 1, "shine_depth must be an integer >= 1"
        )
        _require(
            self.difficulty_wavelength[0] > 0 and self.curtain_period[0] > 0,
            "difficulty_wavelength and curtain_period must be > 0",
        )

    @classmethod
    def from_dict(cls, d: dict) -> SampleConfig:
        """Build a config from a plain dict (e.g. parsed YAML).

        Parameters
        ----------
        d : dict
            Field names to values; missing fields keep their defaults.

        Returns
        -------
        SampleConfig
        """
        _require(isinstance(d, dict), f"SampleConfig.from_dict needs a dict, got {type(d)}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        _require(not unknown, f"unknown SampleConfig key(s) {unknown}; valid keys: {valid}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain dict of all fields, ranges as lists, so it serialises to YAML/JSON.

        Returns
        -------
        dict
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MatsegError(message)


def _as_range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MatsegError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    _require(0 <= lo <= hi, f"{name} must satisfy 0 <= low <= high, got {value!r}")
    return lo, hi


def _rng(seed: int, tag: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, *(i + _INDEX_OFFSET for i in index)])


def _profile_range(config: SampleConfig, name: str) -> tuple[float, float]:
    if config.profile == "wide" and name in _WIDE:
        return _WIDE[name]
    lo, hi = getattr(config, name)
    if config.profile == "test" and name in _TEST_SHIFTED:
        gap = 0.1 * (hi - lo) + 0.05 * hi  # nearby but disjoint, also for degenerate ranges
        return hi + gap, 2 * hi - lo + gap
    return lo, hi


def imaging_parameters(seed: int, config: SampleConfig | None = None) -> dict[str, float]:
    """Per-volume imaging parameters drawn from the seed within the profile's ranges.

    Parameters
    ----------
    seed : int
        Volume seed (non-negative).
    config : SampleConfig, optional
        Ranges and profile; defaults to ``SampleConfig()``.

    Returns
    -------
    dict[str, float]
        One value per imaging field of ``SampleConfig`` (e.g. ``noise_std``, ``blur_sigma``),
        plus ``contrast``, ``blur_z_sigma`` and ``noise_variation`` (1, 0 and 0 except in the
        ``wide`` profile).  Grey levels and noise are in grey values of the uint8 image.
    """
    config = config or SampleConfig()
    rng = _rng(_check_seed(seed), _TAG_IMAGING)
    params = {}
    for name in _IMAGING_FIELDS:
        lo, hi = _profile_range(config, name)
        params[name] = float(lo + (hi - lo) * rng.random())
    params.update(_NEUTRAL_EXTRA)
    if config.profile == "wide":
        # drawn after the shared fields, so those keep the values of the same seed's stream
        for name, (lo, hi) in _WIDE_EXTRA.items():
            params[name] = float(lo + (hi - lo) * rng.random())
        levels = ("pore_level", "binder_level", "active_level")
        mean = sum(params[k] for k in levels) / 3
        for k in levels:
            params[k] = mean + params["contrast"] * (params[k] - mean)
        grey_range = params["active_level"] - params["pore_level"]
        for name in _WIDE_RELATIVE:
            params[name] *= grey_range
    return params


def _axis_coords(box: Box) -> list[np.ndarray]:
    """Global coordinates along each axis, shaped to broadcast over the box."""
    ndim = len(box)
    return [
        np.arange(a, b, dtype=np.float64).reshape([-1 if i == k else 1 for i in range(ndim)])
        for k, (a, b) in enumerate(box)
    ]


def _smooth_field(
    box: Box, seed: int, tag: int, wavelength: tuple[float, float], n_waves: int = 8
) -> np.ndarray:
    """Zero-mean, unit-variance random field: a sum of plane waves in global coordinates."""
    rng = _rng(seed, tag)
    coords = _axis_coords(box)
    field = np.zeros([b - a for a, b in box], np.float32)
    for _ in range(n_waves):
        direction = rng.normal(size=len(box))
        k = 2 * np.pi / rng.uniform(*wavelength) * direction / np.linalg.norm(direction)
        # cos(a + b) = cos a cos b - sin a sin b keeps the trigonometry off the full grid
        phase = rng.uniform(0, 2 * np.pi)
        a = phase + sum(ki * c for ki, c in zip(k[:-1], coords[:-1], strict=True))
        b = k[-1] * coords[-1]
        field += np.cos(a).astype(np.float32) * np.cos(b).astype(np.float32)
        field -= np.sin(a).astype(np.float32) * np.sin(b).astype(np.float32)
    return field * np.float32(math.sqrt(2.0 / n_waves))


def _grow(box: Box, low: list[int], high: list[int]) -> Box:
    return [(a - lo, b + hi) for (a, b), lo, hi in zip(box, low, high, strict=True)]


def _window(outer: Box, lo: list[int], hi: list[int]) -> tuple[slice, ...]:
    """Slices selecting global [lo, hi) from an array that covers ``outer``."""
    return tuple(slice(l0 - a, h0 - a) for l0, h0, (a, _) in zip(lo, hi, outer, strict=True))


def _intersect(box: Box, other: Box) -> tuple[list[int], list[int]]:
    lo = [max(a, c) for (a, _), (c, _) in zip(box, other, strict=True)]
    hi = [min(b, d) for (_, b), (_, d) in zip(box, other, strict=True)]
    return lo, hi


def _crop(array: np.ndarray, outer: Box, inner: Box) -> np.ndarray:
    return array[_window(outer, [a for a, _ in inner], [b for _, b in inner])]


def _germs(
    box: Box, seed: int, tag: int, reach: float, intensity: float, draw_radii
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson germs (centres, radii) of every cell that a ball of radius ``reach`` may bring
    into ``box``; each cell has its own stream, so the set does not depend on the box."""
    ndim = len(box)
    ranges = [
        range(math.floor((a - reach) / _GERM_CELL), math.floor((b - 1 + reach) / _GERM_CELL) + 1)
        for a, b in box
    ]
    centres, radii = [np.zeros((0, ndim))], [np.zeros(0)]
    for cell in itertools.product(*ranges):
        rng = _rng(seed, tag, *cell)
        n = rng.poisson(intensity * _GERM_CELL**ndim)
        centres.append((np.asarray(cell) + rng.random((n, ndim))) * _GERM_CELL)
        radii.append(draw_radii(rng, n))
    return np.concatenate(centres), np.concatenate(radii)


def _ball_distance(box: Box, centres: np.ndarray, radii: np.ndarray, reach: float) -> np.ndarray:
    """Euclidean signed distance to the union of balls; exact where <= ``reach``, else > reach.

    Computed analytically per ball rather than with a distance transform, so it is exact
    sub-voxel and independent of the box it is evaluated on."""
    field = np.full([b - a for a, b in box], np.inf, np.float32)
    ndim = len(box)
    for centre, radius in zip(centres, radii, strict=True):
        extent = radius + reach
        lo, hi = _intersect(box, [(math.floor(c - extent), math.ceil(c + extent) + 1) for c in centre])
        if any(l0 >= h0 for l0, h0 in zip(lo, hi, strict=True)):
            continue
        squared = sum(
            ((np.arange(l0, h0) - c) ** 2).reshape([-1 if i == k else 1 for i in range(ndim)])
            for k, (l0, h0, c) in enumerate(zip(lo, hi, centre, strict=True))
        )
        window = field[_window(box, lo, hi)]
        np.minimum(window, (np.sqrt(squared) - radius).astype(np.float32), out=window)
    return field


def _particle_distance(box: Box, seed: int, tag: int, config: SampleConfig, reach: float) -> np.ndarray:
    """Signed distance to the active particles: a Boolean model of lognormal balls whose germ
    intensity -ln(1 - phi) / E[ball volume] gives the target volume fraction phi."""
    ndim = len(box)
    cv, mean = config.particle_radius_cv, config.particle_radius_mean
    sigma = math.sqrt(math.log1p(cv**2))
    mu = math.log(mean) - sigma**2 / 2
    r_max = math.exp(mu + 3 * sigma)  # cap the rare giants so halos stay bounded
    unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    mean_volume = unit_ball * mean**ndim * (1 + cv**2) ** (ndim * (ndim - 1) / 2)
    intensity = -math.log1p(-config.active_fraction) / mean_volume

    def lognormal(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.clip(rng.lognormal(mu, sigma, n), 0.5, r_max)

    centres, radii = _germs(box, seed, tag, r_max + reach, intensity, lognormal)
    return _ball_distance(box, centres, radii, reach)


def _phase_map(box: Box, seed: int, config: SampleConfig) -> np.ndarray:
    """Phase labels on ``box``: particles, a CBD film of varying thickness, free CBD blobs."""
    t_max = 2 * config.binder_thickness
    distance = _particle_distance(box, seed, _TAG_PARTICLES, config, t_max)
    variation = _smooth_field(box, seed, _TAG_THICKNESS, (20.0, 80.0))
    # patchy film: about a quarter of the surface is bare, the rest averages ~binder_thickness
    thickness = config.binder_thickness * np.clip(0.6 + variation, 0, 2)
    phases = np.zeros(distance.shape, np.uint8)
    phases[distance <= thickness] = BINDER
    if config.free_binder_fraction > 0:
        # blobs live in the pore space only, so their Boolean fraction is rescaled by it
        fraction = config.free_binder_fraction / (1 - config.active_fraction)
        ndim = len(box)
        unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
        mean_volume = unit_ball * (4.5 ** (ndim + 1) - 2.0 ** (ndim + 1)) / (2.5 * (ndim + 1))
        centres, radii = _germs(
            box,
            seed,
            _TAG_BLOBS,
            4.5,
            -math.log1p(-fraction) / mean_volume,
            lambda rng, n: rng.uniform(2.0, 4.5, n),
        )
        phases[_ball_distance(box, centres, radii, 0.0) <= 0] = BINDER
    phases[distance <= 0] = ACTIVE
    return phases


def _difficulty(box: Box, seed: int, config: SampleConfig) -> np.ndarray:
    """Smooth field in [0, 1], sigmoid-sharpened so ~hard_fraction of the volume is near 1."""
    if config.hard_fraction in (0.0, 1.0):
        return np.full([b - a for a, b in box], config.hard_fraction, np.float32)
    field = _smooth_field(box, seed, _TAG_DIFFICULTY, config.difficulty_wavelength)
    threshold = ndtri(1 - config.hard_fraction)  # the field is close to standard normal
    return expit((field - threshold) / 0.08).astype(np.float32)


def _shine_through(active: np.ndarray, params: dict[str, float], depth: int, xy_halo: int) -> np.ndarray:
    """Brightness seen through pores: blurred, depth-weighted particles behind each voxel.

    ``active`` covers the wanted box grown by ``depth`` slices along +Z (3-D) and by
    ``xy_halo`` in-plane; the result covers the wanted box.
    """
    if active.ndim == 3:
        # FIB-SEM mills along +Z, so the material not yet milled lies at larger z
        weights = np.exp(-np.arange(1, depth + 1) / params["shine_decay"])
        weights /= weights.sum()
        nz = active.shape[0] - depth
        behind = np.zeros((nz, *active.shape[1:]), np.float32)
        for k, w in enumerate(weights, start=1):
            behind += np.float32(w) * active[k : k + nz]
    else:
        behind = active.astype(np.float32)
    sigma = params["shine_sigma"]
    behind = ndimage.gaussian_filter(behind, [0] * (behind.ndim - 2) + [sigma, sigma], truncate=_TRUNCATE)
    return behind[(Ellipsis, slice(xy_halo, -xy_halo), slice(xy_halo, -xy_halo))]


def _tiled_normal(box: Box, seed: int, tag: int) -> np.ndarray:
    """Standard normal noise on ``box`` assembled from fixed global tiles."""
    out = np.empty([b - a for a, b in box], np.float32)
    tiles = [range(a // _NOISE_TILE, (b - 1) // _NOISE_TILE + 1) for a, b in box]
    for tile in itertools.product(*tiles):
        values = _rng(seed, tag, *tile).standard_normal((_NOISE_TILE,) * len(box), np.float32)
        tile_box = [(t * _NOISE_TILE, (t + 1) * _NOISE_TILE) for t in tile]
        lo, hi = _intersect(box, tile_box)
        out[_window(box, lo, hi)] = values[_window(tile_box, lo, hi)]
    return out


def _curtain(box: Box, seed: int, params: dict[str, float]) -> np.ndarray:
    """Unit-scale curtaining offsets, constant along Y: a few stripe families around the
    stripe period (drifting slowly with depth as the milling front evolves) plus column jitter."""
    rng = _rng(seed, _TAG_CURTAIN)
    x = np.arange(*box[-1], dtype=np.float64)
    z = np.arange(*box[0], dtype=np.float64)[:, None] if len(box) == 3 else np.zeros((1, 1))
    stripes = np.zeros((z.shape[0], x.size))
    for _ in range(3):
        period = params["curtain_period"] * rng.uniform(0.7, 1.3)
        stripes += np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.03) * z)
    jitter = _tiled_normal([box[-1]], seed, _TAG_CURTAIN)
    profile = (stripes * math.sqrt(2 / 3) + jitter) / math.sqrt(2)
    return profile[:, None, :].astype(np.float32) if len(box) == 3 else profile.astype(np.float32)


def _check_seed(seed: int) -> int:
    _require(
        isinstance(seed, (int, np.integer)) and seed >= 0,
        f"seed must be a non-negative integer, got {seed!r}",
    )
    return int(seed)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    _require(len(shape) in (2, 3), f"shape must be (Y, X) or (Z, Y, X), got {shape}")
    _require(
        all(isinstance(s, (int, np.integer)) and s > 0 for s in shape),
        f"shape sizes must be positive integers, got {shape}",
    )
    return tuple(int(s) for s in shape)


def _check_region(shape: tuple[int, ...], region: tuple[slice, ...]) -> Box:
    _require(len(region) == len(shape), f"region {region} must have one slice per axis of {shape}")
    box = []
    for s, size in zip(region, shape, strict=True):
        _require(isinstance(s, slice) and s.step in (None, 1), f"region needs unit slices: {s}")
        start, stop, _ = s.indices(size)
        _require(start < stop, f"region {region} is empty within shape {shape}")
        box.append((start, stop))
    return box


def render_region(
    shape: tuple[int, ...], region: tuple[slice, ...], seed: int, config: SampleConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render image (uint8), phases (uint8 0/1/2) and difficulty (float32 in [0, 1]) of `region`
    of the whole volume `shape`.

    Parameters
    ----------
    shape : tuple of int
        Whole volume, (Y, X) or (Z, Y, X).
    region : tuple of slice
        One unit-step slice per axis; the result equals that crop of the whole-volume render.
    seed : int
        Non-negative volume seed.
    config : SampleConfig, optional
        Defaults to ``SampleConfig()``.

    Returns
    -------
    image : np.ndarray
        uint8 microscopy image of the region.
    phases : np.ndarray
        uint8 labels, indices into ``PHASES``.
    difficulty : np.ndarray
        float32 local imaging difficulty in [0, 1].
    """
    config = config or SampleConfig()
    shape, seed = _check_shape(shape), _check_seed(seed)
    region_box = _check_region(shape, region)
    params = imaging_parameters(seed, config)
    ndim = len(shape)
    in_plane = [0] * (ndim - 2)

    # halo for the in-plane blur (image box), then for shine-through (geometry box)
    blur_halo = int(_TRUNCATE * max(params["blur_sigma"], params["hard_blur_sigma"]) + 0.5) + 1
    shine_halo = int(_TRUNCATE * params["shine_sigma"] + 0.5) + 1
    depth = config.shine_depth if ndim == 3 else 0
    z_sigma = params["blur_z_sigma"] if ndim == 3 else 0.0
    z_halo = [int(_TRUNCATE * z_sigma + 0.5) + 1 if z_sigma > 0 else 0] * (ndim - 2)
    image_box = _grow(region_box, z_halo + [blur_halo] * 2, z_halo + [blur_halo] * 2)
    geometry_box = _grow(image_box, in_plane + [shine_halo] * 2, [depth] * (ndim - 2) + [shine_halo] * 2)

    if ndim == 3:
        phases_geo = _phase_map(geometry_box, seed, config)
        active = phases_geo == ACTIVE
        phases = _crop(phases_geo, geometry_box, image_box)
    else:
        # a 2-D section has nothing behind it, so an independent particle field stands in
        phases = _phase_map(image_box, seed, config)
        active = _particle_distance(geometry_box, seed, _TAG_SHINE_PARTICLES, config, 0.0) <= 0
    shine = _shine_through(active, params, depth, shine_halo)

    difficulty = _difficulty(image_box, seed, config)
    pore, binder, bright = params["pore_level"], params["binder_level"], params["active_level"]
    binder_level = binder - difficulty * params["hard_binder_contrast_loss"] * (binder - pore)
    shine_gain = params["shine_gain"] + difficulty * (params["hard_shine_gain"] - params["shine_gain"])
    grey = np.where(
        phases == ACTIVE,
        np.float32(bright),
        np.where(phases == BINDER, binder_level, pore + shine_gain * (bright - pore) * shine),
    ).astype(np.float32)

    def blurred(sigma: float) -> np.ndarray:
        out = ndimage.gaussian_filter(grey, [z_sigma] * (ndim - 2) + [sigma] * 2, truncate=_TRUNCATE)
        return _crop(out, image_box, region_box)

    d = _crop(difficulty, image_box, region_box)
    image = (1 - d) * blurred(params["blur_sigma"]) + d * blurred(params["hard_blur_sigma"])
    shading = _smooth_field(region_box, seed, _TAG_SHADING, (150.0, 400.0), n_waves=3)
    image *= 1 + np.float32(params["shading_amplitude"]) * shading
    amplitude = params["curtain_amplitude"] + d * (
        params["hard_curtain_amplitude"] - params["curtain_amplitude"]
    )
    image += amplitude * _curtain(region_box, seed, params)
    noise_std = params["noise_std"] + d * (params["hard_noise_std"] - params["noise_std"])
    if params["noise_variation"] > 0:
        field = _smooth_field(region_box, seed, _TAG_NOISE_FIELD, (60.0, 200.0), n_waves=4)
        # a factor in (1 - noise_variation, 1]: the noise never exceeds its drawn level
        noise_std = noise_std * (1 - np.float32(params["noise_variation"] / 2) * (1 + np.tanh(field)))
    # Gaussian read noise plus shot noise whose variance grows with the signal
    sigma = np.sqrt(noise_std**2 + params["shot_noise_gain"] * np.maximum(image, 0))
    image += sigma * _tiled_normal(region_box, seed, _TAG_NOISE)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, np.ascontiguousarray(_crop(phases, image_box, region_box)), d.copy()


def _render_block(
    shape: tuple[int, ...], seed: int, config: SampleConfig, block_info: dict | None = None
) -> np.ndarray:
    location = block_info[None]["array-location"][1:]  # first axis stacks the three outputs
    region = tuple(slice(a, b) for a, b in location)
    image, phases, difficulty = render_region(shape, region, seed, config)
    return np.stack([image.astype(np.float32), phases.astype(np.float32), difficulty])


def sample_arrays(
    shape: tuple[int, ...],
    seed: int,
    config: SampleConfig | None = None,
    chunks: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Lazy dask arrays {"image": uint8, "phases": uint8, "difficulty": float32}, built with
    dask map_blocks over render_region.

    Parameters
    ----------
    shape : tuple of int
        Whole volume, (Y, X) or (Z, Y, X).
    seed : int
        Non-negative volume seed.
    config : SampleConfig, optional
        Defaults to ``SampleConfig()``.
    chunks : tuple of int, optional
        Chunk shape; defaults to (16, 256, 256) or (256, 256), clipped to ``shape``.  Results do
        not depend on it.

    Returns
    -------
    dict[str, dask.array.Array]
        The three arrays share one render per block.
    """
    import dask.array as da

    shape, seed = _check_shape(shape), _check_seed(seed)
    config = config or SampleConfig()
    default = (16, 256, 256) if len(shape) == 3 else (256, 256)
    chunks = tuple(chunks) if chunks is not None else default
    _require(
        len(chunks) == len(shape) and all(int(c) > 0 for c in chunks),
        f"chunks {chunks} must be positive, one per axis of {shape}",
    )
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, shape, strict=True))
    blocks = da.core.normalize_chunks(chunks, shape)
    stacked = da.map_blocks(
        partial(_render_block, shape, seed, config),
        dtype=np.float32,
        chunks=((3,), *blocks),
        meta=np.empty((0,) * (len(shape) + 1), np.float32),
        name=f"matseg-synth-{da.core.tokenize(shape, seed, config)}",
    )
    return {
        "image": stacked[0].astype(np.uint8),
        "phases": stacked[1].astype(np.uint8),
        "difficulty": stacked[2],
    }
