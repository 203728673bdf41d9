"""Rendering a region of a synthetic cathode: geometry, phases, image and difficulty
(see :mod:`matseg.synth`)."""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import expit, ndtri

from matseg.synth.config import (
    _GERM_CELL,
    _NOISE_TILE,
    _TAG_BLOBS,
    _TAG_CURTAIN,
    _TAG_DIFFICULTY,
    _TAG_NOISE,
    _TAG_NOISE_FIELD,
    _TAG_PARTICLES,
    _TAG_SHADING,
    _TAG_SHINE_PARTICLES,
    _TAG_THICKNESS,
    _TRUNCATE,
    ACTIVE,
    BINDER,
    Box,
    SampleConfig,
    _check_seed,
    _require,
    _rng,
    imaging_parameters,
)


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
