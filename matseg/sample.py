"""``matseg sample``: write a synthetic battery-cathode volume with its ground truth."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dask
import yaml

from matseg.errors import MatsegError
from matseg.io.scale import VoxelSize
from matseg.io.write import axes_for, check_output, create_ome_store, remove_store
from matseg.synth import PHASES, SampleConfig, sample_arrays


def load_sample_config(path: str | os.PathLike | None) -> SampleConfig:
    """A :class:`SampleConfig` from a YAML file (keys as in ``data/sample.yaml``)."""
    if path is None:
        return SampleConfig()
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise MatsegError(f"sample config not found: {path}") from None
    except yaml.YAMLError as err:
        raise MatsegError(f"sample config {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise MatsegError(f"sample config {path} must be a mapping of settings")
    return SampleConfig.from_dict(values)


def write_sample(
    path: str | os.PathLike,
    shape: Sequence[int],
    seed: int,
    config: SampleConfig | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
    voxel_size: VoxelSize | None = None,
) -> Path:
    """Generate a sample and write it as an OME-Zarr image with a ``truth`` label image.

    Parameters
    ----------
    path : path
        The store to create.
    shape : sequence of int
        (Y, X) or (Z, Y, X).
    seed : int
        Same seed, same volume.
    config : SampleConfig, optional
        Geometry and imaging settings.
    overwrite : bool
        Replace an existing store.
    chunks : sequence of int, optional
        Chunks of the stored arrays (default: the generator's blocks).
    voxel_size : VoxelSize, optional
        Physical voxel size recorded in the store (default: none, one unit-less voxel).

    Returns
    -------
    Path
        The store: image at ``0``, phases at ``labels/truth/0``, and the
        difficulty field (0 clean .. 1 hard) at ``difficulty``.
    """
    config = config or SampleConfig()
    out = check_output(path, overwrite)
    arrays = sample_arrays(tuple(shape), seed, config, chunks=chunks)
    chunks = arrays["image"].chunksize
    if out.exists():
        remove_store(out)
    attrs = {
        "sample": {"seed": int(seed), "shape": list(shape), "config": config.to_dict()},
        "phases": list(PHASES),
    }
    root = create_ome_store(
        out,
        shape,
        chunks,
        image=("image", "uint8"),
        labels={"truth": PHASES},
        attrs=attrs,
        voxel_size=voxel_size,
    )
    difficulty = root.create_array(
        "difficulty", shape=tuple(shape), chunks=chunks, dtype="float32", dimension_names=axes_for(len(shape))
    )
    try:
        dask.compute(
            arrays["image"].store(root["0"], lock=False, compute=False),
            arrays["phases"].store(root["labels/truth/0"], lock=False, compute=False),
            arrays["difficulty"].store(difficulty, lock=False, compute=False),
        )
    except BaseException:
        remove_store(out)
        raise
    return out
