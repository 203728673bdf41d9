"""The one FLOP counter: torch's own, run on the exact input shape of a tile."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable, *args) -> int:
    """FLOPs of ``fn(*args)`` counted by :class:`torch.utils.flop_counter.FlopCounterMode`.

    Give ``fn`` and ``args`` on the ``meta`` device (shapes only, no storage) and
    counting a tile's FLOPs computes and allocates nothing, however large the tile.
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())
