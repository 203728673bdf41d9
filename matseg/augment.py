"""Imaging augmentation for ``matseg train``: what changes between microscopy sessions.

Training patches are normalised images (the volume's 0.5/99.5 % percentiles map to 0/1). On top
of the flips and 90° rotations every patch gets, a fraction ``probability`` of the patches is
re-imaged with a random combination of: a change of pixel size (geometric: image and labels
together), a change of resolution, isotropic or anisotropic blur, pores showing the material
behind them, gamma, slow shading, curtaining stripes, Gaussian and shot noise whose level
varies across the field, contrast, offset and (where the physics allows) inversion.

Every effect is applied with probability ``each`` and draws its strength uniformly from its
documented range. The augmentations use their own random stream, so the patches drawn and
their flips do not depend on the augmentation chosen. torchvision and MONAI have blur, noise,
gamma and bias-field transforms but no curtaining, shine-through or field-varying noise, and
hold one random state per transform object; the few operations here are scipy filters over a
2-D patch, a few milliseconds per batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from matseg.errors import MatsegError

logger = logging.getLogger(__name__)

UNLABELLED = 255
PRESETS = ("none", "light", "strong")


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the imaging augmentations, in normalised grey units (0 pore-ish .. 1 bright).

    Parameters
    ----------
    probability : float
        Fraction of patches re-imaged at all; the others keep only flips and rotations.
    each : float
        Probability of each effect on a re-imaged patch.
    clean_final : float
        Fraction of the training steps, at the end, with no re-imaging (a clean fine-tune).
    scale : (low, high)
        Pixel-size factor; image and labels are zoomed together about the patch centre.
    resolution : (low, high)
        Factor of a down- and up-sampling of the image (1: no change).
    blur : (low, high)
        Gaussian sigma in pixels, drawn per axis (anisotropic when they differ).
    shine : (low, high)
        Gain of a blurred, displaced copy of the patch added where the image is dark (pores
        showing the material behind them).
    gamma : (low, high)
        Exponent applied to the patch in [0, 1] (detector response).
    shading : (low, high)
        Amplitude of a slow multiplicative field: the image varies by up to this fraction.
    curtain : (low, high)
        Standard deviation of vertical stripes (FIB curtaining), modulated across the patch.
    noise : (low, high)
        Gaussian noise sigma.
    noise_variation : (low, high)
        The noise sigma is scaled by a smooth field in (1 - noise_variation, 1].
    shot_noise : (low, high)
        Signal-dependent noise: variance gain times the signal.
    contrast : (low, high)
        Factor on the deviations from the patch mean.
    offset : (low, high)
        Added grey level.
    invert : float
        Probability of inverting the grey levels (0 for FIB-SEM: the phases' order is physics).
    """

    probability: float = 0.8
    each: float = 0.5
    clean_final: float = 0.0
    scale: tuple[float, float] = (0.8, 1.25)
    resolution: tuple[float, float] = (0.5, 1.0)
    blur: tuple[float, float] = (0.0, 2.0)
    shine: tuple[float, float] = (0.0, 0.3)
    gamma: tuple[float, float] = (0.6, 1.6)
    shading: tuple[float, float] = (0.0, 0.35)
    curtain: tuple[float, float] = (0.0, 0.15)
    noise: tuple[float, float] = (0.0, 0.25)
    noise_variation: tuple[float, float] = (0.0, 0.6)
    shot_noise: tuple[float, float] = (0.0, 0.03)
    contrast: tuple[float, float] = (0.6, 1.4)
    offset: tuple[float, float] = (-0.15, 0.15)
    invert: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple):
                try:
                    lo, hi = (float(v) for v in value)
                except (TypeError, ValueError):
                    raise MatsegError(
                        f"augmentation {f.name} must be a (low, high) pair, got {value!r}"
                    ) from None
                if not lo <= hi:
                    raise MatsegError(f"augmentation {f.name} needs low <= high, got {value!r}")
                object.__setattr__(self, f.name, (lo, hi))
            elif not 0 <= float(value) <= 1:
                raise MatsegError(f"augmentation {f.name} must be in [0, 1], got {value!r}")
        positive = ("scale", "resolution", "gamma", "contrast")
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise MatsegError(f"augmentation {name} must be > 0, got {getattr(self, name)}")
        if self.resolution[1] > 1:
            raise MatsegError(f"augmentation resolution must be <= 1, got {self.resolution}")
        for name in ("blur", "shine", "shading", "curtain", "noise", "noise_variation", "shot_noise"):
            if getattr(self, name)[0] < 0:
                raise MatsegError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.shading[1] >= 1 or self.noise_variation[1] > 1:
            raise MatsegError("augmentation shading must stay below 1 and noise_variation at most 1")

    def to_dict(self) -> dict:
        """Plain dict of all fields, ranges as lists (for YAML/JSON and the weights manifest)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


LIGHT = Augmentation(
    probability=0.5,
    scale=(0.9, 1.1),
    resolution=(0.75, 1.0),
    blur=(0.0, 1.0),
    shine=(0.0, 0.1),
    gamma=(0.8, 1.25),
    shading=(0.0, 0.15),
    curtain=(0.0, 0.05),
    noise=(0.0, 0.08),
    noise_variation=(0.0, 0.3),
    shot_noise=(0.0, 0.01),
    contrast=(0.8, 1.2),
    offset=(-0.08, 0.08),
)
STRONG = Augmentation()


def load_augmentation(spec: str | os.PathLike | None) -> Augmentation | None:
    """The augmentation named by ``--augment``: ``none``, ``light``, ``strong`` or a YAML file.

    ``none`` (and ``None``) gives ``None``: training keeps only flips, 90° rotations and a
    linear intensity jitter, the stream of matseg's earlier versions. A YAML file holds any
    fields of :class:`Augmentation`; the others keep the ``strong`` values.
    """
    if spec is None or str(spec) == "none":
        return None
    if str(spec) in ("light", "strong"):
        return LIGHT if str(spec) == "light" else STRONG
    import yaml

    path = Path(spec)
    if not path.is_file():
        raise MatsegError(f"--augment {spec}: not one of {', '.join(PRESETS)} and no such YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MatsegError(f"augmentation file {path} is not valid YAML: {err}") from None
    valid = [f.name for f in dataclasses.fields(Augmentation)]
    if not isinstance(values, dict):
        raise MatsegError(
            f"augmentation file {path} must be a mapping of settings (keys: {', '.join(valid)})"
        )
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise MatsegError(f"augmentation file {path}: unknown key(s) {unknown}; valid keys: {valid}")
    return Augmentation(**values)


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: Augmentation,
    progress: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-image a batch of normalised patches.

    Parameters
    ----------
    images : np.ndarray
        (B, Y, X) float32 normalised patches.
    labels : np.ndarray
        (B, Y, X) integer labels, 255 unlabelled; moved with the image by geometric effects.
    rng : np.random.Generator
        The augmentation stream (same seed, same batch).
    config : Augmentation
        Ranges and probabilities.
    progress : float
        Fraction of training done; past ``1 - clean_final`` patches are left as they are.

    Returns
    -------
    images, labels : np.ndarray
        New arrays of the same shapes and dtypes.
    """
    images, labels = images.copy(), labels.copy()
    if progress >= 1 - config.clean_final:
        return images, labels
    for i in range(len(images)):
        if rng.random() < config.probability:
            images[i], labels[i] = augment_patch(images[i], labels[i], rng, config)
    return images, labels


