"""The selector's policy network and how its decisions are turned into a plan.

One small network reads a tile's features and the trade-off ``lam`` (λ) and
gives a distribution over candidates; a second head predicts each candidate's
gain in IoU over the cheap pass (used to rank tiles under a hard budget); a
third is the REINFORCE baseline. λ is an input, so one trained policy serves
every accuracy/cost trade-off.
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from matseg.candidates.features import FEATURE_NAMES
from matseg.errors import MatsegError
from matseg.io.guard import replace_file
from matseg.models.store import MANIFEST, default_weights_dir, load_tensors, read_manifest, sha256_of

SELECTOR_FILE = "selector.pt"
LAMBDA_FLOOR = 1e-3
DEFAULT_LAMBDA = 0.02  # when a selector records none of its own


def lambda_input(lam: torch.Tensor) -> torch.Tensor:
    """λ as the network sees it: log-scaled, since useful values span decades."""
    return torch.log10(lam.clamp_min(LAMBDA_FLOOR))[:, None]


class PolicyNet(nn.Module):
    def __init__(self, n_features: int, n_candidates: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.trunk = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.policy = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, n_candidates))
        self.value = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.gain = nn.Linear(hidden, n_candidates)

    def forward(self, features: torch.Tensor, lam: torch.Tensor):
        h = self.trunk((features - self.feature_mean) / self.feature_std)
        hl = torch.cat([h, lambda_input(lam)], dim=1)
        return self.policy(hl), self.value(hl)[:, 0], self.gain(h)


@dataclass
class Selector:
    """A trained policy over ``candidates`` (``cheap`` first)."""

    net: PolicyNet
    candidates: tuple[str, ...]
    phase_order: tuple[int, ...] = ()
    sha256: str = ""
    record: dict = field(default_factory=dict)

    def probabilities(self, features: np.ndarray, lam: float) -> np.ndarray:
        """Distribution over candidates, shape (tiles, candidates)."""
        x = torch.as_tensor(np.asarray(features, np.float32))
        with torch.inference_mode():
            logits, _, _ = self.net(x, torch.full((len(x),), float(lam)))
            return logits.softmax(dim=1).numpy()

    def expected_gain(self, features: np.ndarray) -> np.ndarray:
        """Predicted IoU gain of each candidate over the cheap pass, shape (tiles, candidates).

        A gain in IoU lies in [-1, 1]; the head's output is clipped to it. A selector trained
        on a handful of tiles (a few corrected slices) standardises its features by spreads
        measured on them, and on a volume's tiles the head then extrapolated to gains of ±17,
        which budgets and the summary's expected gain took at their word."""
        x = torch.as_tensor(np.asarray(features, np.float32))
        with torch.inference_mode():
            return np.clip(self.net(x, torch.zeros(len(x)))[2].numpy(), -1.0, 1.0)

    def gflops(self, n_tiles: int) -> float:
        """GFLOPs of running the policy on ``n_tiles`` tiles (a few multiply-adds per tile)."""
        from matseg.models.flops import count_flops

        net = copy.deepcopy(self.net)  # counted apart from the net in use; one row, times the rows
        per_tile = count_flops(net, net, torch.zeros(1, net.feature_mean.numel()), torch.zeros(1))
        return max(1, n_tiles) * per_tile / 1e9

    def most_accurate(self) -> str:
        """The candidate, cheap aside, with the best mean tile IoU on the selector's training
        tiles (``expensive`` when the record has none): the audit's default reference."""
        scores = self.record.get("mean_tile_iou") or {}
        costlier = [n for n in self.candidates[1:] if n in scores]
        if not costlier:
            return "expensive" if "expensive" in self.candidates else self.candidates[-1]
        return max(costlier, key=lambda n: scores[n])

    @property
    def default_lambda(self) -> float:
        """The λ chosen at training time (see ``matseg train-selector``)."""
        return float(self.record.get("default_lambda", DEFAULT_LAMBDA))

    def describe(self) -> dict:
        return {
            "name": "selector",
            "sha256": self.sha256,
            "candidates": list(self.candidates),
            "params": sum(p.numel() for p in self.net.parameters()),
        }


def choose_by_lambda(selector: Selector, features: np.ndarray, lam: float) -> np.ndarray:
    """Per tile, the most probable candidate at trade-off ``lam`` (index into candidates)."""
    if not 0.0 <= lam <= 1.0:
        raise MatsegError(f"--lambda must be between 0 and 1, got {lam}")
    return selector.probabilities(features, lam).argmax(axis=1)


