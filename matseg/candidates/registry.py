"""Candidates: the ways a tile can be segmented, and what each costs.

A candidate turns a batch of normalised slices (halo included) into phase
probabilities. ``cheap`` always runs; the selector decides per tile whether one
of the others should run as well. Adding a candidate is one entry in
:data:`CANDIDATES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage.filters import gaussian
from skimage.filters.rank import majority
from skimage.morphology import disk

from matseg.errors import MatsegError
from matseg.models.inference import segment_probs
from matseg.models.segmenter import Segmenter

# Honest operation count of the classical pipeline per voxel: a separable
# Gaussian (sigma 1, 9 taps per axis: 2 x 9 x 2 FLOPs), the threshold
# comparisons, and a 21-voxel majority vote (a compare and an add per voxel of
# the footprint), rounded up.
CLASSICAL_FLOPS_PER_VOXEL = 100.0
CLASSICAL_SMOOTHING = 1.0
CLASSICAL_FOOTPRINT = 2


@dataclass(frozen=True)
class Context:
    """What candidates share for one volume: the loaded models and the classical thresholds."""

    models: Mapping[str, Segmenter]
    thresholds: tuple[float, ...] = ()  # normalised intensities between phases, dark to bright
    phase_order: tuple[int, ...] = ()  # phase of each intensity class, dark to bright
    batch_tiles: int = 1  # tiles in one forward pass (segment_probs)
    phases: tuple[str, ...] = ()  # without models (classical alone): the phases it tells apart

    def __post_init__(self) -> None:
        named = {tuple(m.phases) for m in self.models.values()}
        if len(named) > 1:  # a weights folder whose nets were trained on other labels
            listing = "; ".join(f"{n}: {', '.join(m.phases)}" for n, m in self.models.items())
            raise MatsegError(
                f"the segmenters name different phases ({listing}): train them together on the same labels"
            )

    @property
    def n_phases(self) -> int:
        return len(next(iter(self.models.values())).phases) if self.models else len(self.phases)


@dataclass(frozen=True)
class Candidate:
    """One way to segment a tile: ``run(context, tile) -> probs`` and its cost in GFLOPs."""

    name: str
    run: Callable[[Context, np.ndarray], np.ndarray]
    gflops: Callable[[Context, tuple[int, int, int]], float]
    needs: tuple[str, ...] = ()  # models it uses
    description: str = ""
    context_radius: Callable[[Context], int] = lambda context: 8  # in-plane context it needs

    def halo(self, context: Context) -> int:
        """The halo this candidate runs with: its context, and at least the blending band."""
        from matseg.stitch import BAND

        return max(self.context_radius(context), BAND)


def _model_radius(name: str) -> Callable[[Context], int]:
    return lambda context: context.models[name].halo


def _model_run(name: str) -> Callable[[Context, np.ndarray], np.ndarray]:
    def run(context: Context, tile: np.ndarray) -> np.ndarray:
        return segment_probs(context.models[name], tile, context.batch_tiles)

    return run


def _model_gflops(name: str) -> Callable[[Context, tuple[int, int, int]], float]:
    return lambda context, shape: context.models[name].gflops(shape)


# In-plane flips (none, X, Y, both): the group the test-time-augmented candidates average over.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def _flips_averaged_run(name: str) -> Callable[[Context, np.ndarray], np.ndarray]:
    """Net ``name`` on the tile and on its three in-plane mirror images, each answer mirrored
    back and the probabilities averaged (test-time augmentation): the result is exactly
    equivariant to those flips, and steadier where the imaging differs from training
    (docs/benchmarks.md, "Robustness")."""

    def run(context: Context, tile: np.ndarray) -> np.ndarray:
        total = None
        for axes in FLIPS:
            image = np.flip(tile, axes).copy() if axes else tile  # a copy: no negative stride (torch)
            probs = segment_probs(context.models[name], image, context.batch_tiles)
            probs = np.flip(probs, axes) if axes else probs
            total = probs.astype(np.float32) if total is None else total + probs
        return total / np.float32(len(FLIPS))

    return run


def _flips_averaged_gflops(name: str) -> Callable[[Context, tuple[int, int, int]], float]:
    return lambda context, shape: len(FLIPS) * context.models[name].gflops(shape)


def _downscaled_run(context: Context, tile: np.ndarray) -> np.ndarray:
    """The expensive net on a 2x down-scaled tile; probabilities upsampled back (data slimming)."""
    n, h, w = tile.shape
    x = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32))[:, None]
    small = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)[:, 0].numpy()
    probs = torch.from_numpy(segment_probs(context.models["expensive"], small, context.batch_tiles))
    up = torch.nn.functional.interpolate(probs, scale_factor=2, mode="bilinear", align_corners=False)
    return up[..., :h, :w].numpy()


def _downscaled_gflops(context: Context, shape: tuple[int, int, int]) -> float:
    n, h, w = shape
    return context.models["expensive"].gflops((n, -(-h // 2), -(-w // 2)))


def _classical_run(context: Context, tile: np.ndarray) -> np.ndarray:
    """Multi-Otsu classes (thresholds of the whole volume) on a smoothed slice, cleaned by a majority vote."""
    if not context.thresholds:
        raise MatsegError("the classical candidate needs the volume's multi-Otsu thresholds")
    n_phases = context.n_phases
    order = np.asarray(context.phase_order or range(n_phases))
    footprint = disk(CLASSICAL_FOOTPRINT)
    probs = np.zeros((tile.shape[0], n_phases) + tile.shape[1:], np.float32)
    for z, image in enumerate(tile):
        smooth = gaussian(image, sigma=CLASSICAL_SMOOTHING, preserve_range=True)
        classes = np.digitize(smooth, context.thresholds).astype(np.uint8)
        classes = majority(classes, footprint)
        phase = order[classes]
        np.put_along_axis(probs[z], phase[None], 1.0, axis=0)
    return probs


def _classical_gflops(context: Context, shape: tuple[int, int, int]) -> float:
    return float(np.prod(shape)) * CLASSICAL_FLOPS_PER_VOXEL / 1e9


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate(
            "cheap",
            _model_run("cheap"),
            _model_gflops("cheap"),
            ("cheap",),
            "tiny UNet, always run",
            _model_radius("cheap"),
        ),
        Candidate(
            "medium",
            _model_run("medium"),
            _model_gflops("medium"),
            ("medium",),
            "mid-size UNet",
            _model_radius("medium"),
        ),
        Candidate(
            "expensive",
            _model_run("expensive"),
            _model_gflops("expensive"),
            ("expensive",),
            "large UNet",
            _model_radius("expensive"),
        ),
        # the expensive net's own radius, in full-resolution voxels (it would need twice that
        # for exactness at half scale; blending covers what the smaller halo misses)
        Candidate(
            "expensive-2x",
            _downscaled_run,
            _downscaled_gflops,
            ("expensive",),
            "large UNet on a 2x down-scaled tile, upsampled back",
            _model_radius("expensive"),
        ),
        Candidate(
            "classical", _classical_run, _classical_gflops, (), "multi-Otsu + majority filter (scikit-image)"
        ),
        *(
            Candidate(
                f"{name}-tta",
                _flips_averaged_run(name),
                _flips_averaged_gflops(name),
                (name,),
                f"the {name} net averaged over in-plane flips (4 passes)",
                _model_radius(name),
            )
            for name in ("medium", "expensive")
        ),
    )
}


def get_candidates(names: Sequence[str]) -> list[Candidate]:
    """The candidates called ``names``; ``cheap`` must come first."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise MatsegError(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    if not names or names[0] != "cheap":
        raise MatsegError("the first candidate must be 'cheap' (it always runs)")
    return [CANDIDATES[n] for n in names]
