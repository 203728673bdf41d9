"""A selector for segmenters fine-tuned (or trained) on a reviewer's corrections.

The selector chooses by what each candidate gains on a tile; segmenters trained
anew change those gains, so a weights folder whose segmenters changed gets a selector
retrained in the same step, on the tiles the reviewer corrected or marked reviewed,
or none at all: never the old one kept silently.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import zarr

from matseg.errors import MatsegError
from matseg.labelled import UNLABELLED, LabelledSlices
from matseg.models.store import read_manifest
from matseg.selector.policy import remove_selector, save_selector_record
from matseg.selector.train import TooFewTiles, train_selector

SELECTOR_STEPS = 2000  # the table is a few dozen tiles: fewer steps than for the bundled selector


def selector_from_slices(
    data: LabelledSlices,
    weights: str | os.PathLike,
    tile: tuple[int, int] = (256, 256),
    steps: int = SELECTOR_STEPS,
    seed: int = 0,
    command: str | None = None,
) -> dict:
    """Train the selector of ``weights`` on labelled slices (255 = unlabelled), slice by slice.

    Each corrected slice is cut into tiles of ``tile`` in-plane, one slice deep, so a few
    slices give enough tiles; the tile table is the one ``matseg train-selector`` makes.

    Returns
    -------
    dict
        ``{"trained": True, "tiles": n, "default_lambda": λ}``, or ``{"trained": False,
        "reason": ...}`` when it could not be trained (the folder then holds no selector).
    """
    weights = Path(weights)
    remove_selector(weights)
    if (data.labels != UNLABELLED).sum() == 0:
        return {"trained": False, "reason": "no labelled voxel"}
    with tempfile.TemporaryDirectory(prefix="matseg-selector-") as scratch:
        image, labels = Path(scratch) / "image.zarr", Path(scratch) / "labels.zarr"
        zarr.save_array(str(image), np.ascontiguousarray(data.images, np.float32), zarr_format=3)
        zarr.save_array(str(labels), np.ascontiguousarray(data.labels, np.uint8), zarr_format=3)
        try:
            record = train_selector(
                [str(image)], weights, labels=[str(labels)], tile=(1, *tile), steps=steps, seed=seed,
                command=command,
            )  # fmt: skip
        except TooFewTiles as err:  # its --tile advice is for train-selector, not for corrections
            remove_selector(weights)
            reason = f"the corrected slices give {err.found} labelled tile(s); the selector needs at least 2"
            return {"trained": False, "reason": reason + " labelled tiles to train on"}
        except MatsegError as err:
            remove_selector(weights)
            return {"trained": False, "reason": str(err)}  # the caller says it, with what to do
    # the tile table names the scratch volumes: what they were made of is what counts
    entry = read_manifest(weights)["selector"]
    save_selector_record(weights, entry | {"trained_on": [f"{data.source} (corrected slices)"]})
    return {"trained": True, "tiles": record["tiles"], "default_lambda": record["default_lambda"]}
