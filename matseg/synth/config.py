"""Settings of the synthetic cathode generator: the geometry, the imaging profiles and the
per-volume imaging parameters drawn from the seed (see :mod:`matseg.synth`)."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

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
            elif isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
                object.__setattr__(self, f.name, _as_number(f.name, value, type(f.default)))
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


def _as_number(name: str, value: Any, kind: type) -> float | int:
    """A number field as its kind: a YAML string, list or ``true`` is refused in words (it
    reached the checks below as a TypeError, or as 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise MatsegError(f"{name} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise MatsegError(f"{name} must be an integer, got {value!r}")
    return kind(value)


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


def _check_seed(seed: int) -> int:
    _require(
        isinstance(seed, (int, np.integer)) and seed >= 0,
        f"seed must be a non-negative integer, got {seed!r}",
    )
    return int(seed)
