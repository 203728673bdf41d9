"""``matseg train``: fit the segmenters on labelled volumes (ours or a lab's own).

Training draws random 2-D patches from the labelled slices of each volume,
normalised exactly as :func:`matseg.segment` normalises them, so weights
trained here serve ``matseg segment --weights DIR`` unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from matseg.augment import Augmentation, augment_batch, load_augmentation
from matseg.errors import MatsegError
from matseg.io.guard import rebuilding
from matseg.io.paths import check_distinct
from matseg.labelled import UNLABELLED, LabelledSlices, draw_batch, hold_out, load_labelled
from matseg.metrics import iou_per_phase
from matseg.models.inference import segment_probs
from matseg.models.segmenter import Segmenter, new_segmenter
from matseg.models.store import check_weights_folder, load_segmenter, read_manifest, save_segmenter
from matseg.monitor import CancelToken, Monitor, Progress
from matseg.selector.policy import remove_selector
from matseg.training_checks import (
    check_every_phase_labelled,
    check_fit_numbers,
    check_folder_phases,
    check_patch,
    check_val_phases,
)
from matseg.validate import check_phase_names

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("matseg.progress")

MAX_PHASES = 32  # more label values than this, with no phase names: an image given as labels


def score(model: Segmenter, data: Sequence[LabelledSlices]) -> dict:
    """mIoU and per-phase IoU of whole-slice inference on labelled slices."""
    n = len(model.phases)
    cm = np.zeros((n, n), np.int64)
    for d in data:
        for start in range(0, len(d.images), 4):
            probs = segment_probs(model, d.images[start : start + 4])
            pred = probs.argmax(1).ravel()
            truth = d.labels[start : start + 4].ravel().astype(np.int64)
            ok = truth < n
            cm += np.bincount(truth[ok] * n + pred[ok], minlength=n * n).reshape(n, n)
    iou = iou_per_phase(cm)
    return {"miou": float(np.nanmean(iou)), "iou": dict(zip(model.phases, map(float, iou)))}


def fit(
    model: Segmenter,
    data: Sequence[LabelledSlices],
    steps: int,
    batch: int = 8,
    patch: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    monitor: Monitor | None = None,
    augment: Augmentation | None = None,
) -> list[float]:
    """Train ``model`` in place (AdamW, warm-up then cosine decay); return the loss curve.

    The one training loop: :func:`train` and fine-tuning from corrections both run it.
    ``monitor`` reports the stage ``training <model>`` step by step and stops it when cancelled.
    ``augment`` re-images the patches (:mod:`matseg.augment`) from its own random stream, so
    the patches drawn are those of a run without it.
    """
    stage = (monitor or Monitor()).stage(f"training {model.name}", steps)
    check_patch(model, data, batch, patch)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    augment_rng = np.random.default_rng([seed, 1])
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(k, steps) / steps))
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=UNLABELLED)
    losses = []
    for step in range(steps):
        x, y = draw_batch(data, rng, batch, patch)
        if augment is not None:
            x, y = (
                torch.from_numpy(a)
                for a in augment_batch(x[:, 0].numpy(), y.numpy(), augment_rng, augment, step / steps)
            )
            x = x[:, None]
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            # a progress line: --quiet drops it (the "matseg.progress" logger)
            progress_log.info("%s: step %d/%d loss %.4f", model.name, step + 1, steps, np.mean(losses[-50:]))
        try:
            stage.advance()
        except BaseException:
            net.eval()
            raise
    net.eval()
    return losses


def train(
    images: Sequence[str],
    output: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    models: Sequence[str] = ("cheap", "medium", "expensive"),
    phases: Sequence[str] | None = None,
    val: Sequence[str] | None = None,
    slices: Sequence[int] | None = None,
    steps: dict[str, int] | int = 1000,
    batch: int = 8,
    patch: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    init: str | os.PathLike | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    augment: Augmentation | str | os.PathLike | None = "light",
) -> dict:
    """Train segmenters on labelled volumes and write them to a weights folder.

    Parameters
    ----------
    images : sequence of str
        Image volumes (any format :func:`matseg.open_volume` reads).
    output : path
        Weights folder to write (``manifest.json`` + ``<model>.pt``). All or nothing: the nets
        are written into a copy of it beside it (a hidden sibling, on the same file system),
        renamed into place when every net and the training statistics are written. An existing
        folder keeps the nets not trained now and loses its selector (trained for the nets
        replaced).
    labels : sequence of str, optional
        One label volume per image, same shape; 255 marks unlabelled voxels.
        Default: each image store's own label image (``labels/truth``).
    models : sequence of str
        Which segmenters to train (``cheap``, ``expensive``).
    phases : sequence of str, optional
        Phase names, one per label value; default: from the label metadata.
    val : sequence of str, optional
        Labelled validation volumes; default: every 10th labelled slice is held out.
    slices : sequence of int, optional
        Only these slices are labelled (a few hand-labelled slices of a volume).
    steps : int or dict
        Optimiser steps, per model if a dict.
    init : path, optional
        Start from the weights in this folder (fine-tuning) instead of from scratch.
    progress : callable, optional
        ``progress(stage, done, total)`` as each model trains (stage ``training <model>``).
    cancel : object with ``is_set()``, optional
        Once set, training stops at the next step and raises :class:`matseg.Cancelled`;
        ``output`` is then as it was (a new folder: absent), as on any error or interrupt.
    augment : Augmentation, str or path, optional
        Imaging augmentation: an :class:`~matseg.augment.Augmentation`, or ``"light"`` (the
        default, as ``matseg train``), ``"strong"``, ``"none"`` or a YAML file (see
        :func:`matseg.augment.load_augmentation`); ``None`` or ``"none"`` keeps only flips, 90°
        rotations and a linear intensity jitter.

    Returns
    -------
    dict
        Per model: validation mIoU and per-phase IoU, steps, seconds.
    """
    if labels is not None and len(labels) != len(images):
        raise MatsegError(f"{len(labels)} label volumes for {len(images)} images; give one per image")
    inputs = [("image", i) for i in images] + [("--labels", v) for v in labels or ()]
    check_distinct(output, inputs + [("--val", v) for v in val or ()] + [("--init", init)])
    if not isinstance(augment, Augmentation):
        augment = load_augmentation(augment)
    check_weights_folder(output)
    check_fit_numbers(steps, batch, patch, lr)
    data, found = [], None
    for i, image in enumerate(images):
        slices_i, names = load_labelled(image, labels[i] if labels else None, slices)
        data.append(slices_i)
        found = found or names
    n_values = int(max(d.labels[d.labels != UNLABELLED].max(initial=0) for d in data)) + 1
    named = bool(phases)
    if named:  # a name given blank (--phases ' ') or twice is said as such, before any count
        check_phase_names(tuple(phases))
    phases = (
        tuple(phases) if phases else (tuple(found) if found else tuple(f"phase{i}" for i in range(n_values)))
    )
    if not found and not named and n_values > MAX_PHASES:
        raise MatsegError(
            f"labels use values up to {n_values - 1}: more than {MAX_PHASES} phases, so probably an image "
            "given as labels; give the label image (255 = unlabelled), or name the phases with --phases"
        )
    if n_values > len(phases):
        raise MatsegError(f"labels use values up to {n_values - 1} but only {len(phases)} phases are named")
    if len(phases) < 2:
        raise MatsegError(f"training needs at least 2 phases; the labels have {len(phases)}")
    check_phase_names(phases)
    if init is None:
        check_every_phase_labelled(data, phases)
    check_folder_phases(output, phases, models)
    if val:
        remedy = "a volume given with --val needs labels of its own"
        val_data, val_names = zip(*(load_labelled(v, remedy=remedy) for v in val))
        check_val_phases(val, val_data, phases, val_names)
    else:
        val_data, data = hold_out(data)
    if not data or not val_data:
        raise MatsegError("not enough labelled slices to train and validate; label more slices")
    nets = {}  # every net, and what it is trained with, checked before the first one trains
    for name in models:
        nets[name] = load_segmenter(name, init) if init else new_segmenter(name, phases, seed)
        if nets[name].phases != phases:
            raise MatsegError(f"--init weights have phases {nets[name].phases}; the labels have {phases}")
        check_patch(nets[name], data, batch, patch)
    results, monitor = {}, Monitor(progress, cancel)
    # on a copy of the folder, put in its place once every net and the statistics are written:
    # stopped halfway, the folder stays as it was (new: absent), never nets of two trainings
    with rebuilding(output) as folder:
        for name, model in nets.items():
            n_steps = steps[name] if isinstance(steps, dict) else steps
            started = time.perf_counter()
            fit(
                model, data, n_steps, batch=batch, patch=patch, lr=lr, seed=seed, monitor=monitor,
                augment=augment,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            metrics = score(model, val_data)
            record = {
                "training": {
                    "command": command or "matseg.train",
                    "seed": seed,
                    "steps": n_steps,
                    "batch": batch,
                    "patch": patch,
                    "lr": lr,
                    "augment": augment.to_dict() if augment else "none",
                    "seconds": round(seconds, 1),
                    "images": list(images),
                    "validation": list(val) if val else "every 10th labelled slice",
                    "init": str(init) if init else None,
                    "val_miou": metrics["miou"],
                    "val_iou": metrics["iou"],
                }
            }
            save_segmenter(model, folder, record)
            results[name] = {**metrics, "steps": n_steps, "seconds": seconds}
            logger.info(
                "%s: validation mIoU %.4f after %d steps (%.0f s)", name, metrics["miou"], n_steps, seconds
            )
        dropped = remove_selector(folder)  # chosen by the gains of the segmenters it replaces
        if "cheap" in read_manifest(folder):  # what a run compares its volume with (candidates.fit)
            from matseg.statistics import record_statistics

            sources = ", ".join(map(str, images))
            record_statistics(folder, [d.images for d in data], sources, shown_as=output)
    if dropped:
        logger.warning(
            "%s: its selector was trained for the segmenters replaced now: removed; retrain one with "
            "'matseg train-selector'",
            output,
        )
    return results
