"""The cost-aware selector: reward, training, λ, budgets, dry runs, seams."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

import matseg
from matseg.candidates.features import FEATURE_NAMES, median, tile_features
from matseg.candidates.registry import CANDIDATES
from matseg.models.labels import normalized_entropy, phase_labels
from matseg.models.store import default_weights_dir
from matseg.normalize import multiotsu_thresholds
from matseg.sample import write_sample
from matseg.selector.policy import choose_by_budget
from matseg.selector.table import reward, tile_iou
from matseg.selector.train import fit_policy, greedy_reward
from matseg.synth import SampleConfig

from .conftest import run
from .test_bad_input import snapshot

TILE = (4, 128, 128)


def test_reward_formula():
    iou = np.array([[0.8, 0.9, 0.7]])
    gflops = np.array([[1.0, 10.0, 2.0]])
    r = reward(iou, gflops, 0.2)
    np.testing.assert_allclose(r, [[-0.2 * 0.1, 0.8 * 0.1 - 0.2, 0.8 * -0.1 - 0.2 * 0.2]])
    np.testing.assert_allclose(reward(iou, gflops, 0.0), [[0.0, 0.1, -0.1]])


def test_tile_iou_ignores_absent_phases():
    confusion = np.zeros((3, 3), int)
    confusion[0, 0], confusion[1, 1], confusion[0, 1] = 6, 2, 2  # phase 2 absent everywhere
    assert tile_iou(confusion) == pytest.approx((6 / 8 + 2 / 4) / 2)


def _features_by_definition(image, probs, uncertainty, labels):
    """The selector's features written plainly, in FEATURE_NAMES' order."""
    ordered = np.sort(probs, axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else -np.inf)
    lap = 4 * image[:, 1:-1, 1:-1] - image[:, :-2, 1:-1] - image[:, 2:, 1:-1] - image[:, 1:-1, :-2]
    lap = lap - image[:, 1:-1, 2:]
    grad = np.hypot(np.diff(image, axis=-1)[:, :-1, :], np.diff(image, axis=-2)[:, :, :-1])
    values = {
        "uncertainty_mean": uncertainty.mean(),
        "uncertainty_p90": np.percentile(uncertainty, 90),
        "uncertain_fraction_25": np.mean(uncertainty > 0.25),
        "uncertain_fraction_50": np.mean(uncertainty > 0.5),
        "margin_mean": margin.mean(),
        "low_margin_fraction": np.mean(margin < 0.5),
        "boundary_density": np.mean(labels[..., 1:, :] != labels[..., :-1, :])
        + np.mean(labels[..., :, 1:] != labels[..., :, :-1]),
        "minority_phase_fraction": (
            np.bincount(labels.ravel(), minlength=probs.shape[1]) / labels.size
        ).min(),
        "image_std": image.std(),
        "image_noise": np.median(np.abs(lap)) / 0.6745 / np.sqrt(20),
        "image_gradient": grad.mean(),
        "row_profile_std": image.mean(axis=-1).std(),
        "column_profile_std": image.mean(axis=-2).std(),
    }
    return np.asarray([values[name] for name in FEATURE_NAMES], np.float32)


@pytest.mark.parametrize("phases", [2, 3, 4])
def test_tile_features_equal_their_definition(phases):
    """The fast forms (running top two, a one-index median, counts by comparison) give
    the plain definitions' features bit for bit: on a tile's core seen through its
    halo, with ties between the top two phases and between all of them."""
    rng = np.random.default_rng(phases)
    logits = rng.normal(size=(4, phases, 70, 90)).astype(np.float32) * 3
    logits[:, 1, :10] = logits[:, 0, :10]  # the top two tied where phase 0 or 1 is on top
    logits[:2, :, 10:14] = 0.5  # every phase equal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    core = probs[..., 3:-3, 5:-5]  # a view, as the cheap pass hands its core over
    image = rng.normal(size=(4, 64, 80)).astype(np.float32).cumsum(axis=-1) / 10
    labels = phase_labels(core)
    uncertainty = normalized_entropy(core)
    features = tile_features(image, core, uncertainty, labels)
    expected = _features_by_definition(image, core, uncertainty, labels)
    np.testing.assert_array_equal(features, expected)
    assert features[FEATURE_NAMES.index("low_margin_fraction")] > 0.05  # the ties are in


def test_median_is_numpys():
    """One partition gives np.median's value and type: even and odd sizes, floats and
    integers, ties, NaN."""
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 4, 7, 64, 1001, 4096):
        for values in (rng.random(size), rng.integers(0, 4, size)):
            for dtype in (np.float32, np.float64, np.int64):
                x = values.astype(dtype).reshape(-1, 1) if size % 2 else values.astype(dtype)
                assert median(x) == np.median(x)
                assert type(median(x)) is type(np.median(x))
    nan = rng.random(9).astype(np.float32)
    nan[4] = np.nan
    assert np.isnan(median(nan))


def test_policy_training_improves_reward():
    """A small problem: the expensive candidate pays on half the tiles, told by feature 0."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 13)).astype(np.float32)
    helps = features[:, 0] > 0
    iou = np.stack([np.full(400, 0.8), 0.8 + 0.1 * helps], axis=1)
    gflops = np.tile([1.0, 11.0], (400, 1))
    net, history = fit_policy(features, iou, gflops, steps=1500, batch=128, seed=1)
    best = np.mean(np.where(helps, 0.95 * 0.1 - 0.05, -0.05 / 11))
    after = greedy_reward(net, features, iou, gflops, 0.05)
    assert after > history[0]["reward@0.1"] or after > 0.8 * best
    assert after > 0.8 * best  # close to the best possible plan
    # when cost is all that counts, cheap everywhere
    assert greedy_reward(net, features, iou, gflops, 1.0) == pytest.approx(-1 / 11)


