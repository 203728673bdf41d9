"""The bundled segmenters: integrity, cost, and the accuracy gap the selector exploits."""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import matseg
from matseg.errors import MatsegError
from matseg.models.inference import GPU_TILES_AT_ONCE, _on, describe_device, device_slot, inference_device
from matseg.models.labels import normalized_entropy, phase_counts, phase_labels
from matseg.models.store import default_weights_dir, load_segmenter, sha256_of
from matseg.sample import write_sample
from matseg.synth import SampleConfig


@pytest.mark.parametrize("name", ["cheap", "expensive"])
def test_bundled_weights_match_manifest(name):
    folder = default_weights_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sha256_of(folder / manifest[name]["file"]) == manifest[name]["sha256"]
    model = load_segmenter(name)
    assert model.phases == ("pore", "carbon-binder", "active")
    assert "training" in manifest[name] and manifest[name]["training"]["seed"] == 0


def test_sizes_and_cost():
    cheap, expensive = load_segmenter("cheap"), load_segmenter("expensive")
    assert 10_000 <= cheap.n_params <= 20_000
    assert 1_000_000 <= expensive.n_params <= 8_000_000
    shape = (1, 256, 256)
    assert expensive.gflops(shape) > 10 * cheap.gflops(shape)


@pytest.fixture(scope="module")
def test_volume(tmp_path_factory):
    """A held-out volume: a seed and imaging profile never used in training, half of it hard."""
    path = tmp_path_factory.mktemp("heldout") / "test.zarr"
    write_sample(path, (8, 192, 192), seed=999, config=SampleConfig(profile="test", hard_fraction=0.5))
    return path


def test_expensive_pays_on_hard_regions(tmp_path, test_volume):
    scores = {
        name: matseg.segment(test_volume, tmp_path / f"{name}.zarr", model=name, truth=test_volume)["metrics"]
        for name in ("cheap", "expensive")
    }
    cheap, expensive = scores["cheap"], scores["expensive"]
    assert expensive["miou"] > 0.8
    assert expensive["hard"]["miou"] > cheap["hard"]["miou"] + 0.05
    assert cheap["clean"]["miou"] > expensive["clean"]["miou"] - 0.05
    assert np.isfinite([cheap["hard"]["miou"], cheap["clean"]["miou"]]).all()


@pytest.mark.parametrize("phases", [1, 2, 3, 5])
def test_phase_labels_equal_argmax(phases):
    """The running maximum gives numpy's argmax over the phase axis, ties to the first phase;
    the phases' voxel counts are numpy's bincount."""
    rng = np.random.default_rng(phases)
    probs = rng.random((3, phases, 17, 23)).astype(np.float32)
    probs[:, -1, :4] = probs[:, 0, :4]  # ties between the first and last phase
    probs[0, :, 5] = 0.25  # all phases equal
    labels = phase_labels(probs)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    np.testing.assert_array_equal(phase_counts(labels, phases), np.bincount(labels.ravel(), minlength=phases))


@pytest.mark.parametrize("phases", [2, 3, 5])
def test_normalized_entropy_is_its_formula(phases):
    """In place, the same bits as the formula: -sum p log p / log C, p clipped at 1e-8 in the log."""
    rng = np.random.default_rng(phases)
    probs = rng.dirichlet(np.full(phases, 0.3), size=(3, 40, 50)).astype(np.float32).transpose(0, 3, 1, 2)
    probs[0, :, :5] = np.eye(phases, dtype=np.float32)[0][:, None, None]  # certain: 0
    probs[1, :, :5] = 1 / phases  # uniform: 1
    view = np.pad(probs, ((0, 0), (0, 0), (2, 2), (2, 2)))[..., 2:-2, 2:-2]  # as a tile's core is
    expected = -(probs * np.log(np.clip(probs, 1e-8, None))).sum(axis=1) / np.float32(np.log(phases))
    entropy = normalized_entropy(view)
    np.testing.assert_array_equal(entropy, expected)
    np.testing.assert_allclose(entropy[0, :5], 0, atol=1e-6)
    np.testing.assert_allclose(entropy[1, :5], 1, atol=1e-6)


