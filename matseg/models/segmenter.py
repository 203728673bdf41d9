"""A segmenter: a trained network with what is needed to run and report it (halo, stride,
MC-dropout passes, FLOPs), and the default architectures."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from matseg.errors import MatsegError
from matseg.models.flops import count_flops
from matseg.models.unet import UNet2d

# The default segmenters: a tiny always-run net, a mid-size net, a big accurate net.
ARCHITECTURES = {
    "cheap": {"width": 10, "depth": 1, "dropout": 0.1},
    "medium": {"width": 12, "depth": 2, "dropout": 0.0},
    "expensive": {"width": 24, "depth": 3, "dropout": 0.0},
}
SEGMENTERS = tuple(ARCHITECTURES)
MC_PASSES = 4


@dataclass
class Segmenter:
    """A trained network with what is needed to run and report it."""

    name: str
    net: UNet2d
    phases: tuple[str, ...]
    sha256: str = ""
    record: dict = field(default_factory=dict)
    _unit_flops: int | None = field(default=None, repr=False, compare=False)

    @property
    def halo(self) -> int:
        return self.net.halo

    @property
    def stride(self) -> int:
        return self.net.stride

    @property
    def passes(self) -> int:
        return MC_PASSES if self.net.config["dropout"] > 0 else 1

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def gflops(self, shape: tuple[int, ...]) -> float:
        """GFLOPs of :func:`segment_probs` on a batch of 2-D tiles of ``shape`` (N, H, W).

        Tiles are padded to multiples of the stride, where every level of the net
        scales by the same factor: FLOPs are exactly the area's multiple of one
        stride x stride plane's, counted once on a fresh net of the same layers (on the
        CPU, whatever device the net in use is on, and without touching it).
        """
        n, h, w = shape
        s = self.stride
        if self._unit_flops is None:
            net = UNet2d(**self.net.config).eval()
            self._unit_flops = count_flops(net, net.mc_logits, torch.zeros(1, 1, s, s), self.passes)
        return n * -(-h // s) * -(-w // s) * self._unit_flops / 1e9

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "params": self.n_params,
            "architecture": dict(self.net.config),
            "halo": self.halo,
            "mc_passes": self.passes,
            "phases": list(self.phases),
        }


def new_segmenter(name: str, phases: tuple[str, ...], seed: int = 0) -> Segmenter:
    """An untrained segmenter with the default architecture of ``name``."""
    if name not in ARCHITECTURES:
        raise MatsegError(f"unknown model '{name}'; choose from {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return Segmenter(name=name, net=UNet2d(n_classes=len(phases), **ARCHITECTURES[name]), phases=phases)
