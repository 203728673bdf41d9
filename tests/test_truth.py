"""Scoring against a truth: its phases matched with the run's by name where it names them,
by label value (and said so) where it does not."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import matseg
from matseg.pipeline.report import score_labels

from .conftest import run
from .test_bad_input import assert_refused

SAMPLE_PHASES = ("pore", "carbon-binder", "active")  # the sample's truth: values 0, 1, 2


def _truth(sample) -> np.ndarray:
    return matseg.open_volume(sample, labels=True).data.compute()


def test_named_truth_is_matched_by_name(small_sample):
    truth = _truth(small_sample)
    pred = truth.copy()
    pred[:, :8] = (pred[:, :8] + 1) % 3  # some errors, so every IoU differs
    in_order = score_labels(da.from_array(pred, chunks=(8, 64, 64)), small_sample, SAMPLE_PHASES)
    # the same labels written with the phases in another order (active 0, carbon-binder 1, pore 2)
    reordered = score_labels(
        da.from_array((2 - pred).astype(np.uint8), chunks=(8, 64, 64)), small_sample, SAMPLE_PHASES[::-1]
    )
    assert reordered["iou"] == in_order["iou"] != {}
    assert reordered["miou"] == in_order["miou"] < 1
    assert reordered["truth_match"]["by"] == "name"
    assert reordered["truth_match"]["truth_phases"] == list(SAMPLE_PHASES)


def test_truth_named_otherwise_is_refused(tmp_path, small_sample, capsys):
    out = tmp_path / "out.zarr"
    args = ["segment", small_sample, "-o", out, "--model", "classical", "--phases", "a,b,c"]
    assert_refused(tmp_path, [*args, "--truth", small_sample], capsys, "pore, carbon-binder, active")
    assert not out.exists()


def test_unnamed_truth_is_matched_by_value_and_says_so(tmp_path, small_sample, capsys):
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, _truth(small_sample))  # a TIFF names no phases
    out = tmp_path / "out.zarr"
    args = ["segment", small_sample, "-o", out, "--model", "classical", "--phases", "p,c,a"]
    assert run([*args, "--truth", labels]) == 0
    summary = capsys.readouterr()
    report = json.loads((out / "matseg-report.json").read_text())
    assert report["metrics"]["truth_match"]["by"] == "value"
    note = report["metrics"]["truth_match"]["note"]
    assert "truth has no phase names" in note and "0 p, 1 c, 2 a" in note
    assert (summary.out + summary.err).count(note) == 1


def test_phase_absent_from_truth_is_marked_not_scored(tmp_path, small_sample):
    truth = _truth(small_sample)
    two = (truth > 0).astype(np.uint8)  # a 2-value truth: 0 pore, 1 solid
    labels = tmp_path / "two.zarr"
    zarr.create_array(str(labels), shape=two.shape, chunks=(8, 64, 64), dtype="uint8")[:] = two
    pred = two.copy()
    pred[:, :4] = 2  # the run's third phase, which the truth does not hold
    metrics = score_labels(da.from_array(pred, chunks=(8, 64, 64)), labels, ("a", "b", "c"))
    assert metrics["absent_from_truth"] == ["c"]
    assert metrics["iou"]["c"] is None
    assert metrics["miou"] == np.mean([metrics["iou"]["a"], metrics["iou"]["b"]]) > 0.5


def test_evaluate_tile_table_matches_a_named_truth_by_name(tmp_path, small_sample, random_weights):
    """``matseg evaluate`` scores its tiles against a truth that names its phases in another
    order exactly as against the sample's own truth."""
    from matseg.candidates.registry import Context
    from matseg.models.store import load_segmenter
    from matseg.selector.table import tile_table

    reordered = tmp_path / "reordered.zarr"  # active 0, carbon-binder 1, pore 2
    array = zarr.create_array(str(reordered), shape=(16, 64, 64), chunks=(8, 64, 64), dtype="uint8")
    array[:] = 2 - _truth(small_sample)
    array.attrs["matseg"] = {"phases": list(SAMPLE_PHASES[::-1])}
    context = Context({"cheap": load_segmenter("cheap", random_weights)})
    args = (context, ("cheap", "classical"), (8, 64, 64), 16)
    own = tile_table(str(small_sample), None, context, *args[1:])
    named = tile_table(str(small_sample), str(reordered), context, *args[1:])
    np.testing.assert_array_equal(named["confusion"], own["confusion"])


def test_evaluate_sweep_leaves_a_phase_absent_from_the_truth_out_of_the_miou(
    tmp_path, small_sample, random_weights
):
    """As real runs (``summarize``): a phase the truth does not hold has no IoU, rather than 0."""
    from matseg.console import format_evaluation
    from matseg.evaluate import evaluate

    two = tmp_path / "two.zarr"  # 0 pore, 1 carbon-binder: no value of the sample's 'active'
    array = zarr.create_array(str(two), shape=(16, 64, 64), chunks=(8, 64, 64), dtype="uint8")
    array[:] = np.minimum(_truth(small_sample), 1)
    result = evaluate(
        [str(small_sample)], tmp_path / "eval", truths=[str(two)], weights=random_weights,
        lambdas=(0.0, 1.0), tile=(8, 64, 64), real_run=False,
    )  # fmt: skip
    points = [result["all_cheap"], result["all_expensive"]]
    points += [row[m] for row in result["sweep"] for m in ("selector", "cascade", "oracle")]
    for point in points:
        pore, binder, active = point["iou"]
        assert active is None and point["miou"] == pytest.approx((pore + binder) / 2)
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["all_cheap"]["iou"][2] is None and saved["absent_from_truth"] == ["active"]
    assert "absent from the truth, so in no mIoU (as in real runs): active" in format_evaluation(result)