def test_default_lambda_keeps_the_tolerance_on_the_training_tiles():
    """The default λ is the largest whose plan loses at most 0.01 mIoU to all-expensive on the
    selector's training tiles: on a table where staying cheap loses 0.002 per tile made cheap,
    the pick follows the tolerance given, and the bundled selector's recorded curve obeys the
    rule it was picked by."""
    import torch

    from matseg.selector.train import DEFAULT_LAMBDA_GRID, DEFAULT_TOLERANCE, pick_default_lambda

    n = 100
    confusion = np.zeros((n, 2, 2, 2))
    confusion[:, 1] = np.diag([50.0, 50.0])  # expensive: right everywhere
    confusion[:, 0] = [[49.8, 0.2], [0.0, 50.0]]  # cheap: 0.2 % of voxels wrong

    class Net:  # cheap on a share of the tiles that grows with λ
        def __call__(self, features, lam):
            cheap = features[:, 0] < torch.log10(lam / 1e-3) / 3
            return (torch.stack([cheap.float(), (~cheap).float()], dim=1),)

    features = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    loose, curve = pick_default_lambda(Net(), features, confusion, 1, 0.01)
    strict, _ = pick_default_lambda(Net(), features, confusion, 1, 0.002)
    assert curve[0]["lambda"] is None and curve[0]["miou"] == pytest.approx(1.0)
    assert strict < loose and loose in DEFAULT_LAMBDA_GRID
    for lam, entry in zip(DEFAULT_LAMBDA_GRID, curve[1:]):
        assert entry["miou"] >= 1.0 - (0.01 if lam <= loose else 1.0)

    record = json.loads((default_weights_dir() / "manifest.json").read_text())["selector"]
    all_expensive, *rest = record["default_lambda_curve"]
    target = all_expensive["miou"] - DEFAULT_TOLERANCE
    kept = [e["lambda"] for e in rest if e["miou"] >= target]
    assert record["default_lambda"] == max(kept)


def test_default_lambda_only_keeps_the_policy(tmp_path, small_sample, random_weights, capsys):
    """`train-selector --default-lambda-only` picks the default λ again on other volumes and
    records where; the trained policy (its file) is kept as it was."""
    folder = tmp_path / "w"
    shutil.copytree(random_weights, folder)
    policy = (folder / "selector.pt").read_bytes()
    args = ["train-selector", small_sample, "--weights", folder, "--tile", "4,64,64", "--default-lambda-only"]
    assert run(args) == 0
    assert "default lambda" in capsys.readouterr().out
    record = json.loads((folder / "manifest.json").read_text())["selector"]
    assert (folder / "selector.pt").read_bytes() == policy
    assert record["default_lambda_picked_on"] == [str(small_sample)]
    assert record["default_lambda_curve"][0]["lambda"] is None
    assert record["steps"] == 50  # the trained selector's record is kept