def choose_by_budget(
    gain: np.ndarray,
    cost_of: Callable[[np.ndarray], float],
    budget_gflops: float | None,
    max_tiles: int | None,
    extra_gflops: np.ndarray,
) -> np.ndarray:
    """Upgrade the tiles with the best expected gain per GFLOP while the budget lasts.

    Parameters
    ----------
    gain : ndarray, shape (tiles, candidates)
        Expected IoU gain over the cheap pass (column 0, the cheap pass, is ignored).
    cost_of : callable
        GFLOPs a whole plan (candidate per tile) adds to the cheap pass, blending included.
    budget_gflops : float or None
        GFLOPs available beyond the cheap pass.
    max_tiles : int or None
        At most this many tiles get a candidate other than cheap.
    extra_gflops : ndarray, shape (tiles, candidates)
        GFLOPs of each candidate on each tile, to rank by gain per GFLOP.

    Returns
    -------
    ndarray of int, shape (tiles,)
        The chosen candidate per tile; ``cost_of`` of it never exceeds the budget.
    """
    n_tiles, n_cand = gain.shape
    choice = np.zeros(n_tiles, int)
    budget = np.inf if budget_gflops is None else float(budget_gflops)
    slots = n_tiles if max_tiles is None else int(max_tiles)
    ratio = gain[:, 1:] / np.maximum(extra_gflops[:, 1:], 1e-12)
    for flat in np.argsort(-ratio, axis=None, kind="stable"):
        if slots <= 0:
            break
        tile, k = divmod(int(flat), n_cand - 1)
        k += 1
        if choice[tile] or gain[tile, k] <= 0:
            continue
        choice[tile] = k
        if cost_of(choice) > budget:
            choice[tile] = 0
            continue
        slots -= 1
    return choice


def save_selector(selector: Selector, folder: str | os.PathLike, record: dict | None = None) -> Path:
    """Write ``<folder>/selector.pt`` (tensors only) and its manifest entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SELECTOR_FILE
    buffer = io.BytesIO()  # replaced whole, as :func:`matseg.models.store.save_segmenter` does
    torch.save({k: v.detach().contiguous() for k, v in selector.net.state_dict().items()}, buffer)
    replace_file(path, buffer.getvalue())
    entry = {
        "file": SELECTOR_FILE,
        "sha256": sha256_of(path),
        "candidates": list(selector.candidates),
        "features": list(FEATURE_NAMES),
        "hidden": selector.net.gain.in_features,
        "phase_order": list(selector.phase_order),
    }
    save_selector_record(folder, entry | (record or {}))
    return path


def save_selector_record(folder: str | os.PathLike, entry: dict) -> None:
    """Write the manifest entry of a folder's selector (a folder without a manifest gets one)."""
    folder = Path(folder)
    manifest = read_manifest(folder) if (folder / MANIFEST).exists() else {}
    manifest["selector"] = entry
    replace_file(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def load_selector(folder: str | os.PathLike | None = None) -> Selector:
    """Load the selector of a weights folder (default: bundled), checking its sha256."""
    folder = Path(folder) if folder is not None else default_weights_dir()
    manifest = read_manifest(folder)
    entry = manifest.get("selector")
    if entry is None:
        raise MatsegError(
            f"{folder / MANIFEST} has no selector; train one with 'matseg train-selector' "
            "or pick a single model with --model cheap|expensive"
        )
    path = folder / entry["file"]
    state, digest = load_tensors(path, entry["sha256"], "selector file")
    if list(entry.get("features", [])) != list(FEATURE_NAMES):
        raise MatsegError(f"selector in {folder} was trained on other features; retrain it with this matseg")
    net = PolicyNet(len(FEATURE_NAMES), len(entry["candidates"]), entry.get("hidden", 64))
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise MatsegError(f"selector file {path} does not fit its manifest: {err}") from None
    net.eval()
    return Selector(net, tuple(entry["candidates"]), tuple(entry.get("phase_order", ())), digest, entry)


def check_pairing(selector: Selector, models: dict) -> None:
    """The selector must have been trained for exactly these segmenters."""
    trained_for = selector.record.get("segmenters", {})
    for name, model in models.items():
        if name in trained_for and trained_for[name] != model.sha256:
            raise MatsegError(
                f"the selector was trained for another '{name}' segmenter "
                f"(sha256 {trained_for[name][:12]}...); "
                "retrain it with 'matseg train-selector' after 'matseg train'"
            )


def remove_selector(weights: str | os.PathLike) -> bool:
    """Drop the selector of a weights folder (file and manifest entry): whether it had one."""
    weights = Path(weights)
    manifest = read_manifest(weights)
    removed = manifest.pop("selector", None) is not None
    if removed:
        replace_file(weights / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    removed |= (weights / SELECTOR_FILE).exists()
    (weights / SELECTOR_FILE).unlink(missing_ok=True)
    return removed
