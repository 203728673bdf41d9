"""Training the selector by policy gradient on tile tables of labelled volumes.

REINFORCE with a learned baseline and an entropy bonus: per step a batch of
tiles and a λ per tile are drawn, the policy samples a candidate for each, and
the reward (1 - λ)(IoU_chosen - IoU_cheap) - λ cost_chosen / cost_max pushes
the log-probability of that candidate up or down by its advantage over the
baseline. A second head learns each candidate's expected IoU gain (for budget
runs) by regression on the same tiles.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from matseg.candidates.registry import CANDIDATES, Context, get_candidates
from matseg.errors import MatsegError
from matseg.io.paths import check_distinct
from matseg.models.store import load_segmenter
from matseg.pipeline.job import halo_of
from matseg.selector.policy import (
    LAMBDA_FLOOR,
    PolicyNet,
    Selector,
    check_pairing,
    load_selector,
    save_selector,
    save_selector_record,
)
from matseg.selector.table import class_to_phase, merge_tables, remap_rows, reward, tile_iou, tile_table
from matseg.tiling import DEFAULT_TILE, plan_tiles

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("matseg.progress.selector")  # per-step lines: --quiet hides them

DEFAULT_CANDIDATES = ("cheap", "medium", "expensive", "expensive-2x", "classical")


def available_candidates(weights: str | os.PathLike) -> tuple[str, ...]:
    """The default candidates whose segmenters the weights folder holds."""
    from matseg.models.store import read_manifest

    present = set(read_manifest(weights))
    return tuple(n for n in DEFAULT_CANDIDATES if set(CANDIDATES[n].needs) <= present)


EVAL_LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3)
DEFAULT_LAMBDA_GRID = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
# mIoU the default λ's plan may lose to all-expensive on the selector's training tiles: "almost
# the same accuracy". (Half of it, which would hold back a margin for other imaging, was
# measured and not kept: docs/benchmarks.md, "A smaller default λ?")
DEFAULT_TOLERANCE = 0.01


def pick_default_lambda(
    net: PolicyNet, features: np.ndarray, confusion: np.ndarray, k_reference: int, tolerance: float
) -> tuple[float, list[dict]]:
    """The largest λ whose plan on the training tiles stays within ``tolerance`` mIoU of running
    candidate ``k_reference`` everywhere (all-expensive, where there is an expensive net); the
    curve of every λ tried, the reference's mIoU first (``"lambda": None``).

    Scale-free users of their own data get a default that fits their gains and costs.
    """
    from matseg.selector.table import plan_miou

    reference = plan_miou(confusion, np.full(len(features), k_reference))
    target = reference - tolerance
    best, curve = DEFAULT_LAMBDA_GRID[0], [{"lambda": None, "miou": reference, "upgraded": 1.0}]
    for lam in DEFAULT_LAMBDA_GRID:
        with torch.inference_mode():
            logits = net(torch.as_tensor(features), torch.full((len(features),), lam))[0]
        choice = logits.argmax(dim=1).numpy()
        miou = plan_miou(confusion, choice)
        curve.append({"lambda": lam, "miou": miou, "upgraded": float(np.mean(choice > 0))})
        if miou >= target:
            best = lam
    return best, curve


def default_reference(names: Sequence[str], iou: np.ndarray) -> str:
    """What the default λ's plan is compared with: the expensive net (the accurate end of the
    bundled weights, and of most folders), or, in a folder without one (``train --model
    cheap``), the candidate of the best mean tile IoU (``iou``: tiles x candidates): "almost the
    accuracy of the best there is" needs the best there is, and a name to say it by."""
    if "expensive" in names:
        return "expensive"
    means = iou.mean(axis=0)
    return names[int(np.argmax(means))]


def sample_lambdas(rng: np.random.Generator, n: int) -> np.ndarray:
    """λ per tile: log-uniform over [1e-3, 1], and exactly 0 one time in ten."""
    lam = 10 ** rng.uniform(np.log10(LAMBDA_FLOOR), 0, n)
    lam[rng.random(n) < 0.1] = 0.0
    return lam


