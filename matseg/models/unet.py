"""2-D UNets for phase segmentation, run slice-wise on 3-D volumes.

Only position-independent layers are used (convolutions, BatchNorm in eval mode,
max-pooling, transposed convolutions), so the output at a pixel depends on its
receptive field alone: tiled inference with a halo >= :attr:`UNet2d.halo` equals
whole-image inference exactly.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UNet2d(nn.Module):
    """A UNet with ``depth`` poolings and ``width`` channels at full resolution.

    Parameters
    ----------
    n_classes : int
        Number of phases.
    width : int
        Channels of the first stage; doubled at every pooling.
    depth : int
        Number of 2x poolings; inputs are padded to a multiple of ``2**depth``.
    dropout : float
        Channel dropout before the classifier; at inference it is applied with
        fixed masks (:meth:`mc_logits`) to give a deterministic MC-dropout
        uncertainty.
    """

    def __init__(self, n_classes: int = 3, width: int = 8, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        self.config = {"n_classes": n_classes, "width": width, "depth": depth, "dropout": dropout}
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(1 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)])
        self.bottom = _block(chans[depth - 1] if depth else 1, chans[depth])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.dec = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(chans[0], n_classes, 1)

    @property
    def stride(self) -> int:
        """Input sizes and tile offsets must be multiples of this (pooling grid)."""
        return 2 ** self.config["depth"]

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side that can influence one output pixel (an upper bound).

        Each 3x3 convolution at scale ``s`` adds ``s``; each pooling and each
        transposed convolution at scale ``s`` adds at most ``s``.
        """
        depth = self.config["depth"]
        encoder_decoder = sum(6 * 2**level for level in range(depth))
        return encoder_decoder + 2 * 2**depth

    @property
    def halo(self) -> int:
        """The smallest halo that makes tiling exact: the radius, on the pooling grid."""
        return -(-self.receptive_radius // self.stride) * self.stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def mc_logits(self, x: torch.Tensor, passes: int) -> torch.Tensor:
        """Logits of ``passes`` MC-dropout passes with fixed channel masks.

        The masks are drawn from a fixed seed, so they are the same for every
        tile and every run: the result is deterministic and tiling stays exact.
        Returns a tensor of shape (passes, N, C, H, W).
        """
        feats = self.features(x)
        p = self.config["dropout"]
        if passes <= 1 or p <= 0:
            return self.head(feats)[None]
        gen = torch.Generator().manual_seed(20261125)
        keep = torch.rand(passes, feats.shape[1], generator=gen) >= p
        masks = keep.to(feats.device, feats.dtype) / (1 - p)
        return torch.stack([self.head(feats * m[None, :, None, None]) for m in masks])


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at their far end (edge mode) to multiples of ``stride``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)