def test_budget_allocation_never_exceeds_the_budget():
    rng = np.random.default_rng(3)
    gain = rng.uniform(-0.02, 0.1, size=(50, 3))
    extra = np.column_stack([np.zeros(50), rng.uniform(5, 10, 50), rng.uniform(1, 3, 50)])

    def cost(choice):
        return float(extra[np.arange(50), choice].sum())

    for budget in (0.0, 7.0, 60.0, 1e9):
        choice = choose_by_budget(gain, cost, budget, None, extra)
        assert cost(choice) <= budget
        assert (gain[np.arange(50), choice][choice > 0] > 0).all()
    assert (choose_by_budget(gain, cost, None, 5, extra) > 0).sum() <= 5


def test_adding_a_candidate_is_one_registry_entry():
    assert {"cheap", "expensive", "expensive-2x", "classical"} <= set(CANDIDATES)
    for candidate in CANDIDATES.values():
        assert callable(candidate.run) and callable(candidate.gflops)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A held-out 8 x 256 x 256 test-profile volume with hard and clean regions."""
    path = tmp_path_factory.mktemp("selector") / "test.zarr"
    write_sample(path, (8, 256, 256), seed=4321, config=SampleConfig(profile="test"))
    return path


def test_lambda_monotone_and_dry_run_reuses_the_cheap_pass(tmp_path, volume):
    out = tmp_path / "dry.zarr"
    spent = []
    for lam in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
        # the selector's own plans (the audit's recalibration or a tolerance would move them)
        report = matseg.segment(
            volume, out, tile=TILE, lam=lam, dry_run=True, tolerance=None, recalibrate=False
        )
        spent.append(report["expected"]["gflops"])
    assert all(a >= b for a, b in zip(spent, spent[1:])), spent
    assert spent[0] > spent[-1], "lambda changed nothing"
    real = matseg.segment(volume, out, tile=TILE, lam=0.0, tolerance=None, recalibrate=False)
    assert real["run"]["cheap_pass_reused"]
    assert abs(real["gflops"] - spent[0]) <= 0.25 * real["gflops"]
    # a dry run of the finished output shows its report (nothing left to estimate)
    args = ["segment", volume, "-o", out, "--tile", ",".join(map(str, TILE)), "--lambda", "0", "--dry-run"]
    assert run([*args, "--tolerance", "off", "--no-recalibrate"]) == 0


def test_budget_is_never_exceeded(tmp_path, volume):
    full = matseg.segment(volume, tmp_path / "all.zarr", tile=TILE, lam=0.0)
    cheap_pass = full["gflops_breakdown"]["cheap_pass"] + full["gflops_breakdown"]["selector"]
    budget = cheap_pass + 0.3 * (full["gflops"] - cheap_pass)
    capped = matseg.segment(volume, tmp_path / "capped.zarr", tile=TILE, budget_gflops=budget)
    assert capped["gflops"] <= budget
    assert sum(v for k, v in capped["decisions"].items() if k != "cheap") > 0
    fraction = matseg.segment(volume, tmp_path / "frac.zarr", tile=TILE, max_expensive_fraction=0.25)
    assert sum(v for k, v in fraction["decisions"].items() if k != "cheap") <= 0.25 * fraction["tiles"]


def test_selector_run_writes_decisions_gain_and_no_seams(tmp_path, volume):
    auto = matseg.segment(
        volume, tmp_path / "auto.zarr", tile=TILE, lam=0.01, truth=volume, recalibrate=False
    )
    expensive = matseg.segment(volume, tmp_path / "exp.zarr", tile=TILE, model="expensive", truth=volume)
    root = zarr.open_group(str(tmp_path / "auto.zarr"), mode="r")
    decisions = root["labels/decisions/0"][:]
    choice = root["selector/choice"][:]
    assert root["selector/gain"].shape == (auto["tiles"], len(auto["candidates"]))
    assert len(np.unique(choice)) > 1, "the test needs a mixed plan"
    assert set(np.unique(decisions)) == set(np.unique(choice))
    assert auto["gflops"] < expensive["gflops"]
    assert auto["seam"]["score"] < expensive["seam"]["score"] + 0.15
    assert auto["metrics"]["miou"] > expensive["metrics"]["miou"] - 0.03


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lambda", "1.5"], "--lambda must be a finite number between 0 and 1"),
        (["--model", "cheap", "--lambda", "0.2"], "--lambda only applies with --model auto"),
        (["--lambda", "0.2", "--budget-gflops", "10"], "either --lambda or a budget"),
        (["--budget-gflops", "0.001"], "below the cheap pass"),
        (["--max-expensive-fraction", "2"], "between 0 and 1"),
    ],
)
def test_bad_selector_options(tmp_path, volume, capsys, args, message):
    before = snapshot(volume)
    out = tmp_path / "out.zarr"
    assert run(["segment", volume, "-o", out, "--tile", "4,128,128", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and snapshot(volume) == before


def test_altered_selector_is_refused(tmp_path, volume, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(default_weights_dir(), weights)
    with open(weights / "selector.pt", "ab") as fh:
        fh.write(b"\0")
    assert run(["segment", volume, "-o", tmp_path / "o.zarr", "--weights", weights, "--quiet"]) == 2
    assert "sha256" in capsys.readouterr().err
    manifest = json.loads((weights / "manifest.json").read_text())
    shutil.copy(default_weights_dir() / "selector.pt", weights / "selector.pt")
    manifest["selector"]["segmenters"]["expensive"] = "0" * 64
    (weights / "manifest.json").write_text(json.dumps(manifest))
    assert run(["segment", volume, "-o", tmp_path / "o.zarr", "--weights", weights, "--quiet"]) == 2
    assert "trained for another 'expensive'" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_evaluate_compares_every_baseline(tmp_path, volume):
    from matseg.evaluate import evaluate

    result = evaluate([str(volume)], tmp_path / "eval", lambdas=(0.0, 0.05, 1.0), tile=TILE, real_run=False)
    assert (tmp_path / "eval" / "pareto.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["all_expensive"]["miou"] == pytest.approx(result["all_expensive"]["miou"])
    for row in result["sweep"]:
        policy = row["selector"]
        for baseline in ("cascade", "random"):
            assert row[baseline]["gflops"] <= policy["gflops"] * 1.0001  # equal cost, never more
        assert row["oracle"]["miou"] >= result["all_cheap"]["miou"] - 1e-9
    zero, one = result["sweep"][0]["selector"], result["sweep"][-1]["selector"]
    assert zero["gflops"] >= one["gflops"]
    assert one["mix"]["cheap"] == result["tiles"]  # cost is everything: cheap everywhere


def test_selector_trains_on_a_labs_own_two_phase_data(tmp_path, capsys):
    """Real EMPS electron micrographs (particle vs background): segmenters, then the selector,
    trained on the lab's own labels, then segment with them."""
    from pathlib import Path

    emps = Path(__file__).resolve().parents[1] / "data" / "emps"
    image, labels, weights = emps / "image.tif", emps / "labels.tif", tmp_path / "lab-weights"
    common = ["--labels", labels, "--phases", "background,particle", "--batch", "8", "--patch", "96"]
    assert (
        run(
            ["train", image, *common, "--slices", "0,2,4,6", "--model", "cheap", "--model", "expensive"]
            + ["--steps", "200", "--steps-expensive", "60", "-o", weights]
        )
        == 0
    ), capsys.readouterr().err
    # the selector learns on slices the segmenters never saw
    assert (
        run(
            ["train-selector", image, "--labels", labels, "--slices", "1,3,5,7", "--weights", weights]
            + ["--tile", "2,128,128", "--steps", "300", "--quiet"]
        )
        == 0
    ), capsys.readouterr().err
    assert "selector: step" not in capsys.readouterr().err  # --quiet: no per-step lines
    manifest = json.loads((weights / "manifest.json").read_text())
    selector = manifest["selector"]
    assert selector["candidates"] == ["cheap", "expensive", "expensive-2x", "classical"]
    assert len(selector["phase_order"]) == 2 and selector["tiles"] == 64
    history = selector["history"]
    assert history[-1]["reward@0.0"] >= history[0]["reward@0.0"]
    reports = {}
    for lam in (0.0, 1.0):
        reports[lam] = matseg.segment(
            image, tmp_path / f"lab-{lam}.zarr", weights=weights, lam=lam, tile=(2, 128, 128), truth=labels,
            tolerance=None,
        )  # fmt: skip
        assert reports[lam]["phases"] == ["background", "particle"]
    accurate, thrifty = reports[0.0], reports[1.0]
    cheap = matseg.segment(image, tmp_path / "cheap.zarr", weights=weights, model="cheap", truth=labels)
    assert accurate["metrics"]["miou"] > cheap["metrics"]["miou"]  # the selector pays on the lab's data
    assert accurate["gflops"] >= thrifty["gflops"]
    # when cost is all that counts, the expensive net runs nowhere
    assert thrifty["decisions"]["expensive"] == thrifty["decisions"]["expensive-2x"] == 0
    out = zarr.open_group(str(tmp_path / "lab-0.0.zarr"), mode="r")
    assert set(np.unique(out["labels/phases/0"][:])) <= {0, 1}


