"""The one FLOP counter: torch's own, run on the exact input shape of a tile."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable, *args) -> int:
    """FLOPs of ``fn(*args)`` counted by :class:`torch.utils.flop_counter.FlopCounterMode`.

    ``fn`` runs on fake tensors (shapes only, no storage, as torch.compile traces):
    counting a tile's FLOPs allocates none of its activations, however large the tile.
    """
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True) as fake:
        args = tuple(fake.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        with FlopCounterMode(display=False) as counter:
            fn(*args)
    return int(counter.get_total_flops())
