"""Inference on a tile: a segmenter's phase probabilities, on the device chosen for this process."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import torch

from matseg.errors import MatsegError
from matseg.models.segmenter import Segmenter
from matseg.models.unet import pad_to_stride

Result = TypeVar("Result")


def segment_probs(model: Segmenter, tile: np.ndarray, batch_tiles: int = 1) -> np.ndarray:
    """Phase probabilities of a batch of normalised 2-D tiles.

    Parameters
    ----------
    model : Segmenter
    tile : ndarray, shape (N, H, W), float32
        Normalised intensities of N slices (halo included).
    batch_tiles : int
        With more than 1, the slices of up to this many tiles of the same shape that
        threads of this process ask for at about the same time go through the model in
        one forward pass on a GPU (:class:`TileBatcher`): kernels big enough to fill it.
        A CPU still runs them a slice at a time (the same numbers; docs/benchmarks.md).

    Returns
    -------
    probs : ndarray, shape (N, C, H, W), float32
        Mean phase probabilities over the MC-dropout passes (their uncertainty:
        :func:`normalized_entropy`).
    """
    if batch_tiles > 1:
        return _batcher(batch_tiles).probs(model, tile)
    return _probs(model, tile)


def _probs(model: Segmenter, tile: np.ndarray) -> np.ndarray:
    device = inference_device()
    probs = np.empty((len(tile), len(model.phases), *tile.shape[-2:]), np.float32)
    with device_slot(device), torch.inference_mode():
        start = 0
        for mean in _batch_probs(model, tile, device):
            probs[start : start + len(mean)] = mean.cpu().numpy()
            start += len(mean)
    return probs


def reduce_probs(model: Segmenter, tile: np.ndarray, reduce: Callable[[torch.Tensor], Result]) -> Result:
    """``reduce(probs)`` of a tile's phase probabilities (as :func:`segment_probs`), with
    ``probs`` a tensor where the model left it (on a GPU, the GPU): only what ``reduce``
    returns comes back to the host, not the probabilities (C floats a voxel).

    ``reduce`` runs in the tile's GPU slot (:func:`device_slot`), under ``torch.inference_mode``.
    """
    device = inference_device()
    with device_slot(device), torch.inference_mode():
        return reduce(torch.cat(list(_batch_probs(model, tile, device))))


class TileBatcher:
    """Serves :func:`segment_probs` of several threads with one forward pass: the first
    thread to ask for a model's probabilities of a tile shape waits (at most ``wait_s``)
    for ``tiles`` such requests, runs their slices as one batch, and hands each its share.

    The tasks of a run stay one per tile (their graph, resume and records unchanged);
    the tiles that the threads of a process run at once are batched where they meet.
    """

    def __init__(self, tiles: int, wait_s: float = 0.05):
        self.tiles, self.wait_s = tiles, wait_s
        self._ready = threading.Condition()
        self._waiting: dict[tuple, list[tuple[np.ndarray, Future]]] = {}

    def probs(self, model: Segmenter, tile: np.ndarray) -> np.ndarray:
        key, share = (id(model), tile.shape), Future()
        with self._ready:
            requests = self._waiting.setdefault(key, [])
            requests.append((tile, share))
            first = len(requests) == 1
            if len(requests) >= self.tiles:
                self._ready.notify_all()
        if first:
            with self._ready:
                self._ready.wait_for(lambda: len(self._waiting[key]) >= self.tiles, self.wait_s)
                requests = self._waiting.pop(key)
            try:
                probs = _probs(model, np.concatenate([t for t, _ in requests]))
            except BaseException as err:
                for _, waiting in requests:
                    waiting.set_exception(err)
                raise
            start = 0
            for tile_of, waiting in requests:
                waiting.set_result(probs[start : start + len(tile_of)])
                start += len(tile_of)
        return share.result()


_BATCHERS: dict[int, TileBatcher] = {}


def _batcher(tiles: int) -> TileBatcher:
    with _MOVING:
        return _BATCHERS.setdefault(tiles, TileBatcher(tiles))


def _batch_probs(model: Segmenter, tile: np.ndarray, device: torch.device) -> Iterator[torch.Tensor]:
    """The mean probabilities of ``tile``'s slices, batch by batch, on ``device``."""
    net = _on(model.net, device)
    x = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32))[:, None]
    x, (h, w) = pad_to_stride(x, model.stride)
    # on a CPU one slice at a time: faster (the activations stay in cache), an eighth of
    # the memory for an 8-slice tile, and the numbers of earlier versions (a batch differs
    # in the last bit of a few probabilities); a GPU takes the whole tile, or the tiles of
    # a TileBatcher, at once (one copy each way, and kernels big enough to fill it)
    for batch in x.split(1) if device.type == "cpu" else (x,):
        yield net.mc_logits(batch.to(device), model.passes).softmax(dim=2).mean(dim=0)[..., :h, :w]


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