def test_new_lambda_on_a_finished_output_reuses_its_cheap_pass(tmp_path, volume):
    out = tmp_path / "out.zarr"
    first = matseg.segment(volume, out, tile=TILE, lam=0.0)
    second = matseg.segment(volume, out, tile=TILE, lam=1.0, overwrite=True)
    assert not first["run"]["cheap_pass_reused"] and second["run"]["cheap_pass_reused"]
    matseg.segment(volume, tmp_path / "fresh.zarr", tile=TILE, lam=1.0)
    reused, fresh = (zarr.open_group(str(p), mode="r") for p in (out, tmp_path / "fresh.zarr"))
    for name in ("labels/phases/0", "labels/decisions/0", "0"):
        np.testing.assert_array_equal(reused[name][:], fresh[name][:])
    # the stored cheap pass is counted, not recomputed: the same figure as in the first run
    assert second["gflops_breakdown"]["cheap_pass"] == first["gflops_breakdown"]["cheap_pass"]


def test_selector_on_a_2d_image(tmp_path):
    image = tmp_path / "slice.zarr"
    write_sample(image, (256, 320), seed=77, config=SampleConfig(profile="test"))
    report = matseg.segment(image, tmp_path / "out.zarr", tile=(128, 128), lam=0.01, truth=image)
    labels = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels/phases/0"]
    assert labels.shape == (256, 320) and report["tiles"] == 6
    assert report["metrics"]["miou"] > 0.6