def test_no_thread_runs_a_half_moved_net():
    """Threads that meet a net on another device wait until it has moved whole (on a
    GPU, 16 threads' first tiles saw parameters moved and batch-norm buffers not yet)."""
    net = load_segmenter("expensive").net
    move = net.to

    def slow_move(device):  # the convolutions first, a pause, then the rest, as a move can be seen
        for layer in net.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.to(device)
        time.sleep(0.2)
        return move(device)

    net.to = slow_move
    meta = torch.device("meta")  # a second device on any machine

    def devices_seen(_):
        return {t.device.type for t in itertools.chain(_on(net, meta).parameters(), net.buffers())}

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(devices_seen, range(4)))
    assert seen == [{"meta"}] * 4


@pytest.mark.parametrize("device, most", [("cuda", GPU_TILES_AT_ONCE), ("cpu", 8)])
def test_tiles_at_once_on_a_device(device, most):
    """However many threads run tiles, a GPU holds at most GPU_TILES_AT_ONCE of them; a CPU
    is not limited (each thread's slice-by-slice activations are small)."""
    inside, peak, lock = 0, 0, threading.Lock()

    def tile(_):
        nonlocal inside, peak
        with device_slot(torch.device(device)):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tile, range(16)))
    assert peak == most


def test_describe_device(monkeypatch):
    monkeypatch.setenv("MATSEG_DEVICE", "cpu")
    assert describe_device() == "cpu"
    if torch.cuda.is_available():
        assert describe_device(torch.device("cuda")).startswith("cuda:0 ")


def test_a_gpu_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("MATSEG_DEVICE", "cuda:0")
    assert inference_device() == torch.device("cuda:0")
    monkeypatch.setenv("MATSEG_DEVICE", "cuda:3")
    with pytest.raises(MatsegError, match=r"cuda:3 but torch sees 1 GPU"):
        inference_device()


@pytest.mark.parametrize("axes", [(-1,), (-2,), (-2, -1)])
def test_the_flip_averaged_candidate_is_equivariant_to_flips_and_costs_four_passes(random_weights, axes):
    """expensive-tta averages the net over the in-plane flips: mirroring the input mirrors its
    answer (the net alone does not), and it costs four passes of the net."""
    from matseg.candidates.registry import CANDIDATES, Context
    from matseg.models.store import load_segmenter

    context = Context({"expensive": load_segmenter("expensive", random_weights)})
    x = np.random.default_rng(0).random((2, 48, 40), dtype=np.float32)
    mirrored = np.ascontiguousarray(np.flip(x, axes))
    for name, equivariant in (("expensive-tta", True), ("expensive", False)):
        run = CANDIDATES[name].run
        same = np.allclose(run(context, mirrored), np.flip(run(context, x), axes), atol=1e-5)
        assert same == equivariant, name
    base = CANDIDATES["expensive"].gflops(context, (2, 48, 40))
    assert CANDIDATES["expensive-tta"].gflops(context, (2, 48, 40)) == pytest.approx(4 * base)


def test_the_cli_offers_every_mode():
    """``--model``'s choices (written out, so ``matseg --help`` loads no torch) are the modes."""
    import click

    from matseg import MODES
    from matseg.cli.options import model_option

    option = next(p for p in model_option("m")(click.command()(lambda model: None)).params)
    assert tuple(option.type.choices) == MODES


def test_a_flip_averaged_run_reports_its_four_passes(random_weights, small_sample, tmp_path):
    plain = matseg.segment(small_sample, tmp_path / "e.zarr", model="expensive", weights=random_weights)
    averaged = matseg.segment(
        small_sample, tmp_path / "t.zarr", model="expensive-tta", weights=random_weights
    )
    assert averaged["model"] == "expensive-tta"
    assert averaged["gflops"] == pytest.approx(4 * plain["gflops"])
    from matseg.console import format_report

    model_line = format_report(averaged).splitlines()[1]
    assert model_line.split()[:3] == ["model", "expensive-tta:", "expensive"], model_line


def test_a_run_gives_back_the_callers_torch_threads(tmp_path, small_sample, random_weights):
    """A threads run sets torch's threads so that dask threads x torch threads fit the
    cores, for its duration only: what the caller does next (training, say) runs as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        matseg.segment(small_sample, tmp_path / "o.zarr", model="cheap", weights=random_weights, workers=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_missing_model_names_only_the_folders_segmenters(random_weights):
    from matseg import MatsegError
    from matseg.models.store import load_segmenter

    with pytest.raises(MatsegError, match=r"available: cheap, expensive$"):
        load_segmenter("medium", random_weights)