def augment_patch(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, config: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Re-image one normalised 2-D patch (see :class:`Augmentation` for the effects)."""
    c = config

    def draw(name: str) -> float | None:
        """The effect's strength, or None when it is skipped this time."""
        return rng.uniform(*getattr(c, name)) if rng.random() < c.each else None

    x = image.astype(np.float32, copy=True)
    y = labels
    if (s := draw("scale")) is not None:
        x, y = rescale(x, y, s)
    if (r := draw("resolution")) is not None:
        x = resample(x, r)
    if (sigma := draw("blur")) is not None:
        x = ndimage.gaussian_filter(x, (sigma, rng.uniform(*c.blur)))
    if (g := draw("shine")) is not None:
        behind = ndimage.gaussian_filter(np.roll(np.rot90(x, int(rng.integers(1, 4))), 7, axis=1), 2.0)
        x = x + np.float32(g) * np.clip(1 - x, 0, 1) * np.clip(behind, 0, 1)
    if (gamma := draw("gamma")) is not None:
        x = np.clip(x, 0, None) ** np.float32(gamma)
    if (a := draw("shading")) is not None:
        x = x * (1 + np.float32(a) * _unit_field(x.shape, rng))
    if (a := draw("curtain")) is not None:
        x = x + np.float32(a) * _stripes(x.shape[1], rng)[None, :] * (0.5 + 0.5 * _unit_field(x.shape, rng))
    noise = draw("noise")
    shot = draw("shot_noise")
    if noise is not None or shot is not None:
        sigma = np.full(x.shape, noise or 0.0, np.float32)
        if noise is not None and (v := draw("noise_variation")) is not None:
            sigma *= 1 - np.float32(v / 2) * (1 + _unit_field(x.shape, rng))
        variance = sigma**2 + np.float32(shot or 0.0) * np.clip(x, 0, None)
        x = x + np.sqrt(variance) * rng.standard_normal(x.shape, np.float32)
    if (k := draw("contrast")) is not None:
        mean = x.mean()
        x = mean + np.float32(k) * (x - mean)
    if (b := draw("offset")) is not None:
        x = x + np.float32(b)
    if c.invert and rng.random() < c.invert:
        x = 1 - x
    return x.astype(np.float32), y


def rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Zoom image (linear) and labels (nearest) by ``factor`` about the patch centre, same shape.

    Pixels that come from outside the patch are unlabelled (255) and edge-padded in the image.
    """
    shape = np.array(image.shape, float)
    centre = (shape - 1) / 2
    # output pixel p samples input centre + (p - centre) / factor
    matrix = np.full(2, 1 / factor)
    offset = centre - matrix * centre
    x = ndimage.affine_transform(image, matrix, offset, order=1, mode="nearest")
    y = ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=UNLABELLED)
    return x.astype(np.float32), y.astype(labels.dtype)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Down-sample by ``factor`` (with its anti-aliasing blur) and back: a coarser microscope."""
    if factor >= 1:
        return image
    smooth = ndimage.gaussian_filter(image, 0.5 / factor)
    small = ndimage.zoom(smooth, factor, order=1)
    back = ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)
    return back[: image.shape[0], : image.shape[1]].astype(np.float32)


def _unit_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A slow random field with values in [-1, 1]: three plane waves of 1-4 patch widths."""
    yy, xx = (np.arange(n, dtype=np.float32)[:, None] for n in shape)
    field = np.zeros(shape, np.float32)
    for _ in range(3):
        angle, phase = rng.uniform(0, 2 * np.pi, 2)
        k = 2 * np.pi / (rng.uniform(1, 4) * max(shape))
        # cos(a + b) from per-axis terms keeps the trigonometry off the full grid
        a, b = k * np.cos(angle) * yy + phase, k * np.sin(angle) * xx.T
        field += np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b)
    return field / max(float(np.abs(field).max()), 1e-6)


def _stripes(width: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance column offsets: a few sinusoids of periods 4-20 px plus column jitter."""
    x = np.arange(width)
    waves = sum(np.sin(2 * np.pi * x / rng.uniform(4, 20) + rng.uniform(0, 2 * np.pi)) for _ in range(3))
    profile = waves * np.sqrt(2 / 3) + rng.standard_normal(width)
    return (profile / np.sqrt(2)).astype(np.float32)