@pytest.mark.parametrize("n_phases", [2, 3, 4])
def test_multiotsu_thresholds_equal_scikit_image(n_phases):
    """Our histogram for the classical candidate's thresholds is scikit-image's own (classes that
    touch: a wide empty gap between two moves the threshold to its middle, test_io.py)."""
    from skimage.filters import threshold_multiotsu

    rng = np.random.default_rng(n_phases)
    for quantised in (False, True):
        centres = rng.uniform(0, 1, n_phases)
        sample = np.concatenate([rng.normal(c, 0.15, 20_000) for c in centres]).astype(np.float32)
        if quantised:  # an 8-bit volume, normalised
            sample = (np.round(sample * 255) / 255).astype(np.float32)
        expected = tuple(float(t) for t in threshold_multiotsu(sample, classes=n_phases))
        assert multiotsu_thresholds(sample.reshape(40, -1), n_phases) == expected


def test_batches_share_each_candidate_run(tmp_path, volume, monkeypatch):
    """On threads, tiles go in batches (separate dask computations): a candidate whose
    neighbours fall into several batches still runs once, with the same result."""
    import importlib

    import matseg.cluster

    module = importlib.import_module("matseg.pipeline.tasks")
    matseg.segment(volume, tmp_path / "whole.zarr", tile=TILE, lam=0.01, workers=2)
    runs = []
    original = module.candidate_task

    def counted(block, index, *args):
        runs.append(tuple(index))
        return original(block, index, *args)

    monkeypatch.setattr(module, "candidate_task", counted)
    monkeypatch.setattr(matseg.cluster, "TASKS_PER_THREAD", 1)  # batches of 2 tiles
    matseg.segment(volume, tmp_path / "split.zarr", tile=TILE, lam=0.01, workers=2)
    choice = zarr.open_group(str(tmp_path / "split.zarr"), mode="r")["selector/choice"][:]
    assert len(runs) == len(set(runs)) == (choice > 0).sum() > 1
    for path in ("labels/phases/0", "labels/decisions/0"):
        whole = zarr.open_group(str(tmp_path / "whole.zarr"), mode="r")[path][:]
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "split.zarr"), mode="r")[path][:], whole)


