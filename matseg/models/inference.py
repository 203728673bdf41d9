"""Inference on a tile: a segmenter's phase probabilities, on the device chosen for this process."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np
import torch

from matseg.errors import MatsegError
from matseg.models.segmenter import Segmenter
from matseg.models.unet import pad_to_stride


def segment_probs(model: Segmenter, tile: np.ndarray) -> np.ndarray:
    """Phase probabilities of a batch of normalised 2-D tiles.

    Parameters
    ----------
    model : Segmenter
    tile : ndarray, shape (N, H, W), float32
        Normalised intensities of N slices (halo included).

    Returns
    -------
    probs : ndarray, shape (N, C, H, W), float32
        Mean phase probabilities over the MC-dropout passes (their uncertainty:
        :func:`normalized_entropy`).
    """
    device = inference_device()
    net = _on(model.net, device)
    x = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32))[:, None]
    x, (h, w) = pad_to_stride(x, model.stride)
    # on a CPU one slice at a time: the same numbers as a batch, faster (the activations
    # stay in cache) and an eighth of the memory for an 8-slice tile; a GPU takes the
    # whole tile at once (one copy each way, and kernels big enough to fill it)
    batches = x.split(1) if device.type == "cpu" else (x,)
    probs = np.empty((len(x), len(model.phases), h, w), np.float32)
    with device_slot(device), torch.inference_mode():
        start = 0
        for batch in batches:
            mean = net.mc_logits(batch.to(device), model.passes).softmax(dim=2).mean(dim=0)
            probs[start : start + len(batch)] = mean[..., :h, :w].cpu().numpy()
            start += len(batch)
    return probs


_MOVING = threading.Lock()
# Tiles on a GPU at once in one process, however many threads run tiles: the kernels of a
# device's default stream run one after another anyway (two let one thread's copies and
# launches overlap the other's kernels), and GPU memory stays two tiles' activations
# instead of growing with the cores of the node.
GPU_TILES_AT_ONCE = 2
_GPU_SLOTS = threading.BoundedSemaphore(GPU_TILES_AT_ONCE)


def device_slot(device: torch.device):
    """Context in which a tile runs on ``device``: one of the GPU's slots, or none on a CPU."""
    return contextlib.nullcontext() if device.type == "cpu" else _GPU_SLOTS


def inference_device() -> torch.device:
    """Where segmenters run: ``$MATSEG_DEVICE`` if set, else the GPU when there is one, else the CPU.

    On a cluster with a GPU pool (``--costly-workers``), the costlier candidates
    run on the GPU workers' devices and the cheap pass on the CPU workers.

    Raises
    ------
    MatsegError
        If ``$MATSEG_DEVICE`` names no torch device, or a GPU that torch cannot see here.
    """
    name = os.environ.get("MATSEG_DEVICE")
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MatsegError(f"MATSEG_DEVICE={name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MatsegError(f"MATSEG_DEVICE={name} but torch sees no CUDA GPU here; use cpu or unset it")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MatsegError(f"MATSEG_DEVICE={name} but torch sees {torch.cuda.device_count()} GPU(s) here")
    if device.type not in ("cpu", "cuda"):
        raise MatsegError(f"MATSEG_DEVICE={name}: matseg runs on cpu or cuda")
    return device


def describe_device(device: torch.device | None = None) -> str:
    """Where segmenters run (default: here), for reports: ``cpu``, or the GPU's index and
    name and whether its convolutions run in TF32 (their labels differ from the CPU's
    on ~0.015 % of voxels, docs/benchmarks.md)."""
    device = inference_device() if device is None else device
    if device.type == "cpu":
        return "cpu"
    index = torch.cuda.current_device() if device.index is None else device.index
    tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
    return f"cuda:{index} {torch.cuda.get_device_name(index)} (TF32 convolutions {tf32})"


def _on(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` on ``device`` (moved once, in place; the first tile on a worker pays for it).

    A move is not atomic (parameters, then buffers, one by one), so the check is made
    under the lock too: a thread never runs a net that another is still moving.
    """
    with _MOVING:
        if any(t.device.type != device.type for t in itertools.chain(net.parameters(), net.buffers())):
            net.to(device)
    return net
