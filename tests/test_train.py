"""`matseg train` on our samples and on a lab's own data (real EMPS images, 2 phases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from matseg import MatsegError
from matseg.labelled import UNLABELLED, load_labelled
from matseg.models.segmenter import new_segmenter
from matseg.models.store import load_segmenter
from matseg.training import score

from .conftest import run

EMPS = Path(__file__).resolve().parents[1] / "data" / "emps"
QUICK = ["--model", "cheap", "--patch", "64", "--batch", "2"]  # a few steps, to test plumbing


def test_train_on_real_emps_two_phases(tmp_path, capsys):
    """A lab's own labelled images, 2 phases: training beats the untrained net by far."""
    weights = tmp_path / "emps-weights"
    code = run(
        [
            "train",
            EMPS / "image.tif",
            "--labels",
            EMPS / "labels.tif",
            "--phases",
            "background,particle",
            "--model",
            "cheap",
            "--steps",
            "300",
            "--batch",
            "8",
            "--patch",
            "96",
            "--seed",
            "1",
            "-o",
            weights,
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["cheap"]["phases"] == ["background", "particle"]
    trained = load_segmenter("cheap", weights)
    assert trained.net.config["n_classes"] == 2

    held_out, _ = load_labelled(f"{EMPS / 'image.tif'}", f"{EMPS / 'labels.tif'}", slices=[5])
    untrained = new_segmenter("cheap", ("background", "particle"), seed=1)
    before, after = (
        score(untrained.__class__(**{**untrained.__dict__}), [held_out]),
        score(trained, [held_out]),
    )
    # 300 steps land at 0.58-0.65 as torch's thread count varies (1, 2, 4 threads measured):
    # the order of the sums changes the path; the untrained net scores 0.21
    assert after["miou"] > 0.5
    assert after["miou"] > before["miou"] + 0.25

    out = tmp_path / "emps-phases.zarr"
    assert (
        run(
            [
                "segment",
                EMPS / "image.tif",
                "-o",
                out,
                "--weights",
                weights,
                "--model",
                "cheap",
                "--truth",
                EMPS / "labels.tif",
                "--quiet",
            ]
        )
        == 0
    )
    root = zarr.open_group(str(out), mode="r")
    assert set(np.unique(root["labels/phases/0"][:])) <= {0, 1}
    assert root["labels/phases"].attrs["matseg"]["phases"] == ["background", "particle"]


def test_few_labelled_slices(tmp_path, small_sample):
    """Only two slices labelled (255 elsewhere): only they are used for training."""
    truth = zarr.open_group(str(small_sample), mode="r")["labels/truth/0"][:]
    partial = np.full_like(truth, UNLABELLED)
    partial[[3, 11]] = truth[[3, 11]]
    labels = tmp_path / "partial.zarr"
    zarr.create_array(str(labels), shape=partial.shape, dtype="uint8", chunks=(4, 64, 64))[:] = partial
    data, _ = load_labelled(str(small_sample), str(labels))
    assert len(data.images) == 2
    np.testing.assert_array_equal(data.labels, truth[[3, 11]])

    code = run(
        [
            "train",
            small_sample,
            "--labels",
            labels,
            "--phases",
            "pore,carbon-binder,active",
            *QUICK,
            "--steps",
            "5",
            "-o",
            tmp_path / "w",
        ]
    )
    assert code == 0
    assert load_segmenter("cheap", tmp_path / "w").phases == ("pore", "carbon-binder", "active")


def test_phases_read_from_label_metadata(tmp_path, small_sample):
    """A sample store names its phases in NGFF label metadata: no --phases needed. Training
    re-images patches with the ``light`` augmentation unless told otherwise (the manifest says
    which)."""
    from matseg.augment import LIGHT

    code = run(["train", small_sample, *QUICK, "--steps", "3", "-o", tmp_path / "w"])
    assert code == 0
    assert load_segmenter("cheap", tmp_path / "w").phases == ("pore", "carbon-binder", "active")
    training = json.loads((tmp_path / "w" / "manifest.json").read_text())["cheap"]["training"]
    assert training["augment"] == LIGHT.to_dict()
    assert (
        run(["train", small_sample, *QUICK, "--steps", "3", "--augment", "none", "-o", tmp_path / "n"]) == 0
    )
    assert (
        json.loads((tmp_path / "n" / "manifest.json").read_text())["cheap"]["training"]["augment"] == "none"
    )


def test_quiet_training_prints_no_step_lines(tmp_path, small_sample, capsys):
    assert run(["train", small_sample, *QUICK, "--steps", "2", "-o", tmp_path / "loud"]) == 0
    assert "step 1/2" in capsys.readouterr().err
    assert run(["train", small_sample, *QUICK, "--steps", "2", "--quiet", "-o", tmp_path / "w"]) == 0
    assert "step 1/2" not in capsys.readouterr().err


def test_fine_tune_from_init_writes_new_folder(tmp_path, small_sample, random_weights):
    before = (Path(random_weights) / "cheap.pt").read_bytes()
    code = run(
        ["train", small_sample, *QUICK, "--steps", "3", "--init", random_weights, "-o", tmp_path / "tuned"]
    )
    assert code == 0
    assert (Path(random_weights) / "cheap.pt").read_bytes() == before
    tuned = json.loads((tmp_path / "tuned" / "manifest.json").read_text())["cheap"]
    assert tuned["training"]["init"] == str(random_weights)


def test_label_value_without_phase_name(tmp_path, small_sample):
    with pytest.raises(MatsegError, match="only 2 phases are named"):
        from matseg.training import train

        train([str(small_sample)], tmp_path / "w", models=["cheap"], phases=["a", "b"], steps=1)


def _labels(tmp_path, small_sample, change) -> Path:
    """The sample's truth changed by ``change(truth)``, as a TIFF label stack."""
    import tifffile

    truth = zarr.open_group(str(small_sample), mode="r")["labels/truth/0"][:]
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, change(truth.copy()).astype(np.uint8))
    return path


@pytest.mark.parametrize(
    ("change", "phases", "message"),
    [
        (lambda t: np.where(t == 2, 3, t), None, r"phase value\(s\) 2 \(phase2\)"),  # values 0, 1, 3
        (lambda t: np.where(t == 2, 3, t), "a,b,c,d", r"2 \(c\)"),
        (lambda t: t * 0, "a,b", r"1 \(b\)"),  # every voxel one phase
        (lambda t: t, "a,a,b", "distinct, non-empty"),
        (lambda t: t, "a,,b", "distinct, non-empty"),
    ],
)
def test_labels_that_cannot_train_every_phase_are_refused(
    tmp_path, small_sample, capsys, change, phases, message
):
    """Label values that skip a number, a named phase with no labelled voxel, and phase names
    given twice or empty: one line, exit 2, no weights written."""
    labels = _labels(tmp_path, small_sample, change)
    args = ["train", small_sample, "--labels", labels, *QUICK, "--steps", "1", "-o", tmp_path / "w"]
    code = run([*args, *(["--phases", phases] if phases else [])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "w").exists()


def test_an_image_without_labels_of_its_own_is_not_taken_for_them(tmp_path, small_sample, capsys):
    """A TIFF (or a bare array) with no --labels has no label image: refused, not trained on its
    own grey values; a sample store's label image given as the labels' own group works."""
    import tifffile

    image = zarr.open_group(str(small_sample), mode="r")["0"][:]
    tifffile.imwrite(tmp_path / "dim.tif", (image // 9).astype(np.uint8))
    code = run(["train", tmp_path / "dim.tif", *QUICK, "--steps", "1", "-o", tmp_path / "w"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no label image of its own" in err and "--labels" in err
    assert not (tmp_path / "w").exists()
    data, names = load_labelled(str(small_sample), f"{small_sample}:/labels/truth")
    assert names == ("pore", "carbon-binder", "active") and len(data.images) == 16


def test_validation_labels_with_other_phases_are_refused(tmp_path, small_sample, capsys):
    two = _labels(tmp_path, small_sample, lambda t: (t > 0).astype(np.uint8))
    args = ["train", small_sample, "--labels", two, "--phases", "pore,solid", "--val", small_sample]
    code = run([*args, *QUICK, "--steps", "1", "-o", tmp_path / "w"])
    err = capsys.readouterr().err
    assert code == 2 and "--val" in err and "values up to 2" in err and "2 phases" in err


def test_a_weights_folder_keeps_one_set_of_phases(tmp_path, small_sample, random_weights, capsys):
    """Training one net of a folder on labels with other phases is refused (the folder would
    mix them); retraining it on the same phases replaces it and drops the folder's selector,
    which chose by the replaced net's gains."""
    import shutil

    folder = tmp_path / "w"
    shutil.copytree(random_weights, folder)
    two = _labels(tmp_path, small_sample, lambda t: (t > 0).astype(np.uint8))
    args = ["train", small_sample, "--labels", two, "--phases", "pore,solid", *QUICK, "--steps", "1"]
    before = (folder / "manifest.json").read_text()
    code = run([*args, "-o", folder])
    err = capsys.readouterr().err
    assert code == 2 and "holds expensive for the phases pore, carbon-binder, active" in err
    assert (folder / "manifest.json").read_text() == before
    assert run(["train", small_sample, *QUICK, "--steps", "1", "-o", folder]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "selector" not in manifest and not (folder / "selector.pt").exists()
    assert "cheap" in manifest and "expensive" in manifest


def test_a_patch_off_any_nets_stride_is_refused_before_training(tmp_path, small_sample, capsys):
    """--patch 60 fits the cheap (2) and medium (4) nets' strides, not the expensive net's (8):
    refused before the first net trains, with a patch that does, and no folder is written."""
    args = ["train", small_sample, "--patch", "60", "--batch", "2", "--steps", "1", "-o", tmp_path / "w"]
    code = run(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--patch 60" in err and "multiple of 8" in err and "expensive" in err and "--patch 56" in err
    assert "training cheap" not in err
    assert not (tmp_path / "w").exists()


def _interrupted_at_second_net(monkeypatch):
    """``fit`` that trains the first net and raises KeyboardInterrupt (Ctrl-C) in the second."""
    import matseg.training

    fit, calls = matseg.training.fit, []

    def interrupted(model, *args, **kwargs):
        calls.append(model.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(matseg.training, "fit", interrupted)
    return calls


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_interrupted_training_leaves_no_new_folder(tmp_path, small_sample, monkeypatch):
    """Interrupted in the second net: no folder of the first net alone (which segment would
    take for weights), and no hidden sibling left beside it."""
    from matseg.training import train

    calls = _interrupted_at_second_net(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train([str(small_sample)], tmp_path / "w", models=["cheap", "medium"], steps=1, batch=2, patch=64)
    assert calls == ["cheap", "medium"]
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_training_leaves_a_weights_folder_as_it_was(
    tmp_path, small_sample, random_weights, monkeypatch, caplog
):
    """Retraining a folder's nets on other phases, interrupted in the second net: every file of
    the folder as before (its nets of one set of phases, its selector), nothing left beside it."""
    import shutil

    from matseg.training import train

    folder = tmp_path / "w"
    shutil.copytree(random_weights, folder)
    before = _files(folder)
    two = _labels(tmp_path, small_sample, lambda t: (t > 0).astype(np.uint8))
    _interrupted_at_second_net(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(
            [str(small_sample)], folder, labels=[str(two)], phases=["pore", "solid"],
            models=["cheap", "expensive"], steps=1, batch=2, patch=64,
        )  # fmt: skip
    assert _files(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "w"]
    # not interrupted: the net trained is replaced, the others kept, the selector dropped (it
    # chose by the replaced net's gains) and said so, under the folder's own name
    monkeypatch.undo()
    caplog.set_level("WARNING", logger="matseg.training")
    train([str(small_sample)], folder, models=["cheap"], steps=1, batch=2, patch=64)
    after = _files(folder)
    assert after["expensive.pt"] == before["expensive.pt"] and after["cheap.pt"] != before["cheap.pt"]
    assert "selector.pt" not in after and "selector" not in json.loads(after["manifest.json"])
    assert f"{folder}: its selector was trained for the segmenters replaced now" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "w"]


def test_validation_labels_that_name_other_phases_are_refused(tmp_path, small_sample, capsys):
    """Four training phases against a --val sample that names three others (value 1 is
    carbon-binder there, binder here): refused before training, not scored as binder 0.000.
    A --val that names the training phases for its values (a sample without active-b) is taken."""
    four = _labels(tmp_path, small_sample, lambda t: np.where((t == 2) & (np.arange(64) < 32), 3, t))
    args = ["train", small_sample, "--labels", four, "--val", small_sample, *QUICK, "--steps", "1"]
    code = run([*args, "--phases", "pore,binder,active,active-b", "-o", tmp_path / "w"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--val" in err and "carbon-binder" in err and "pore, binder, active, active-b" in err
    assert not (tmp_path / "w").exists()
    assert run([*args, "--phases", "pore,carbon-binder,active,active-b", "-o", tmp_path / "w"]) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [(256, "hold the value 256: label values are phases"), (-1, "the value -1"), (None, "label no voxel")],
    ids=["256", "negative", "none-labelled"],
)
def test_labels_beyond_one_byte_or_none_at_all_are_refused(tmp_path, small_sample, capsys, value, message):
    """16-bit labels holding 256 or -1 were wrapped into phases (256 -> 0, -1 -> 255); labels
    all 255 were told to have one phase: one line each, exit 2, no weights written."""
    import tifffile

    truth = zarr.open_group(str(small_sample), mode="r")["labels/truth/0"][:].astype(np.int16)
    if value is None:
        truth[:] = 255
    else:
        truth[:, :5, :5] = value
    tifffile.imwrite(tmp_path / "labels.tif", truth)
    args = ["train", small_sample, "--labels", tmp_path / "labels.tif", *QUICK, "--steps", "1"]
    assert run([*args, "-o", tmp_path / "w"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_val_without_labels_and_blank_phase_names_are_said_as_such(tmp_path, small_sample, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "val.tif", zarr.open_group(str(small_sample), mode="r")["0"][:])
    base = ["train", small_sample, *QUICK, "--steps", "1", "-o", tmp_path / "w"]
    assert run([*base, "--val", tmp_path / "val.tif"]) == 2
    err = capsys.readouterr().err
    assert "a volume given with --val needs labels of its own" in err and "with --labels" not in err
    assert run([*base, "--phases", " "]) == 2
    assert "give at least 2 distinct, non-empty names" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
