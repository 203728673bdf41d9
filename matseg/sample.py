"""``matseg sample``: write a synthetic battery-cathode volume with its ground truth."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import dask
import yaml

from matseg.errors import MatsegError
from matseg.io.guard import building, remove_output
from matseg.io.scale import VoxelSize
from matseg.io.write import axes_for, check_output, create_ome_store, for_tile_writes
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


BYTES_PER_VOXEL = 6  # image and phases (uint8) and difficulty (float32), before compression


def _check_space(out: Path, shape: Sequence[int]) -> None:
    """Refuse a sample the disk cannot hold, before anything is planned or rendered."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return  # not a shape: sample_arrays says what is wrong with it
    needed = math.prod(shape) * BYTES_PER_VOXEL
    parent = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise MatsegError(
            f"a sample of shape {shape} needs up to {needed / 1e9:,.1f} GB "
            f"(uncompressed); {free / 1e9:,.1f} GB are free at {parent}: choose a smaller --shape"
        )


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
    out = check_output(path, overwrite, kinds=("sample",))
    _check_space(out, shape)
    arrays = sample_arrays(tuple(shape), seed, config, chunks=chunks)
    chunks = arrays["image"].chunksize
    attrs = {
        "sample": {"seed": int(seed), "shape": list(shape), "config": config.to_dict()},
        "phases": list(PHASES),
    }
    # written whole under a hidden name, then renamed: a kill leaves no half-written sample
    with building(out) as temp:
        root = create_ome_store(
            temp,
            shape,
            chunks,
            image=("image", "uint8"),
            labels={"truth": PHASES},
            attrs=attrs,
            voxel_size=voxel_size,
        )
        difficulty = root.create_array(
            "difficulty",
            shape=tuple(shape),
            chunks=chunks,
            dtype="float32",
            dimension_names=axes_for(len(shape)),
        )
        # every chunk stored, also those equal to the fill value: a missing chunk then means a lost one
        targets = [for_tile_writes(a) for a in (root["0"], root["labels/truth/0"], difficulty)]
        dask.compute(
            *(
                arrays[name].store(target, lock=False, compute=False)
                for name, target in zip(("image", "phases", "difficulty"), targets)
            )
        )
        remove_output(out, ("sample",))  # the old sample, once the new one is complete
    return out