def greedy_reward(
    net: PolicyNet, features: np.ndarray, iou: np.ndarray, gflops: np.ndarray, lam: float
) -> float:
    """Mean reward per tile when the policy takes its most probable candidate at ``lam``."""
    with torch.inference_mode():
        logits = net(torch.as_tensor(features), torch.full((len(features),), float(lam)))[0]
    choice = logits.argmax(dim=1).numpy()
    return float(reward(iou, gflops, lam)[np.arange(len(choice)), choice].mean())


def fit_policy(
    features: np.ndarray,
    iou: np.ndarray,
    gflops: np.ndarray,
    *,
    steps: int = 4000,
    batch: int = 256,
    lr: float = 1e-3,
    entropy: tuple[float, float] = (1.0, 0.01),
    samples: int = 8,
    seed: int = 0,
) -> tuple[PolicyNet, list[dict]]:
    """REINFORCE on a tile table.

    Parameters
    ----------
    features : ndarray (tiles, F)
    iou : ndarray (tiles, candidates)
        mIoU of each candidate on each tile.
    gflops : ndarray (tiles, candidates)
        GFLOPs spent on the tile when each candidate is chosen.
    steps, batch, lr : int, int, float
        Optimiser steps, tiles per step, Adam learning rate.
    entropy : (float, float)
        Entropy bonus at the first and the last step (annealed geometrically).
    samples : int
        Candidates sampled per tile and step (more samples, less variance).

    Returns
    -------
    net, history
        The trained policy and its greedy reward at a few λ, logged during training.
    """
    if len(features) < 2:
        raise MatsegError("the selector needs at least 2 labelled tiles to train on")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: threads cost more than they bring
    try:
        return _fit(features, iou, gflops, steps, batch, lr, entropy, samples, rng)
    finally:
        torch.set_num_threads(threads)


