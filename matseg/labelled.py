"""Labelled slices for training: read from an image/label pair, split for validation, and
drawn as random 2-D patches (:mod:`matseg.training` trains on them).

Images are normalised exactly as :func:`matseg.segment` normalises them, so weights trained
on them serve ``matseg segment --weights DIR`` unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from matseg.errors import MatsegError
from matseg.io.read import Volume, open_labels, open_volume
from matseg.io.region import crop, parse_region
from matseg.normalize import intensity_range
from matseg.validate import check_label_dtype

UNLABELLED = 255
MAX_TRAINING_BYTES = 4 << 30


@dataclass
class LabelledSlices:
    """Normalised image slices (N, Y, X) float32 and their labels (N, Y, X) uint8."""

    images: np.ndarray
    labels: np.ndarray
    source: str


def load_labelled(
    image: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    slices: Sequence[int] | None = None,
    region: Sequence | None = None,
    remedy: str = "give its labels with --labels",
) -> tuple[LabelledSlices, tuple[str, ...] | None]:
    """Read the labelled slices of an image/label pair into memory.

    ``labels`` defaults to the image store's own label image (e.g. ``truth`` of a
    ``matseg sample`` store). Slices without any label (all 255) are skipped. ``region``
    ((start, stop) per axis: a ``--region`` output's box) cuts the image to the labels' box.
    ``remedy`` is what a message tells to do without labels (:func:`matseg.io.read.open_labels`).
    """
    volume = open_volume(image)
    if region:  # the box a --region output holds: the image must still hold it
        try:
            volume = crop(volume, parse_region(region, volume.shape))
        except MatsegError:
            raise MatsegError(
                f"{volume.source} of shape {volume.shape} no longer holds the box "
                f"{[list(b) for b in region]} the labels were segmented from"
            ) from None
    label_volume = open_labels(image, labels, remedy)
    if label_volume.shape != volume.shape:
        raise MatsegError(
            f"labels {label_volume.source} have shape {label_volume.shape}; image has {volume.shape}"
        )
    check_label_dtype(label_volume.data.dtype, label_volume.source, "labels")
    norm = intensity_range(volume)
    img, lab = _as_3d(volume), _as_3d(label_volume)
    if slices is None:
        slices = range(img.shape[0])
    bad = [z for z in slices if not 0 <= z < img.shape[0]]
    if bad:
        raise MatsegError(f"slices {bad} are outside 0..{img.shape[0] - 1} of {volume.source}")
    nbytes = len(slices) * int(np.prod(img.shape[1:])) * 5
    if nbytes > MAX_TRAINING_BYTES:
        raise MatsegError(
            f"{len(slices)} labelled slices of {volume.source} need {nbytes / 2**30:.1f} GiB; "
            "pick fewer with --slices"
        )
    z = list(slices)
    lab_np = np.asarray(lab[z].compute())
    if lab_np.dtype != np.uint8 and lab_np.size and not 0 <= lab_np.min() <= lab_np.max() <= UNLABELLED:
        odd = lab_np.min() if lab_np.min() < 0 else lab_np.max()
        raise MatsegError(
            f"labels {label_volume.source} hold the value {odd}: label values are phases 0, 1, ... "
            f"and {UNLABELLED} = unlabelled"
        )
    lab_np = lab_np.astype(np.uint8)
    keep = [i for i in range(len(z)) if (lab_np[i] != UNLABELLED).any()]
    if not keep:
        raise MatsegError(
            f"labels {label_volume.source} label no voxel"
            + (" of the slices asked for" if slices != range(img.shape[0]) else "")
            + f": every one is {UNLABELLED} (unlabelled)"
        )
    images = norm(np.asarray(img[z].compute()))[keep]
    return LabelledSlices(images, lab_np[keep], volume.source), label_volume.phases


def _as_3d(volume: Volume):
    return volume.data if volume.ndim == 3 else volume.data[None]


def draw_batch(
    data: Sequence[LabelledSlices], rng: np.random.Generator, batch: int, patch: int, augment: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches (with flips, rotations and intensity jitter) and their labels."""
    xs, ys = [], []
    weights = np.array([len(d.images) for d in data], float)
    for _ in range(batch):
        d = data[rng.choice(len(data), p=weights / weights.sum())]
        i = rng.integers(len(d.images))
        h, w = d.images.shape[1:]
        ph, pw = min(patch, h), min(patch, w)
        y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        x = d.images[i, y0 : y0 + ph, x0 : x0 + pw]
        y = d.labels[i, y0 : y0 + ph, x0 : x0 + pw]
        if (ph, pw) != (patch, patch):  # small images: pad, padding unlabelled
            x = np.pad(x, ((0, patch - ph), (0, patch - pw)), mode="edge")
            y = np.pad(y, ((0, patch - ph), (0, patch - pw)), constant_values=UNLABELLED)
        if augment:
            k = rng.integers(4)
            x, y = np.rot90(x, k), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y, dtype=np.int64))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


def hold_out(data: list[LabelledSlices]) -> tuple[list[LabelledSlices], list[LabelledSlices]]:
    """Every tenth slice (from the sixth; the last of a short volume) for validation, the
    rest for training: (validation, training)."""
    val, train = [], []
    for d in data:
        held = np.zeros(len(d.images), bool)
        held[5::10] = True
        if len(d.images) >= 2 and not held.any():
            held[-1] = True
        if held.any():
            val.append(LabelledSlices(d.images[held], d.labels[held], d.source))
        if (~held).any():
            train.append(LabelledSlices(d.images[~held], d.labels[~held], d.source))
    return val, train