def test_tile_table_by_groups_of_layers_is_the_whole_table(small_sample, random_weights, monkeypatch):
    """The table's tiles go through the pipeline's tile loop, a group of whole layers at a time
    (the graph bounded by a group, not by the volume), with the values of one group."""
    import matseg.selector.table as table
    from matseg.candidates.registry import Context
    from matseg.cluster import Backend
    from matseg.models.store import load_segmenter

    names = ("cheap", "expensive", "classical")
    context = Context({m: load_segmenter(m, random_weights) for m in ("cheap", "expensive")})
    args = (str(small_sample), None, context, names, (4, 32, 32), 16)  # a halo smaller than the tiles
    whole = table.tile_table(*args)
    layers = []
    blocks = table.tile_blocks
    monkeypatch.setattr(
        table, "tile_blocks", lambda data, grid, group: layers.append(group) or blocks(data, grid, group)
    )
    monkeypatch.setattr(Backend, "group_tiles", property(lambda self: 4))  # a layer of 2 x 2 tiles
    grouped = table.tile_table(*args)
    assert set(layers) == {range(z, z + 1) for z in range(4)}
    assert len(whole["features"]) == 16
    for key in ("features", "confusion", "gflops", "recompute", "labelled"):
        np.testing.assert_array_equal(grouped[key], whole[key], err_msg=key)


@pytest.mark.parametrize("phases", [1, 2, 3])
def test_torch_features_agree_with_numpy(phases):
    """The features computed on the device (torch) are numpy's to float32 rounding."""
    import torch

    from matseg.candidates.features import tile_features_torch

    rng = np.random.default_rng(phases)
    logits = rng.normal(size=(3, phases, 61, 75)).astype(np.float32) * 3
    logits[:, :, :10] = logits[:, :1, :10]  # ties between the top phases
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    image = rng.normal(size=(3, 61, 75)).astype(np.float32).cumsum(axis=-1) / 10
    labels, uncertainty = phase_labels(probs), normalized_entropy(probs)
    expected = tile_features(image, probs, uncertainty, labels)
    tensors = (torch.from_numpy(a) for a in (image, probs, uncertainty, labels))
    np.testing.assert_allclose(tile_features_torch(*tensors), expected, rtol=2e-6, atol=1e-7)


def test_cheap_pass_on_the_device_makes_the_same_plan(tmp_path, volume, monkeypatch):
    """The cheap pass with its labels, uncertainty and features computed where the
    probabilities are (torch; here on the CPU) gives the plan and labels of numpy's."""
    from functools import partial

    import matseg.pipeline.tasks as tasks
    from matseg.candidates.tile import cheap_pass

    host = matseg.segment(
        volume, tmp_path / "host.zarr", tile=TILE, lam=0.2, tolerance=None, recalibrate=False
    )
    monkeypatch.setattr(tasks, "cheap_pass", partial(cheap_pass, on_device=True))
    device = matseg.segment(
        volume, tmp_path / "device.zarr", tile=TILE, lam=0.2, tolerance=None, recalibrate=False
    )
    assert device["decisions"] == host["decisions"]
    assert sum(n > 0 for n in host["decisions"].values()) >= 2  # a plan with a mix to change
    a, b = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in ("host", "device"))
    np.testing.assert_array_equal(b["selector/choice"][:], a["selector/choice"][:])
    np.testing.assert_allclose(b["selector/features"][:], a["selector/features"][:], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b["labels/phases/0"][:], a["labels/phases/0"][:])