def _fit(features, iou, gflops, steps, batch, lr, entropy, samples, rng) -> tuple[PolicyNet, list[dict]]:
    features = np.asarray(features, np.float32)
    net = PolicyNet(features.shape[1], iou.shape[1])
    net.feature_mean.copy_(torch.as_tensor(features.mean(axis=0)))
    net.feature_std.copy_(torch.as_tensor(features.std(axis=0) + 1e-6))
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    x_all = torch.as_tensor(features)
    gain_all = torch.as_tensor(iou - iou[:, :1], dtype=torch.float32)
    # rewards at small λ are IoU differences (~0.01), at large λ cost fractions (~1): scale
    # each sample by its λ's typical magnitude so every λ gets a comparable learning signal
    # (a positive factor per λ changes no optimal choice)
    gain_scale = float(np.std(iou - iou[:, :1])) + 1e-6
    history = []

    def record(step: int) -> None:
        net.eval()
        entry = {"step": step}
        entry.update(
            {f"reward@{lam}": greedy_reward(net, features, iou, gflops, lam) for lam in EVAL_LAMBDAS}
        )
        history.append(entry)
        net.train()
        rewards = " ".join(f"{k} {v:+.4f}" for k, v in entry.items() if k != "step")
        progress_log.info("selector: step %d/%d %s", step, steps, rewards)

    record(0)
    for step in range(steps):
        idx = rng.integers(len(features), size=batch)
        lam = sample_lambdas(rng, batch)
        logits, value, gain = net(x_all[idx], torch.as_tensor(lam, dtype=torch.float32))
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample((samples,))  # (samples, batch)
        scale = (1 - lam) * gain_scale + lam
        rewards = reward(iou[idx], gflops[idx], lam) / scale[:, None]
        r = torch.as_tensor(np.take_along_axis(rewards, action.numpy().T, axis=1).T, dtype=torch.float32)
        advantage = r - value.detach()[None]
        advantage = advantage / (advantage.std() + 1e-6)
        beta = entropy[0] * (entropy[1] / entropy[0]) ** (step / max(1, steps - 1))
        loss = (
            -(dist.log_prob(action) * advantage).mean()
            - beta * dist.entropy().mean()
            + torch.nn.functional.mse_loss(value, r.mean(dim=0))
            + 100 * torch.nn.functional.mse_loss(gain, gain_all[idx])
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % max(1, steps // 8) == 0 or step + 1 == steps:
            record(step + 1)
    net.eval()
    return net, history


class TooFewTiles(MatsegError):
    """Fewer than 2 labelled tiles to fit a policy on (``found``): said before any candidate runs."""

    def __init__(self, message: str, found: int):
        super().__init__(message)
        self.found = found


def labelled_tiles(
    volumes: Sequence, tile: Sequence[int], halo: int, stride: int, slices: Sequence[int] | None = None
) -> int:
    """How many tiles of ``volumes`` (:class:`matseg.io.read.Volume`) the tile grid gives that
    can hold labels: those holding one of ``slices`` (all, by default). Counted from the shapes
    alone, before any candidate runs."""
    count = 0
    for volume in volumes:
        grid = plan_tiles(volume.shape, tuple(tile)[-volume.ndim :], halo, stride)
        in_plane = int(np.prod([len(c) for c in grid.chunks[-2:]]))
        if volume.ndim == 2:
            count += in_plane
            continue
        ends = np.cumsum(grid.chunks[0])
        if slices is None:
            count += in_plane * len(ends)
        else:  # the Z tiles holding a labelled slice
            count += in_plane * len({int(np.searchsorted(ends, z, side="right")) for z in slices})
    return count


def check_enough_tiles(
    images: Sequence[str], tile: Sequence[int], halo: int, stride: int, slices: Sequence[int] | None
) -> None:
    """Refuse, before any candidate runs, a tile that leaves fewer than 2 labelled tiles to learn
    from (running every candidate on every tile is most of the time training takes), naming a
    smaller tile that gives more: a slice deep for a stack (of separate 2-D images, say), else
    half as wide."""
    from matseg.io.read import open_volume

    volumes = [open_volume(i) for i in images]
    found = labelled_tiles(volumes, tile, halo, stride, slices)
    if found >= 2:
        return
    tile = tuple(int(t) for t in tile)
    plane = tuple(max(stride, t // 2 // stride * stride) for t in tile[-2:])
    deep = tile[:-2]  # the Z size, if given
    thin = [(1,)] if deep and deep[0] > 1 else []
    tries = [(*z, *tile[-2:]) for z in thin] + [(*z, *plane) for z in [deep, *thin]]
    advice = "label more slices or give more volumes"
    for smaller in tries:
        try:
            if smaller != tile and labelled_tiles(volumes, smaller, halo, stride, slices) >= 2:
                whole = " for a stack of separate 2-D images" if smaller[-2:] == tile[-2:] else ""
                advice = (
                    f"give a smaller --tile, e.g. --tile {','.join(map(str, smaller))}{whole}, or {advice}"
                )
                break
        except MatsegError:  # smaller than the halo: not a tile segment can run
            continue
    shapes = ", ".join(f"{v.source} ({' x '.join(map(str, v.shape))})" for v in volumes)
    raise TooFewTiles(
        f"--tile {','.join(map(str, tile))} cuts {shapes} into {found} labelled tile(s); the selector "
        f"needs at least 2 labelled tiles to train on: {advice}",
        found,
    )


def train_selector(
    images: Sequence[str],
    weights: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    slices: Sequence[int] | None = None,
    candidates: Sequence[str] | None = None,
    tile: Sequence[int] = DEFAULT_TILE,
    steps: int = 4000,
    seed: int = 0,
    command: str | None = None,
    default_lambda_only: bool = False,
) -> dict:
    """Train the selector for the segmenters in ``weights`` and save it there.

    Parameters
    ----------
    images : sequence of str
        Labelled image volumes (any format :func:`matseg.open_volume` reads),
        not the ones the segmenters were trained on.
    weights : path
        Weights folder holding ``cheap`` and ``expensive`` (from ``matseg train``);
        ``selector.pt`` is written into it.
    labels : sequence of str, optional
        Label volume per image (255 = unlabelled); default: the image store's own labels.
    candidates : sequence of str, optional
        Candidates the selector chooses from, ``cheap`` first; default: every
        default candidate whose segmenters ``weights`` holds.
    tile : sequence of int
        Tile size used to cut the training tiles (use the one you segment with).
    default_lambda_only : bool
        Keep the folder's trained policy (``selector.pt`` unchanged) and only pick its default λ
        again on ``images`` by :func:`pick_default_lambda`'s rule (``candidates``, ``steps`` and
        ``seed`` are then the trained selector's).

    Returns
    -------
    dict
        The training record (also in the weights manifest): tiles, history, time.
    """
    started = time.perf_counter()
    if labels and len(labels) != len(images):
        raise MatsegError(f"{len(images)} image(s) but {len(labels)} label volume(s); give one per image")
    check_distinct(weights, [("image", i) for i in images] + [("--labels", v) for v in labels or ()])
    trained = load_selector(weights) if default_lambda_only else None
    if trained is not None:
        names = trained.candidates
    else:
        names = tuple(c.name for c in get_candidates(list(candidates or available_candidates(weights))))
    needed = {"cheap"} | {m for n in names for m in CANDIDATES[n].needs}
    models = {m: load_segmenter(m, weights) for m in sorted(needed)}
    if trained is not None:
        check_pairing(trained, models)
    context = Context(models)
    halo = halo_of("auto", context, names)  # the halo a segment run of these candidates reads
    if trained is None:  # a policy to fit: enough tiles to fit it on, before the candidates run
        check_enough_tiles(images, tile, halo, max(m.stride for m in models.values()), slices)
    tables = []
    for i, image in enumerate(images):
        progress_log.info("selector: running %d candidates on every tile of %s", len(names), image)
        tables.append(tile_table(image, labels[i] if labels else None, context, names, tile, halo, slices))
    table = merge_tables(tables)
    confusion = table["confusion"]
    mapping = np.arange(context.n_phases)
    if "classical" in names:
        k = names.index("classical")
        mapping = class_to_phase(confusion[:, k]) if trained is None else np.array(trained.phase_order)
        confusion[:, k] = remap_rows(confusion[:, k], mapping)
    iou = tile_iou(confusion)
    if trained is None:
        net, history = fit_policy(table["features"], iou, table["gflops"], steps=steps, seed=seed)
    else:
        net = trained.net
    reference = default_reference(names, iou)
    default_lambda, curve = pick_default_lambda(
        net, table["features"], confusion, names.index(reference), DEFAULT_TOLERANCE
    )
    logger.info(
        "selector: default lambda %s (within %s mIoU of all-%s on its training tiles)",
        default_lambda,
        DEFAULT_TOLERANCE,
        reference,
    )
    picked = {
        "default_lambda": default_lambda,
        "default_lambda_curve": curve,
        "default_lambda_reference": reference,
        "default_lambda_tolerance": DEFAULT_TOLERANCE,
    }
    if trained is not None:
        record = {**trained.record, **picked, "default_lambda_picked_on": [str(i) for i in images]}
        record["default_lambda_command"] = command
        save_selector_record(weights, record)
        return record
    record = {
        **picked,
        "tiles": len(iou),
        "tile": list(tile),
        "steps": steps,
        "seed": seed,
        "trained_on": [str(i) for i in images],
        "segmenters": {m: models[m].sha256 for m in models},
        "mean_tile_iou": {n: float(iou[:, k].mean()) for k, n in enumerate(names)},
        "history": history,
        "seconds": time.perf_counter() - started,
        "command": command,
    }
    selector = Selector(net, names, tuple(int(m) for m in mapping))
    save_selector(selector, weights, record)
    return record
