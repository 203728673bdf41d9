"""Fine-tuning the segmenters that produced an output on a reviewer's corrections.

It starts from the weights that produced the output (checked against its sha256),
learns from :func:`matseg.corrections.training_data_from_corrections` with the
one training loop (:func:`matseg.training.fit`), and writes a new weights folder,
never over the bundled one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from matseg.corrections import Corrections, load_corrections, training_data_from_corrections
from matseg.errors import MatsegError
from matseg.io.paths import check_distinct
from matseg.monitor import CancelToken, Monitor, Progress
from matseg.training import fit, score

logger = logging.getLogger(__name__)


def finetune_from_corrections(
    corrections: Corrections | str | os.PathLike,
    output: str | os.PathLike,
    *,
    models: Sequence[str] | None = None,
    init: str | os.PathLike | None = None,
    steps: int | dict[str, int] = 200,
    batch: int = 8,
    patch: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    command: str | None = None,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> dict:
    """Fine-tune the segmenters that produced an output on its corrections.

    Parameters
    ----------
    corrections : Corrections or path
        A corrections store (:func:`save_corrections`).
    output : path
        Weights folder to write; never the bundled weights folder. Models that
        are not fine-tuned are copied from ``init`` so the folder is complete.
    models : sequence of str, optional
        Segmenters to fine-tune; default: those the output was segmented with.
    init : path, optional
        Weights to start from; default: those recorded with the corrections
        (the bundled weights if none), checked against the output's sha256.
    steps : int or dict
        Optimiser steps, per model if a dict.
    batch, patch, lr, seed
        As for :func:`matseg.training.fit`; ``patch`` shrinks to fit small images.
    progress, cancel
        As for :func:`matseg.train`.

    Returns
    -------
    dict
        Per model: mIoU against the corrected labels on the corrected slices
        before (``miou_before``) and after (``miou_after``), slices, steps, seconds.
    """
    from matseg.models.store import (
        check_weights_folder,
        default_weights_dir,
        load_segmenter,
        read_manifest,
        save_segmenter,
    )

    if not isinstance(corrections, Corrections):
        corrections = load_corrections(corrections)
    out, bundled = Path(output), default_weights_dir()
    if out.absolute().resolve() == bundled.absolute().resolve():
        raise MatsegError(
            f"refusing to write fine-tuned weights into the bundled weights folder {bundled}; "
            "choose another output folder"
        )
    explicit_init = init is not None
    init_dir = Path(init or corrections.attrs.get("weights") or bundled)
    manifest = read_manifest(init_dir)
    used = {m["name"]: m.get("sha256") for m in corrections.attrs.get("models") or [] if "name" in m}
    models = list(models or used or ["cheap"])
    data = training_data_from_corrections(corrections)

    image = corrections.attrs.get("image")
    check_distinct(out, [("corrections", corrections.path), ("image", image), ("--init", init_dir)])
    check_weights_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    _copy_weights(init_dir, out, manifest, skip=models)
    results, monitor = {}, Monitor(progress, cancel)
    for name in models:
        model = load_segmenter(name, init_dir)
        if not explicit_init and used.get(name) and used[name] != model.sha256:
            raise MatsegError(
                f"the output was segmented with {name} weights sha256 {used[name][:12]}..., but "
                f"{init_dir} holds {model.sha256[:12]}...; pass the weights folder it used as init (--init)"
            )
        if corrections.phases and model.phases != corrections.phases:
            raise MatsegError(
                f"{name} weights have phases {model.phases}; corrections have {corrections.phases}"
            )
        size = min(patch, *data.images.shape[1:])
        size = max(model.stride, size - size % model.stride)
        n_steps = steps.get(name, max(steps.values())) if isinstance(steps, dict) else steps
        before = score(model, [data])
        started = time.perf_counter()
        fit(model, [data], n_steps, batch=batch, patch=size, lr=lr, seed=seed, monitor=monitor)
        seconds = time.perf_counter() - started
        after = score(model, [data])
        record = {
            "training": {
                "command": command or "matseg.corrections.finetune_from_corrections",
                "from_corrections": str(corrections.path.absolute()),
                "init": str(init_dir.absolute()),
                "slices": corrections.corrected_slices,
                "seed": seed,
                "steps": n_steps,
                "batch": batch,
                "patch": size,
                "lr": lr,
                "seconds": round(seconds, 1),
                "miou_before": before["miou"],
                "miou_after": after["miou"],
            }
        }
        save_segmenter(model, out, record)
        results[name] = {
            "miou_before": before["miou"],
            "miou_after": after["miou"],
            "iou_after": after["iou"],
            "slices": corrections.corrected_slices,
            "steps": n_steps,
            "seconds": seconds,
        }
        logger.info("%s: mIoU on corrected slices %.4f -> %.4f", name, before["miou"], after["miou"])
    return results


def _copy_weights(source: Path, target: Path, manifest: dict, skip: Iterable[str]) -> None:
    """Copy the weights files and manifest entries of ``source`` not in ``skip`` into ``target``."""
    import json

    from matseg.models.store import MANIFEST

    kept = {}
    for name, entry in manifest.items():
        if name in skip or not isinstance(entry, dict) or "file" not in entry:
            continue
        if (source / entry["file"]).is_file():
            shutil.copy2(source / entry["file"], target / entry["file"])
            kept[name] = entry
    existing = json.loads((target / MANIFEST).read_text()) if (target / MANIFEST).is_file() else {}
    (target / MANIFEST).write_text(json.dumps({**existing, **kept}, indent=2) + "\n")