def test_tiles_batched_in_one_forward_pass_give_the_same_output(tmp_path, volume, monkeypatch):
    """batch_tiles gathers the tiles that threads ask a model for at once into one batch (one
    forward pass on a GPU; slice by slice on a CPU): the same output as tile by tile."""
    import matseg.models.inference as inference

    one = matseg.segment(volume, tmp_path / "one.zarr", tile=TILE, lam=0.05, workers=4)
    slices = []
    forward = inference._probs
    monkeypatch.setattr(inference, "_probs", lambda m, t: slices.append(len(t)) or forward(m, t))
    batched = matseg.segment(volume, tmp_path / "four.zarr", tile=TILE, lam=0.05, workers=4, batch_tiles=4)
    assert max(slices) > TILE[0]  # several tiles' slices went to the model at once
    assert batched["decisions"] == one["decisions"]
    a, b = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("one.zarr", "four.zarr"))
    for name in ("labels/phases/0", "labels/decisions/0", "0", "selector/features"):
        np.testing.assert_array_equal(b[name][:], a[name][:], err_msg=name)
    with pytest.raises(matseg.MatsegError, match="batch_tiles"):
        matseg.Settings(batch_tiles=0)


def test_evaluate_quiet_shows_no_stage_lines(tmp_path, volume, capfd):
    args = ["evaluate", volume, "-o", tmp_path / "ev", "--lambdas", "0,1", "--tile", ",".join(map(str, TILE))]
    assert run([*args, "--no-real-run", "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "evaluate: lambda" not in err and "every candidate on every tile" not in err, err


def test_a_selector_without_an_expensive_net_segments_and_tells_its_cost_against_its_costliest(
    tmp_path, small_sample, random_weights, capsys
):
    """A lab's weights trained with ``--model cheap`` only: its selector chooses between cheap
    and classical. A default run with them crashed at its report (KeyError: 'expensive') after
    all the work; the cost is now told against the costliest candidate it has."""
    weights = tmp_path / "cheap-only"
    weights.mkdir()
    shutil.copy2(random_weights / "cheap.pt", weights / "cheap.pt")
    manifest = json.loads((random_weights / "manifest.json").read_text())
    kept = {k: v for k, v in manifest.items() if k not in ("expensive", "selector")}
    (weights / "manifest.json").write_text(json.dumps(kept, indent=2))
    args = ["train-selector", small_sample, "--weights", weights, "--tile", "4,64,64", "--steps", "20"]
    assert run([*args, "--quiet"]) == 0, capsys.readouterr().err
    candidates = json.loads((weights / "manifest.json").read_text())["selector"]["candidates"]
    assert "expensive" not in candidates
    capsys.readouterr()
    out = tmp_path / "phases.zarr"
    code = run(["segment", small_sample, "-o", out, "--weights", weights, "--tile", "4,64,64", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["cost_reference"] in candidates and report["all_expensive_gflops"] > 0
    line = next(line for line in captured.out.splitlines() if line.strip().startswith("cost"))
    assert f"of an all-{report['cost_reference']} run" in line, line


def test_expected_gains_stay_within_what_an_iou_gain_can_be():
    """Features far outside the selector's training spread (a selector trained on two corrected
    tiles meets a whole volume) made the gain head extrapolate to ±17; gains are IoU gains."""
    import torch

    from matseg.selector.policy import load_selector

    selector = load_selector()
    features = np.full((3, len(FEATURE_NAMES)), 1e4, np.float32)
    features[1] *= -1
    with torch.inference_mode():
        raw = selector.net(torch.as_tensor(features), torch.zeros(3))[2].numpy()
    assert np.abs(raw).max() > 1  # what the head says out there
    gain = selector.expected_gain(features)
    assert gain.shape == raw.shape and np.all(np.abs(gain) <= 1)
    ordinary = selector.expected_gain(np.zeros((2, len(FEATURE_NAMES)), np.float32))
    with torch.inference_mode():
        assert np.allclose(
            ordinary, selector.net(torch.zeros(2, len(FEATURE_NAMES)), torch.zeros(2))[2].numpy()
        )