def _unnamed_reversed(tmp_path, sample):
    """The sample's truth with its values reversed (0 active, 1 carbon-binder, 2 pore), as a TIFF
    (which names no phases)."""
    path = tmp_path / "reversed.tif"
    tifffile.imwrite(path, (2 - _truth(sample)).astype(np.uint8))
    return path


def test_truth_phases_name_an_unnamed_truth(tmp_path, small_sample, capsys):
    """--truth-phases names the truth's values 0, 1, 2: it is matched by name, as the sample's own
    named truth is, and no 'compared by value' note is said."""
    out = tmp_path / "out.zarr"
    args = ["segment", small_sample, "-o", out, "--model", "classical", "--phases", ",".join(SAMPLE_PHASES)]
    truth = _unnamed_reversed(tmp_path, small_sample)
    assert run([*args, "--truth", truth, "--truth-phases", "active,carbon-binder,pore"]) == 0
    said = capsys.readouterr()
    metrics = json.loads((out / "matseg-report.json").read_text())["metrics"]
    match = metrics["truth_match"]
    assert match["by"] == "name" and match["named_by"] == "--truth-phases" and "note" not in match
    assert match["values"] == [2, 1, 0] and "no phase names" not in said.out + said.err
    own = score_labels(zarr.open_group(str(out), mode="r")["labels/phases/0"], small_sample, SAMPLE_PHASES)
    assert metrics["iou"] == own["iou"] and metrics["miou"] == own["miou"] > 0
    assert run([*args, "--truth", truth]) == 0  # the finished run, scored anew: by value now
    assert "truth has no phase names" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--truth", "TRUTH", "--truth-phases", "pore,active"], "2 names for the run's 3 phases"),
        (["--truth", "TRUTH", "--truth-phases", "pore,binder,active"], "binder is not one of the run's"),
        (["--truth", "TRUTH", "--truth-phases", "pore,pore,active"], "names pore twice"),
        (["--truth", "TRUTH", "--truth-phases", "pore,,active"], "give names separated by commas"),
        (["--truth-phases", "pore,carbon-binder,active"], "give the truth too"),
        (["--truth", "SAMPLE", "--truth-phases", "active,carbon-binder,pore"], "drop --truth-phases"),
    ],
)
def test_bad_truth_phases_are_refused_up_front(tmp_path, small_sample, capsys, extra, says):
    truth = _unnamed_reversed(tmp_path, small_sample)
    extra = [{"TRUTH": truth, "SAMPLE": small_sample}.get(a, a) for a in extra]
    args = ["segment", small_sample, "-o", tmp_path / "out.zarr", "--model", "classical"]
    assert_refused(tmp_path, [*args, "--phases", ",".join(SAMPLE_PHASES), *extra], capsys, says)


def test_evaluate_takes_truth_phases(tmp_path, small_sample, random_weights, capsys):
    """evaluate's tile table matches an unnamed truth named by --truth-phases by name; wrong names
    are refused before its output folder exists."""
    from matseg.candidates.registry import Context
    from matseg.models.store import load_segmenter
    from matseg.selector.table import tile_table

    truth = _unnamed_reversed(tmp_path, small_sample)
    context = Context({"cheap": load_segmenter("cheap", random_weights)})
    args = (context, ("cheap", "classical"), (8, 64, 64), 16)
    own = tile_table(str(small_sample), None, *args)
    named = tile_table(str(small_sample), str(truth), *args, truth_phases=SAMPLE_PHASES[::-1])
    np.testing.assert_array_equal(named["confusion"], own["confusion"])
    evaluate = ["evaluate", small_sample, "-o", tmp_path / "eval", "--weights", random_weights]
    assert_refused(
        tmp_path,
        [*evaluate, "--truth", truth, "--truth-phases", "a,b,c"],
        capsys,
        "a, b, c are none of the run",
    )
    assert_refused(
        tmp_path, [*evaluate, "--truth-phases", ",".join(SAMPLE_PHASES)], capsys, "give the truths"
    )


@pytest.mark.parametrize(
    ("values", "said"),
    [((-5, -1), "from -5: is it"), ((7, 9), "up to 9: is it"), ((-3, 9), "from -3 up to 9")],
)
def test_labels_outside_the_phases_are_named_by_their_values(values, said):
    """Negative values were said as 'up to 0'."""
    from matseg.validate import check_label_values

    labels = np.array([0, 1, 2, *values], np.int16)
    with pytest.raises(matseg.MatsegError, match=f"2 voxels with values outside the 3 phases .*{said}"):
        check_label_values(labels, 3, "t.tif", "--truth")
    with pytest.raises(matseg.MatsegError, match=said):
        check_label_values(da.from_array(labels, chunks=2), 3, "t.tif", "--truth")
