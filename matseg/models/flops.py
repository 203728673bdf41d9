"""The one FLOP counter: torch's own formulas, applied to the layers a forward pass runs.

torch's ``FlopCounterMode`` counts convolutions and matrix products with the
formulas of :mod:`torch.utils.flop_counter`; entering it (or running on the
``meta`` device) imports TorchDynamo, about a second that every run would pay.
Our networks do their multiply-adds in convolution and linear layers only, so
forward hooks on those layers, with the same formulas, give the same counts
without that import (``tests/test_flops.py`` checks them against ``FlopCounterMode``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import conv_flop_count

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_flops(net: nn.Module, fn: Callable, *args) -> int:
    """FLOPs of ``fn(*args)``, a forward pass of ``net``: its convolutions and linear layers.

    ``fn`` really runs, so give it small inputs (FLOPs of larger ones scale);
    ``net`` must not run elsewhere meanwhile (its hooks would count that too).
    """
    total = 0

    def add(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        x = inputs[0]
        if isinstance(module, nn.Linear):  # one matrix product, as torch counts addmm / mm
            total += 2 * (x.numel() // x.shape[-1]) * module.in_features * module.out_features
        else:
            transposed = isinstance(module, _TRANSPOSED)
            total += conv_flop_count(list(x.shape), list(module.weight.shape), list(output.shape), transposed)

    counted = (*_CONV, *_TRANSPOSED, nn.Linear)
    hooks = [m.register_forward_hook(add) for m in net.modules() if isinstance(m, counted)]
    try:
        with torch.inference_mode():
            fn(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return int(total)
