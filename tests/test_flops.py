"""matseg's FLOP counter equals torch's FlopCounterMode on every network we run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from matseg.models.flops import count_flops
from matseg.models.store import load_segmenter
from matseg.selector.policy import load_selector


def torch_count(fn, *args) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name", ["cheap", "medium", "expensive"])
@pytest.mark.parametrize("plane", [(256, 256), (264, 264), (304, 176), (8, 16)])
def test_segmenter_flops_equal_torch_counter(name, plane):
    segmenter = load_segmenter(name)
    expected = torch_count(segmenter.net.mc_logits, torch.zeros(3, 1, *plane), segmenter.passes)
    assert expected > 0
    assert segmenter.gflops((3, *plane)) * 1e9 == pytest.approx(expected, rel=1e-12)
    ours = count_flops(segmenter.net, segmenter.net.mc_logits, torch.zeros(3, 1, *plane), segmenter.passes)
    assert ours == expected
    # a tile that is not a multiple of the stride runs padded up to it
    short = segmenter.stride - 1
    assert segmenter.gflops((3, plane[0] - short, plane[1] - 1)) == segmenter.gflops((3, *plane))


def test_policy_flops_equal_torch_counter():
    selector = load_selector()
    x = torch.zeros(37, selector.net.feature_mean.numel())
    expected = torch_count(selector.net, x, torch.zeros(37))
    assert expected > 0
    assert selector.gflops(37) * 1e9 == pytest.approx(expected, rel=1e-12)


def test_counting_leaves_the_nets_alone_and_skips_dynamo():
    segmenter, selector = load_segmenter("cheap"), load_selector()
    segmenter.gflops((2, 64, 64))
    selector.gflops(5)
    for net in (segmenter.net, selector.net):
        assert all(not m._forward_hooks for m in net.modules())
    # counting does not pay for importing TorchDynamo (about a second per run)
    code = (
        "import sys; from matseg.models.store import load_segmenter; "
        "load_segmenter('medium').gflops((4, 256, 256)); print('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_counting_does_not_depend_on_the_nets_device():
    """A GPU worker moves its net to the GPU before the first count: counting uses its own net."""
    expected = load_segmenter("medium").gflops((4, 264, 264))
    moved = load_segmenter("medium")
    moved.net.to("meta")  # stands for a device the counting input is not on
    assert moved.gflops((4, 264, 264)) == expected
