"""The one FLOP counter: torch's own, run on the exact input shape of a tile."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable, *args) -> int:
    """FLOPs of ``fn(*args)`` counted by :class:`torch.utils.flop_counter.FlopCounterMode`."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())
