"""Corrections of a segmentation: saved beside it, reloaded, and fine-tuned on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import matseg
from matseg import MatsegError
from matseg.labelled import load_labelled
from matseg.metrics import confusion_matrix, summarize
from matseg.models.segmenter import new_segmenter
from matseg.models.store import default_weights_dir, save_segmenter
from matseg.training import fit

from .conftest import run

PHASES = ("pore", "carbon-binder", "active")
CORRECTED = [1, 6]


@pytest.fixture(scope="module")
def fair_weights(tmp_path_factory):
    """A cheap net trained briefly on another sample: fair, with room to improve."""
    from matseg.sample import write_sample

    folder = tmp_path_factory.mktemp("fair-weights")
    train = tmp_path_factory.mktemp("fair-train") / "train.zarr"
    write_sample(train, (8, 64, 64), seed=11)
    data, _ = load_labelled(train)
    model = new_segmenter("cheap", PHASES, seed=1)
    fit(model, [data], 40, batch=8, patch=64, lr=3e-3, seed=0)
    save_segmenter(model, folder)
    return folder


@pytest.fixture(scope="module")
def segmented_sample(tmp_path_factory, fair_weights):
    from matseg.sample import write_sample

    folder = tmp_path_factory.mktemp("segmented")
    sample = folder / "cathode.zarr"
    write_sample(sample, (8, 64, 64), seed=3)
    matseg.segment(sample, folder / "phases.zarr", model="cheap", weights=fair_weights, tile=(4, 32, 32))
    return sample, folder / "phases.zarr"


@pytest.fixture
def output(segmented_sample, tmp_path):
    shutil.copytree(segmented_sample[1], tmp_path / "phases.zarr")
    return tmp_path / "phases.zarr"


def truth_of(sample) -> np.ndarray:
    return matseg.open_volume(sample, labels=True).data.compute()


def corrected_to_truth(output, truth, slices=CORRECTED) -> np.ndarray:
    labels = matseg.open_segmentation(output).phases.compute()
    labels[slices] = truth[slices]
    return labels


def miou(pred, truth) -> float:
    return summarize(confusion_matrix(da.from_array(pred), da.from_array(truth), 3), PHASES)["miou"]


def test_save_and_reload_corrections(output, segmented_sample):
    sample = segmented_sample[0]
    original = matseg.open_segmentation(output).phases.compute()
    labels = corrected_to_truth(output, truth_of(sample))
    path = matseg.save_corrections(output, labels, reviewed=[(1, 0, 1), (0, 0, 0)], session="a")
    assert path == output.with_name("phases.corrections.zarr")

    corrections = matseg.load_corrections(path)
    assert np.array_equal(corrections.labels.compute(), labels)
    assert np.array_equal(corrections.mask.compute(), (labels != original).astype(np.uint8))
    assert corrections.corrected_slices == [z for z in CORRECTED if (labels[z] != original[z]).any()]
    assert corrections.reviewed == [(0, 0, 0), (1, 0, 1)]
    assert corrections.image == str(sample) and corrections.output == str(output)
    assert corrections.phases == PHASES
    assert corrections.attrs["user"] and corrections.attrs["time"][:2] == "20"
    assert corrections.attrs["corrected_voxels"] == int((labels != original).sum()) > 0
    # the output itself is unchanged
    assert np.array_equal(matseg.open_segmentation(output).phases.compute(), original)


def test_another_session_does_not_overwrite_corrections(output, segmented_sample):
    labels = corrected_to_truth(output, truth_of(segmented_sample[0]))
    path = matseg.save_corrections(output, labels, session="a")
    labels[3, :5, :5] = 2
    with pytest.raises(MatsegError, match="already exist"):
        matseg.save_corrections(output, labels, session="b")
    with pytest.raises(MatsegError, match="already exist"):
        matseg.save_corrections(output, labels)
    assert matseg.load_corrections(path).labels[3, :5, :5].compute().tolist() != [[2] * 5] * 5
    matseg.save_corrections(output, labels, session="a")  # the same session updates its store
    assert (matseg.load_corrections(path).labels[3, :5, :5].compute() == 2).all()
    matseg.save_corrections(output, labels, session="b", replace=True)
    assert matseg.load_corrections(path).attrs["session"] == "b"
    assert not path.with_name(path.name + ".partial").exists()


def test_corrections_must_fit_the_output(output):
    with pytest.raises(MatsegError, match="shape"):
        matseg.save_corrections(output, np.zeros((8, 64, 63), np.uint8))
    with pytest.raises(MatsegError, match="overwrite the output"):
        matseg.save_corrections(output, np.zeros((8, 64, 64), np.uint8), path=output)
    labels = matseg.open_segmentation(output).phases.compute()
    for value, dtype, message in [(9, np.uint8, "values outside the 3 phases"),
                                  (255, np.uint8, "every voxel needs one"),
                                  (1.5, np.float32, "that is an image")]:  # fmt: skip
        bad = labels.astype(dtype)
        bad[0, 0, 0] = value
        with pytest.raises(MatsegError, match=message):
            matseg.save_corrections(output, bad)
    for tile in [(99, 99, 99), (0, 0), "abc"]:
        with pytest.raises(MatsegError, match="is not a tile of the output's grid"):
            matseg.save_corrections(output, labels, reviewed=[tile])
    from matseg.corrections import corrections_path

    assert not corrections_path(output).exists()


def test_training_data_is_the_corrected_slices(output, segmented_sample):
    sample = segmented_sample[0]
    truth = truth_of(sample)
    path = matseg.save_corrections(output, corrected_to_truth(output, truth), session="a")
    data = matseg.training_data_from_corrections(path)
    assert data.images.shape == (len(CORRECTED), 64, 64) and data.images.dtype == np.float32
    assert np.array_equal(data.labels, truth[CORRECTED])

    untouched = matseg.save_corrections(
        output, matseg.open_segmentation(output).phases, path=output.with_name("none.zarr")
    )
    with pytest.raises(MatsegError, match="no corrections"):
        matseg.training_data_from_corrections(untouched)


def test_only_the_tiles_looked_at_are_labelled(output, segmented_sample):
    """A correction in one tile labels that tile (and reviewed ones) of its slice, not the rest."""
    truth = truth_of(segmented_sample[0])
    labels = matseg.open_segmentation(output).phases.compute()
    tile = (slice(4, 8), slice(32, 64), slice(0, 32))  # tile (1, 1, 0) of the 4 x 32 x 32 grid
    labels[5, 32:64, 0:32] = truth[5, 32:64, 0:32]
    assert (labels[tile] != matseg.open_segmentation(output).phases[tile].compute()).any()
    path = matseg.save_corrections(output, labels, reviewed=[(1, 0, 1), (0, 0, 0)])
    corrections = matseg.load_corrections(path)
    assert corrections.corrected_slices == [5]
    assert corrections.attrs["labelled"] == [[5, 0, 32, 32, 64], [5, 32, 64, 0, 32]]  # reviewed, corrected
    data = matseg.training_data_from_corrections(path)
    assert data.labels.shape == (1, 64, 64)
    assert np.array_equal(data.labels[0, 32:64, 0:32], truth[5, 32:64, 0:32])
    assert np.array_equal(data.labels[0, 0:32, 32:64], labels[5, 0:32, 32:64])
    assert (data.labels[0, 0:32, 0:32] == 255).all() and (data.labels[0, 32:64, 32:64] == 255).all()


def test_finetune_raises_iou_on_the_corrected_slices(output, segmented_sample, fair_weights, tmp_path):
    """Correct two slices to the ground truth, fine-tune cheap 100 steps, segment again."""
    sample = segmented_sample[0]
    truth = truth_of(sample)
    before = matseg.open_segmentation(output).phases.compute()
    path = matseg.save_corrections(
        output, corrected_to_truth(output, truth), session="a", weights=fair_weights
    )
    seen = []
    results = matseg.finetune_from_corrections(
        path, tmp_path / "tuned", steps=100, lr=3e-3, progress=lambda *a: seen.append(a)
    )
    assert seen[0] == ("training cheap", 0, 100) and seen[-1] == ("training cheap", 100, 100)
    assert set(results) == {"cheap", "selector"}
    assert results["cheap"]["miou_after"] > results["cheap"]["miou_before"]

    again = tmp_path / "again.zarr"
    matseg.segment(sample, again, model="cheap", weights=tmp_path / "tuned", tile=(4, 32, 32))
    after = matseg.open_segmentation(again).phases.compute()
    iou_before, iou_after = (
        miou(before[CORRECTED], truth[CORRECTED]),
        miou(after[CORRECTED], truth[CORRECTED]),
    )
    print(f"mIoU on corrected slices: {iou_before:.4f} -> {iou_after:.4f}")
    assert iou_after >= iou_before + 0.05
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["cheap"]["training"]["from_corrections"] == str(path.absolute())
    assert manifest["cheap"]["training"]["slices"] == CORRECTED


def test_finetune_stops_when_cancelled(output, segmented_sample, fair_weights, tmp_path):
    """Fine-tuning runs the training loop of matseg.train: cancelled, it stops at the next step."""
    import threading

    path = matseg.save_corrections(
        output, corrected_to_truth(output, truth_of(segmented_sample[0])), session="a", weights=fair_weights
    )
    cancel = threading.Event()

    def progress(stage, done, total):
        if done == 2:
            cancel.set()

    with pytest.raises(matseg.Cancelled):
        matseg.finetune_from_corrections(
            path, tmp_path / "tuned", steps=100, progress=progress, cancel=cancel
        )
    assert not (tmp_path / "tuned").exists()  # no half-made weights folder is left


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": 0}, "--steps"),
        ({"lr": -1.0}, "--lr"),
        ({"batch": 0}, "--batch"),
        ({"patch": 0}, "--patch"),
        ({"models": ["nope"]}, "--model nope"),
    ],
)
def test_finetune_refuses_bad_settings_before_writing(output, segmented_sample, tmp_path, options, message):
    path = matseg.save_corrections(output, corrected_to_truth(output, truth_of(segmented_sample[0])))
    with pytest.raises(MatsegError, match=message):
        matseg.finetune_from_corrections(path, tmp_path / "tuned", **options)
    assert not (tmp_path / "tuned").exists()


def test_finetune_into_an_earlier_fine_tunes_folder_replaces_it_whole(
    output, segmented_sample, fair_weights, tmp_path
):
    """Fine-tuning again into the same folder (the plugin's default) kept the earlier fine-tune's
    selector when this one trained none — a selector made for other nets. A cancelled run leaves
    the folder as it was; a finished one holds this run's nets and selector only."""
    import threading

    truth = truth_of(segmented_sample[0])
    tuned = tmp_path / "tuned"
    both = matseg.save_corrections(
        output, corrected_to_truth(output, truth), session="a", weights=fair_weights
    )
    first = matseg.finetune_from_corrections(both, tuned, steps=5, selector_steps=20)
    assert first["selector"]["trained"] and (tuned / "selector.pt").is_file()
    before = {p.name: p.read_bytes() for p in tuned.iterdir()}

    cancel = threading.Event()
    with pytest.raises(matseg.Cancelled):
        matseg.finetune_from_corrections(
            both, tuned, steps=50, progress=lambda s, done, n: done == 2 and cancel.set(), cancel=cancel
        )
    assert {p.name: p.read_bytes() for p in tuned.iterdir()} == before  # as it was

    labels = matseg.open_segmentation(output).phases.compute()
    labels[5, :32, :32] = truth[5, :32, :32]  # one corrected tile: too few for a selector
    one = matseg.save_corrections(output, labels, session="b", weights=fair_weights, replace=True)
    again = matseg.finetune_from_corrections(one, tuned, steps=5, selector_steps=20)
    assert not again["selector"]["trained"]
    assert not (tuned / "selector.pt").exists()
    assert "selector" not in json.loads((tuned / "manifest.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no sibling left


def test_finetune_refuses_corrections_of_one_phase_only(output, fair_weights, tmp_path):
    """A reviewer painted a slice all pore: fine-tuning on it taught the nets pore everywhere."""
    labels = matseg.open_segmentation(output).phases.compute()
    labels[5] = 0
    path = matseg.save_corrections(output, labels, weights=fair_weights)
    with pytest.raises(MatsegError, match=r"label one phase only \(pore\)"):
        matseg.finetune_from_corrections(path, tmp_path / "tuned", steps=1)
    assert not (tmp_path / "tuned").exists()


def test_finetune_refuses_the_bundled_weights_folder(output, segmented_sample, fair_weights):
    path = matseg.save_corrections(output, corrected_to_truth(output, truth_of(segmented_sample[0])))
    with pytest.raises(MatsegError, match="bundled weights"):
        matseg.finetune_from_corrections(path, default_weights_dir(), init=fair_weights, steps=1)


def test_finetune_checks_it_starts_from_the_weights_used(output, segmented_sample, tmp_path):
    other = tmp_path / "other"
    save_segmenter(new_segmenter("cheap", PHASES, seed=5), other)
    path = matseg.save_corrections(
        output, corrected_to_truth(output, truth_of(segmented_sample[0])), weights=other
    )
    with pytest.raises(MatsegError, match=r"pass the weights folder it used as init= \(--init"):
        matseg.finetune_from_corrections(path, tmp_path / "tuned", steps=1)


def test_finetune_starts_from_the_weights_folder_the_run_used(
    output, segmented_sample, fair_weights, tmp_path
):
    """A run with --weights records the folder; corrections saved without naming it fine-tune from it."""
    report = json.loads((output / "matseg-report.json").read_text())
    assert report["weights"] == str(Path(fair_weights).absolute())
    path = matseg.save_corrections(output, corrected_to_truth(output, truth_of(segmented_sample[0])))
    assert matseg.load_corrections(path).attrs["weights"] == str(Path(fair_weights).absolute())
    matseg.finetune_from_corrections(path, tmp_path / "tuned", steps=1, patch=64)
    assert (tmp_path / "tuned" / "cheap.pt").is_file()


def test_cli_train_from_corrections(output, segmented_sample, fair_weights, tmp_path, capsys):
    path = matseg.save_corrections(
        output, corrected_to_truth(output, truth_of(segmented_sample[0])), weights=fair_weights
    )
    code = run(
        ["train", "--from-corrections", path, "-o", tmp_path / "tuned", "--steps", "20", "--patch", "64"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cheap: mIoU on the 2 corrected slice(s)" in captured.out
    assert (tmp_path / "tuned" / "cheap.pt").is_file()


def test_cli_train_says_when_fine_tuning_made_a_net_worse(
    output, segmented_sample, fair_weights, tmp_path, capsys
):
    """A learning rate of 1 wrecks the net in a few steps: the run ends (the weights are written)
    but says the net is now worse on the very slices it learnt from, and what to change."""
    path = matseg.save_corrections(
        output, corrected_to_truth(output, truth_of(segmented_sample[0])), weights=fair_weights
    )
    args = ["train", "--from-corrections", path, "-o", tmp_path / "tuned", "--steps", "5", "--lr", "1"]
    code = run([*args, "--patch", "64"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.err.splitlines() if "worse on the corrected slices" in line]
    assert len(lines) == 1, captured.err
    assert "cheap" in lines[0] and "try a smaller --lr or more --steps" in lines[0]
    assert str(fair_weights) in lines[0]  # the weights it started from are named as unchanged
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["cheap"]["training"]["worse"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from-corrections", "missing.corrections.zarr"], "corrections store not found: missing"),
        (["--from-corrections", "{output}"], "is not a matseg corrections store"),
    ],
)
def test_cli_train_bad_corrections_path_is_one_line(args, message, output, tmp_path, capsys):
    args = [a.format(output=output) for a in args]
    assert run(["train", *args, "-o", tmp_path / "w"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("matseg: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, message",
    [(["{sample}", "--from-corrections", "{output}"], "drop IMAGES"), ([], "give the labelled IMAGES")],
)
def test_cli_train_needs_images_or_corrections(args, message, output, segmented_sample, tmp_path, capsys):
    args = [a.format(output=output, sample=segmented_sample[0]) for a in args]
    assert run(["train", *args, "-o", tmp_path / "w"]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_cli_train_from_corrections_never_writes_into_the_segmentation(
    output, segmented_sample, tmp_path, capsys
):
    """The corrections store reads the corrected segmentation: weights written inside it are refused."""
    path = matseg.save_corrections(output, corrected_to_truth(output, truth_of(segmented_sample[0])))
    before = sorted(p.relative_to(output) for p in output.rglob("*"))
    assert run(["train", "--from-corrections", path, "-o", output / "w", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "would overwrite the segmentation" in err and len(err.splitlines()) == 1
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == before
