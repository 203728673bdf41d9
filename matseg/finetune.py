"""Fine-tuning the segmenters that produced an output on a reviewer's corrections.

It starts from the weights that produced the output (checked against its sha256),
learns from :func:`matseg.corrections.training_data_from_corrections` with the
one training loop (:func:`matseg.training.fit`), and writes a new weights folder,
never over the bundled one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matseg.corrections import Corrections, load_corrections, training_data_from_corrections
from matseg.errors import MatsegError
from matseg.io.guard import rebuilding
from matseg.io.paths import check_distinct
from matseg.labelled import UNLABELLED
from matseg.models.segmenter import SEGMENTERS, new_segmenter
from matseg.monitor import CancelToken, Monitor, Progress
from matseg.pipeline.report import REPORT_NAME
from matseg.selector.refit import SELECTOR_STEPS, selector_from_slices
from matseg.statistics import previous_sets, record_statistics
from matseg.training import fit, score
from matseg.training_checks import check_every_phase_labelled, check_fit_numbers

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("matseg.progress.finetune")  # per-model lines: --quiet hides them


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
    selector_steps: int = SELECTOR_STEPS,
) -> dict:
    """Fine-tune the segmenters that produced an output on its corrections.

    An output made without networks (``--model classical``) has no segmenters to start
    from: then the segmenters (cheap, medium and expensive, or ``models``) are trained from
    scratch, with the corrections' phase names. Either way the new folder gets a selector
    retrained for its segmenters on the corrected tiles (``result["selector"]``), or none
    when too few tiles were corrected: never the old one.

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
        Weights to start from; default: those recorded with the corrections, else the
        folder the output's report records (the bundled weights if neither does),
        checked against the output's sha256.
    steps : int or dict
        Optimiser steps, per model if a dict.
    batch, patch, lr, seed
        As for :func:`matseg.training.fit`; ``patch`` shrinks to fit small images.
    progress, cancel
        As for :func:`matseg.train`.
    selector_steps : int
        REINFORCE steps of the selector retrained for the new segmenters.

    Returns
    -------
    dict
        Per model: mIoU against the corrected labels on the corrected slices
        before (``miou_before``; None from scratch) and after (``miou_after``), ``worse``
        (lower after than before: also logged as a warning, the new weights are written all the
        same), slices, steps, seconds; and ``selector``: whether one was trained (tiles, default
        λ), or why not.
    """
    from matseg.models.store import (
        check_weights_folder,
        default_weights_dir,
        is_bundled,
        load_segmenter,
        read_manifest,
        save_segmenter,
    )

    if not isinstance(corrections, Corrections):
        corrections = load_corrections(corrections)
    out, bundled = Path(output), default_weights_dir()
    if is_bundled(out):
        raise MatsegError(
            f"refusing to write fine-tuned weights into the bundled weights folder {bundled}; "
            "choose another output folder"
        )
    explicit_init = init is not None
    used = {m["name"]: m.get("sha256") for m in corrections.attrs.get("models") or [] if "name" in m}
    scratch = not used and not explicit_init  # made without networks: nothing to start from
    init_dir = Path(init or corrections.attrs.get("weights") or _output_weights(corrections) or bundled)
    manifest = {} if scratch else read_manifest(init_dir)
    models = list(models or used or (SEGMENTERS if scratch else ["cheap"]))
    if scratch and "cheap" not in models:
        raise MatsegError("training from scratch needs the cheap segmenter among --model (it always runs)")
    if scratch and len(corrections.phases) < 2:
        raise MatsegError(f"{corrections.path} names fewer than 2 phases; cannot train segmenters")
    data = training_data_from_corrections(corrections)
    _check_phases_taught(data, corrections, scratch)

    image = corrections.attrs.get("image")
    sources = [("corrections", corrections.path), ("image", image), ("segmentation", corrections.output)]
    check_distinct(out, [*sources, ("--init", init_dir)])
    check_weights_folder(out)
    unknown = [m for m in models if m not in SEGMENTERS]
    if unknown:
        raise MatsegError(f"--model {', '.join(unknown)}: choose among {', '.join(SEGMENTERS)}")
    check_fit_numbers(steps, batch, patch, lr)
    # made anew beside ``out`` and put in its place at the end: cancelled or failed, ``out`` is as
    # it was; finished, it holds this fine-tune's nets and selector only (an earlier fine-tune's
    # selector, made for other nets, is never left in it)
    with rebuilding(out, keep=False) as folder:
        folder.mkdir(parents=True, exist_ok=True)  # (a new output's sibling is not made for us)
        _copy_weights(init_dir, folder, manifest, skip=[*models, "selector"])
        results, monitor = {}, Monitor(progress, cancel)
        for name in models:
            if scratch:
                model = new_segmenter(name, corrections.phases, seed)
            else:
                model = load_segmenter(name, init_dir)
            if not explicit_init and used.get(name) and used[name] != model.sha256:
                raise MatsegError(
                    f"the output was segmented with {name} weights sha256 {used[name][:12]}..., but "
                    f"{init_dir} holds {model.sha256[:12]}...; pass the weights folder it used as "
                    "init= (--init on the command line)"
                )
            if corrections.phases and model.phases != corrections.phases:
                raise MatsegError(
                    f"{name} weights have phases {model.phases}; corrections have {corrections.phases}"
                )
            n_steps = steps.get(name, max(steps.values())) if isinstance(steps, dict) else steps
            numbers = {"seed": seed, "steps": n_steps, "batch": batch, "patch": patch, "lr": lr}
            results[name] = _finetune(model, data, numbers, monitor, scratch)
            record = {
                "training": {
                    "command": command or "matseg.corrections.finetune_from_corrections",
                    "from_corrections": str(corrections.path.absolute()),
                    "init": None if scratch else str(init_dir.absolute()),
                    "slices": corrections.corrected_slices,
                    **{k: v for k, v in results[name].items() if k not in ("iou_after", "seconds")},
                    "seconds": round(results[name]["seconds"], 1),
                }
            }
            save_segmenter(model, folder, record)
            results[name]["slices"] = corrections.corrected_slices
            before = results[name]["miou_before"]
            progress_log.info(
                "%s: mIoU on corrected slices %s -> %.4f",
                name,
                "scratch" if before is None else f"{before:.4f}",
                results[name]["miou_after"],
            )
            if results[name]["worse"]:
                logger.warning("%s", lowered_advice(name, results[name], init_dir))
        if "cheap" in read_manifest(folder):
            keep = [] if scratch else previous_sets(init_dir)
            source = f"{corrections.path} (corrected slices)"
            record_statistics(folder, [data.images], source, keep, shown_as=out)
        tile = tuple((corrections.attrs.get("tile") or [256, 256])[-2:])
        results["selector"] = selector_from_slices(data, folder, tile, selector_steps, seed, command)
        selector = results["selector"]
        if selector["trained"]:
            logger.info("selector retrained for the new segmenters on %d tiles", selector["tiles"])
        else:
            logger.warning(
                "no selector in %s (%s): use --model with it, or train one with 'matseg train-selector'",
                out,
                selector["reason"],
            )
        return results


def _check_phases_taught(data, corrections: Corrections, scratch: bool) -> None:
    """From scratch, every phase must be labelled somewhere (as for ``matseg train``); a
    fine-tune needs at least two: on tiles of one phase it learns that phase everywhere (a
    reviewer who marked three background-only slices got a net that grew its background)."""
    if scratch:
        check_every_phase_labelled([data], corrections.phases)
        return
    present = np.unique(data.labels[data.labels != UNLABELLED])
    if len(present) < 2:
        names = ", ".join(corrections.phases[v] for v in present) or "none"
        raise MatsegError(
            f"the corrected tiles of {corrections.path} label one phase only ({names}): fine-tuning on "
            "them would teach the nets that phase everywhere; correct, or mark reviewed, tiles that "
            "show the other phases too"
        )


def _finetune(model, data, numbers: dict, monitor: Monitor, scratch: bool) -> dict:
    """Fit ``model`` on the corrected slices ``data``; its scores before and after, and the
    numbers it ran with (the patch shrunk to the slices and the net's stride)."""
    size = min(numbers["patch"], *data.images.shape[1:])
    size = max(model.stride, size - size % model.stride)
    before = None if scratch else score(model, [data])
    started = time.perf_counter()
    steps, batch, lr, seed = (numbers[k] for k in ("steps", "batch", "lr", "seed"))
    fit(model, [data], steps, batch=batch, patch=size, lr=lr, seed=seed, monitor=monitor)
    seconds = time.perf_counter() - started
    after = score(model, [data])
    return {
        **numbers,
        "patch": size,
        "seconds": seconds,
        "miou_before": before and before["miou"],
        "miou_after": after["miou"],
        "iou_after": after["iou"],
        # the slices it learnt from: a fine-tune that scores lower on them has not learnt them
        "worse": before is not None and after["miou"] < before["miou"],
    }


def _output_weights(corrections: Corrections) -> str | None:
    """The weights folder the corrected output's report records (corrections saved before
    the report recorded it hold none themselves); None where it records none."""
    try:
        report = json.loads((Path(corrections.output) / REPORT_NAME).read_text())
    except (OSError, ValueError, KeyError):
        return None
    return report.get("weights") if isinstance(report, dict) else None


def lowered_advice(name: str, result: dict, init: Path) -> str:
    """What a fine-tune that scores lower on its own corrected slices says: the net forgot more
    than it learnt (too large a learning rate, or too few steps for the warm-up to settle)."""
    return (
        f"fine-tuning made {name} worse on the corrected slices it learnt from (mIoU "
        f"{result['miou_before']:.4f} -> {result['miou_after']:.4f}): try a smaller --lr or more "
        f"--steps; the weights it started from ({init}) are unchanged"
    )


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
