"""One tile through the models: normalised with its halo, the cheap pass (labels,
uncertainty, selector features of its core), or a candidate's probabilities.

Pure functions over one tile's array; the pipeline's stages wire them into task
graphs and write what they return; selector training calls them on labelled tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from matseg.candidates.features import tile_features, tile_features_torch
from matseg.candidates.registry import Candidate, Context
from matseg.models.inference import inference_device, reduce_probs, segment_probs
from matseg.models.labels import normalized_entropy, phase_labels
from matseg.stitch import crop_extended
from matseg.tiling import TileGrid


@dataclass(frozen=True)
class TileInput:
    """One tile as the models see it: normalised (Z, Y, X) with its halo, and where its core lies."""

    image: np.ndarray
    core: tuple[slice, slice]  # the core inside ``image`` (in-plane)
    covers: tuple[slice, ...]  # what ``image`` covers in volume coordinates (all axes)


def tile_input(block: np.ndarray, index: Sequence[int], grid: TileGrid, norm) -> TileInput:
    x = norm(block)
    x = x if x.ndim == 3 else x[None]
    (y0, y1), (x0, x1) = grid.halo_of(index)[-2:]
    core = (slice(y0, x.shape[-2] - y1), slice(x0, x.shape[-1] - x1))
    region = grid.region(index)
    covers = list(region)
    covers[-2] = slice(region[-2].start - y0, region[-2].stop + y1)
    covers[-1] = slice(region[-1].start - x0, region[-1].stop + x1)
    return TileInput(x, core, tuple(covers))


def cheap_pass(tile: TileInput, context: Context, on_device: bool | None = None) -> dict:
    """The cheap segmenter on a tile: labels, uncertainty and selector features of its core.

    ``on_device`` (default: when the models run on a GPU) computes them where the
    probabilities are (:func:`device_core_results`); on a CPU numpy is the faster
    (docs/benchmarks.md) and gives the outputs of earlier versions bit for bit.
    """
    model = context.models["cheap"]
    if on_device is None:
        on_device = inference_device().type != "cpu"
    if on_device:
        labels, uncertainty, features = reduce_probs(model, tile.image, partial(device_core_results, tile))
        return {
            "labels": labels,
            "uncertainty": uncertainty,
            "features": features,
            "gflops": model.gflops(tile.image.shape),
        }
    probs = segment_probs(model, tile.image, context.batch_tiles)
    core = (slice(None), *tile.core)
    probs_core = probs[(slice(None), slice(None), *tile.core)]
    labels = phase_labels(probs_core)
    uncertainty = normalized_entropy(probs_core)  # of the core only: all that is kept
    return {
        "labels": labels,
        "uncertainty": uncertainty,
        "features": tile_features(tile.image[core], probs_core, uncertainty, labels),
        "gflops": model.gflops(tile.image.shape),
    }


def device_core_results(tile: TileInput, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (uint8), uncertainty and selector features of the tile's core from ``probs``
    (a tensor, on the device the model ran on): what comes back to the host is a byte and
    a float a voxel and the feature vector, not the probabilities."""
    import torch

    probs = probs[(slice(None), slice(None), *tile.core)]
    labels = probs.argmax(dim=1)  # the first phase wins a tie, as in phase_labels
    terms = probs.clamp(min=1e-8).log_() * probs
    uncertainty = -terms.sum(dim=1) / np.float32(np.log(probs.shape[1]))
    image = torch.from_numpy(np.ascontiguousarray(tile.image[(slice(None), *tile.core)])).to(probs.device)
    features = tile_features_torch(image, probs, uncertainty, labels)
    return labels.to(torch.uint8).cpu().numpy(), uncertainty.cpu().numpy(), features


def candidate_probs(tile: TileInput, candidate: Candidate, context: Context, want: tuple[slice, ...]):
    """``candidate``'s probabilities over the region ``want`` (core plus blending band)."""
    probs = candidate.run(context, tile.image)
    return crop_extended(probs, tile.covers, want), candidate.gflops(context, tile.image.shape)
