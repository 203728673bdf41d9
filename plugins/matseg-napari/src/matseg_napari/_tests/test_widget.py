"""The dock widget, driven as a user would: segment, cancel, review, correct, retrain."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import zarr

import matseg
from matseg.candidates.fit import ADVICE as FIT_ADVICE
from matseg.metrics import confusion_matrix, summarize
from matseg_napari import _review as review_module
from matseg_napari._widget import MatsegWidget

RUN_TIMEOUT_MS = 240_000


def click(button):
    button.native.click()


def segment_with(qtbot, widget, image, weights, output, model="cheap", tile=(4, 32)):
    panel = widget.segment
    panel.reset_choices()
    panel.image.value = image
    panel.model.value = model
    panel.tile_z.value, panel.tile_yx.value = tile
    panel.weights.value = weights
    panel.output.value = output
    click(panel.run_button)
    qtbot.waitUntil(lambda: panel.run_button.enabled, timeout=RUN_TIMEOUT_MS)


def miou(pred, truth) -> float:
    phases = ("pore", "carbon-binder", "active")
    return summarize(confusion_matrix(da.from_array(pred), da.from_array(truth), 3), phases)["miou"]


def test_segment_runs_in_the_background_and_opens_the_result(
    qtbot, viewer_and_widget, sample, weights, tmp_path
):
    viewer, widget = viewer_and_widget
    viewer.open(str(sample), plugin="matseg-napari")
    assert [layer.name for layer in viewer.layers] == ["cathode", "cathode labels"]
    output = tmp_path / "cathode-phases.zarr"
    progress = []
    panel = widget.segment
    panel.reset_choices()
    panel.image.value = viewer.layers["cathode"]
    assert panel.output.value.name == "cathode-phases.zarr"  # suggested beside the image
    panel.model.value, panel.tile_z.value, panel.tile_yx.value = "cheap", 4, 32
    panel.weights.value, panel.output.value = weights, output
    click(panel.run_button)
    assert not panel.run_button.enabled and panel.cancel_button.enabled  # returned at once: a worker runs it
    panel.worker.yielded.connect(progress.append)
    qtbot.waitUntil(lambda: panel.run_button.enabled, timeout=RUN_TIMEOUT_MS)

    assert panel.status.value == "done: cathode-phases.zarr", panel.status.value
    assert panel.progress.value == 100
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "cathode",
        "cathode labels",
        "cathode-phases uncertainty",
        "cathode-phases phases",
        "cathode-phases decisions",
    ]
    phases = viewer.layers["cathode-phases phases"]
    assert phases.metadata["matseg"]["weights"] == str(weights)
    report = matseg.open_segmentation(output).report
    assert report["models"][0]["name"] == "cheap"
    assert panel.cost.value.startswith(f"GFLOPs spent: {report['gflops']:,.2f} = ")
    assert "% of all-expensive" in panel.cost.value
    # the review panel picked up the new phases layer and ranked its tiles
    assert widget.review.layer.value is phases
    qtbot.waitUntil(lambda: len(widget.review.queue) == 8, timeout=30_000)


def test_cost_control_becomes_segment_keywords(viewer_and_widget, sample, tmp_path):
    viewer, widget = viewer_and_widget
    viewer.open(str(sample), plugin="matseg-napari")
    panel = widget.segment
    panel.reset_choices()
    panel.image.value = viewer.layers["cathode"]
    panel.output.value = tmp_path / "out.zarr"
    panel.model.value = "auto"
    assert panel.cost_mode.enabled and not panel.cost_value.enabled  # the selector's own λ
    task, output = panel.task()
    assert task.function is matseg.segment and output == tmp_path / "out.zarr"
    source, out, settings = task.args
    assert (source, out) == (str(sample), tmp_path / "out.zarr") and settings.model == "auto"
    assert settings.lam is settings.budget_gflops is settings.max_expensive_fraction is None
    panel.cost_mode.value = "λ (higher spends less)"
    panel.cost_value.value = 0.3
    assert panel.task()[0].args[2].lam == pytest.approx(0.3)
    panel.cost_mode.value = "GFLOP budget"
    panel.cost_value.value = 50
    settings = panel.task()[0].args[2]
    assert settings.budget_gflops == 50 and settings.lam is None
    panel.model.value = "cheap"  # one candidate everywhere: nothing to trade
    assert not panel.cost_mode.enabled and panel.task()[0].args[2].budget_gflops is None
    panel.model.value = "auto"  # back: the budget the user gave is kept
    assert panel.cost_value.enabled and panel.task()[0].args[2].budget_gflops == 50
    panel.audit.value = "an earlier run's audit"
    panel.image.value = None
    panel.run()  # refused (no image): the last run's cost and audit lines go with it
    assert panel.status.value.startswith("choose an image") and panel.audit.value == panel.cost.value == ""


def test_cancel_stops_the_run_and_segment_again_resumes_it(qtbot, viewer_and_widget, weights, tmp_path):
    viewer, widget = viewer_and_widget
    volume = tmp_path / "big.zarr"
    data = np.random.default_rng(0).normal(100, 20, (64, 256, 256)).astype(np.float32)
    zarr.create_array(str(volume), shape=data.shape, chunks=(8, 256, 256), dtype=data.dtype)[:] = data
    viewer.open(str(volume), plugin="matseg-napari")
    output = tmp_path / "big-phases.zarr"
    panel = widget.segment
    panel.reset_choices()
    panel.image.value = viewer.layers["big"]
    panel.model.value, panel.tile_z.value, panel.tile_yx.value = "expensive", 4, 64
    panel.weights.value, panel.output.value = weights, output
    click(panel.run_button)

    def segmenting() -> bool:  # tiles finished, not only the intensity pass before them
        return panel.status.value.startswith("single model") and panel.progress.value > 0

    qtbot.waitUntil(segmenting, timeout=RUN_TIMEOUT_MS)
    clicked = time.perf_counter()
    click(panel.cancel_button)
    qtbot.waitUntil(lambda: panel.run_button.enabled, timeout=30_000)
    assert time.perf_counter() - clicked < 15  # stopped at a tile boundary, not at the end
    assert panel.status.value.startswith("cancelled"), panel.status.value
    assert [layer.name for layer in viewer.layers] == ["big"]
    with pytest.raises(matseg.MatsegError):
        matseg.open_segmentation(output)  # no finished output: the tiles done are kept to resume

    click(panel.run_button)  # the same settings again: only the missing tiles are computed
    qtbot.waitUntil(lambda: panel.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert panel.status.value == "done: big-phases.zarr", panel.status.value
    report = matseg.open_segmentation(output).report
    assert report["run"]["started_as"] == "resume"
    assert 0 < report["run"]["computed_tiles"]["tiles"] < 256


def test_closing_the_matseg_dock_cancels_its_run(qtbot, make_napari_viewer, weights, tmp_path):
    """The dock's close button un-parents the whole matseg widget (not the Segment panel inside
    it): the run stops at a tile and its result is not opened into the viewer."""
    viewer = make_napari_viewer()
    widget = MatsegWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="matseg")
    volume = tmp_path / "big.zarr"
    data = np.random.default_rng(0).normal(100, 20, (64, 256, 256)).astype(np.float32)
    zarr.create_array(str(volume), shape=data.shape, chunks=(8, 256, 256), dtype=data.dtype)[:] = data
    viewer.open(str(volume), plugin="matseg-napari")
    panel = widget.segment
    panel.reset_choices()
    panel.image.value = viewer.layers["big"]
    panel.model.value, panel.tile_z.value, panel.tile_yx.value = "expensive", 4, 64
    panel.weights.value, panel.output.value = weights, tmp_path / "big-phases.zarr"
    click(panel.run_button)
    qtbot.waitUntil(lambda: panel.status.value.startswith("single model"), timeout=RUN_TIMEOUT_MS)
    task = panel._task
    dock.title.close_button.click()  # the dock's x
    qtbot.waitUntil(lambda: not panel.worker.is_running, timeout=60_000)
    assert task.cancelled and panel.closed
    assert [layer.name for layer in viewer.layers] == ["big"]


def test_review_queue_orders_tiles_and_moves_the_camera(qtbot, viewer_and_widget, segmented):
    viewer, widget = viewer_and_widget
    viewer.open(str(segmented), plugin="matseg-napari")
    phases = viewer.layers["cathode-phases phases"]
    review = widget.review
    review.select(phases)
    qtbot.waitUntil(lambda: len(review.queue) == 8, timeout=30_000)

    uncertainty = matseg.open_segmentation(segmented).uncertainty.compute()
    means = {
        (z, y, x): uncertainty[4 * z : 4 * z + 4, 32 * y : 32 * y + 32, 32 * x : 32 * x + 32].mean() / 255
        for z in range(2)
        for y in range(2)
        for x in range(2)
    }
    expected = sorted(means, key=lambda k: -means[k])
    assert [tile.index for tile in review.queue] == expected
    assert np.allclose([tile.mean_uncertainty for tile in review.queue], [means[k] for k in expected])

    click(review.next_button)
    first = review.queue[0]
    z, y, x = first.index
    assert review.current == 0
    assert viewer.dims.point[0] == pytest.approx(round(4 * z + 1.5))
    assert tuple(viewer.camera.center[-2:]) == pytest.approx((32 * y + 15.5, 32 * x + 15.5))
    outline = viewer.layers[review_module.REVIEW_LAYER].data[0]
    assert outline[:, 0].min() == pytest.approx(32 * y - 0.5) and outline[:, 1].max() == pytest.approx(
        32 * x + 31.5
    )
    assert "1/8" in review.position.value

    click(review.next_button)
    assert review.current == 1
    click(review.previous_button)
    assert review.current == 0
    click(review.mark_button)
    assert review.reviewed == {first.index} and review.current == 1
    assert review.reviewed_label.value.startswith("1 of 8")


def test_corrections_are_saved_beside_the_output_and_reload(
    qtbot, viewer_and_widget, segmented, sample, monkeypatch
):
    viewer, widget = viewer_and_widget
    viewer.open(str(segmented), plugin="matseg-napari")
    phases = viewer.layers["cathode-phases phases"]
    review = widget.review
    review.select(phases)
    qtbot.waitUntil(lambda: len(review.queue) == 8, timeout=30_000)
    click(review.next_button)
    click(review.mark_button)

    original = matseg.open_segmentation(segmented).phases.compute()
    truth = matseg.open_volume(sample, labels=True).data.compute()
    z = 2
    differs = np.nonzero(original[z] != truth[z])
    assert differs[0].size > 0
    indices = (np.full(differs[0].size, z), *differs)
    phases.data_setitem(indices, truth[indices])  # what napari's paint and fill tools call
    phases.selected_label = 1
    phases.brush_size = 3
    phases.paint((5, 40, 40), 1)  # and one real brush stroke
    expected = original.copy()
    expected[indices] = truth[indices]
    expected[5, 39:42, 39:42][np.asarray(phases.data[5, 39:42, 39:42]) == 1] = 1

    click(review.save_button)
    qtbot.waitUntil(lambda: review.status.value.startswith("saved"), timeout=60_000)
    store = matseg.corrections_path(segmented)
    assert store.name == "cathode-phases.corrections.zarr" and store.parent == segmented.parent
    corrections = matseg.load_corrections(store)
    corrected = corrections.labels.compute()
    assert np.array_equal(corrected, np.asarray(phases.data))
    assert np.array_equal(corrected[z], truth[z])
    assert np.array_equal(corrections.mask.compute(), (corrected != original).astype(np.uint8))
    assert corrections.corrected_slices == [2, 5]
    assert corrections.reviewed == [review.queue[0].index]
    assert np.array_equal(matseg.open_segmentation(segmented).phases.compute(), original)  # untouched

    # the same session saves again: the store is updated without a question
    monkeypatch.setattr(review_module, "confirm", lambda *a: pytest.fail("asked within the same session"))
    phases.paint((7, 10, 10), 2)
    click(review.save_button)
    qtbot.waitUntil(
        lambda: review.status.value.startswith("saved") and review.save_button.enabled, timeout=60_000
    )
    assert 7 in matseg.load_corrections(store).corrected_slices

    # reloading the store brings the corrected labels back, and continues its session
    viewer.open(str(store), plugin="matseg-napari")
    reloaded = viewer.layers["cathode-phases corrected phases"]
    assert np.array_equal(np.asarray(reloaded.data), np.asarray(phases.data))
    assert reloaded.metadata["matseg"]["session"] == review.session

    # another session is asked before it replaces the store; "No" leaves it alone
    other = MatsegWidget(viewer)
    other.review.select(phases)
    monkeypatch.setattr(review_module, "confirm", lambda *a: False)
    click(other.review.save_button)
    assert other.review.status.value.startswith("not saved")
    assert matseg.load_corrections(store).attrs["session"] == review.session
    # ... also after it looked at the reloaded store: going back to the plain layer, its saving
    # is its own session's again (it took the store's over, and replaced the corrections unasked)
    other.review.select(reloaded)
    other.review.select(phases)
    click(other.review.save_button)
    assert other.review.status.value.startswith("not saved")
    assert 7 in matseg.load_corrections(store).corrected_slices


def test_retrain_from_corrections_raises_iou(qtbot, viewer_and_widget, sample, weights, tmp_path):
    """The whole loop: segment, correct two slices to the truth, fine-tune, segment again."""
    viewer, widget = viewer_and_widget
    viewer.open(str(sample), plugin="matseg-napari")
    image = viewer.layers["cathode"]
    segment_with(qtbot, widget, image, weights, tmp_path / "phases.zarr")
    assert widget.segment.status.value.startswith("done"), widget.segment.status.value
    phases = viewer.layers["phases phases"]

    truth = matseg.open_volume(sample, labels=True).data.compute()
    before = np.asarray(phases.data).copy()
    slices = [1, 6]
    for z in slices:
        differs = np.nonzero(before[z] != truth[z])
        indices = (np.full(differs[0].size, z), *differs)
        phases.data_setitem(indices, truth[indices])
    click(widget.review.save_button)
    qtbot.waitUntil(lambda: widget.review.status.value.startswith("saved"), timeout=60_000)

    retrain = widget.retrain
    retrain.steps.value = 100
    retrain.weights_out.value = tmp_path / "tuned"
    click(retrain.run_button)
    qtbot.waitUntil(lambda: retrain.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert retrain.status.value.startswith("cheap: mIoU "), retrain.status.value
    assert "worse" not in retrain.status.value
    click(retrain.use_button)
    assert widget.segment.weights.value == tmp_path / "tuned"
    assert widget.segment.output.value.name == "phases-finetuned.zarr"

    click(widget.segment.run_button)
    qtbot.waitUntil(lambda: widget.segment.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    after = np.asarray(viewer.layers["phases-finetuned phases"].data)
    iou_before, iou_after = miou(before[slices], truth[slices]), miou(after[slices], truth[slices])
    print(f"mIoU on the corrected slices: {iou_before:.4f} -> {iou_after:.4f}")
    assert iou_after >= iou_before + 0.05


def test_the_audit_line_says_the_estimate_the_moves_the_fill_and_the_fit():
    from matseg_napari._widget import audit_text

    estimate = {
        "delta_miou": -0.019, "ci95": [-0.029, -0.005], "audited_fraction": 0.03, "audited_cells": 62,
        "reference": "expensive", "recalibrated_lambda": 0.1, "moved_tiles": {"cheap->medium": 2},
        "every_tile": "medium",
    }  # fmt: skip
    fit = {
        "fits": False,
        "distance": 1.4,
        "threshold": 1.0,
        "advice": "start label-free with --model classical",
    }
    fill = {"value": 0.0, "share": 0.31, "end": "minimum"}
    lines = audit_text({"estimate": estimate, "fit": fit, "normalization": {"fill": fill}}).splitlines()
    assert lines[0] == (
        "estimate: vs all-expensive: −0.019 mIoU (95 % −0.029 … −0.005), "
        "3.0 % of the other cells audited (62)"
    )
    assert (
        lines[1]
        == "recalibrated at λ 0.1: the audit moved tiles cheap → medium 2: every tile now runs medium"
    )
    assert lines[2].startswith("fill: 31 % of the voxels hold one value, 0 (the volume's minimum)")
    assert lines[3].startswith("fit: UNLIKE the weights' training data (distance 1.40 > 1)")
    assert audit_text({"gflops": 1.0}) == ""  # one model on every tile: no audit


def test_matseg_messages_name_the_panels_controls_not_command_line_options(viewer_and_widget):
    """A message of matseg's names its command-line options; the panels say their own controls."""
    _, widget = viewer_and_widget
    advice = matseg.describe_fit({"fits": False, "distance": 2.0, "threshold": 1.0, "advice": FIT_ADVICE})
    said = widget.segment.in_words(advice)
    assert "--" not in said and "'model' classical" in said and "'Fine-tune from corrections'" in said, said
    said = widget.segment.in_words("--lambda must be between 0 and 1, got 2")
    assert said == "'cost control: λ' must be between 0 and 1, got 2"
    said = widget.retrain.in_words("give --steps and --lr above 0; --cluster is not known here")
    assert said == "give 'steps' and 'learning rate' above 0; --cluster is not known here"


def test_segmenting_an_open_output_again_replaces_its_layers(
    qtbot, viewer_and_widget, sample, weights, tmp_path
):
    """A second run into an output whose layers are open replaces them (no stale layer reading the
    new store under the old run's metadata, no duplicates); with corrections painted and not
    saved on them, the run is refused and nothing changes."""
    viewer, widget = viewer_and_widget
    viewer.open(str(sample), plugin="matseg-napari")
    image = viewer.layers["cathode"]
    output = tmp_path / "again-phases.zarr"
    segment_with(qtbot, widget, image, weights, output, model="cheap")
    names = [layer.name for layer in viewer.layers]
    segment_with(qtbot, widget, image, weights, output, model="expensive", tile=(4, 64))  # no overwrite
    status = widget.segment.status.value
    assert "tick 'overwrite output' to replace it" in status and "--" not in status, status
    widget.segment.overwrite.value = True
    segment_with(qtbot, widget, image, weights, output, model="expensive", tile=(4, 64))
    assert widget.segment.status.value == "done: again-phases.zarr", widget.segment.status.value
    assert [layer.name for layer in viewer.layers] == names
    phases = [layer for layer in viewer.layers if layer.metadata.get("matseg", {}).get("role") == "phases"]
    assert len(phases) == 1 and phases[0].metadata["matseg"]["report"]["model"] == "expensive"
    phases[0].data[0, 0, 0] = (int(phases[0].data[0, 0, 0]) + 1) % 3  # a correction, not saved
    before = matseg.open_segmentation(output).report
    click(widget.segment.run_button)
    assert "corrections not saved" in widget.segment.status.value
    assert matseg.open_segmentation(output).report == before


def test_an_image_made_in_napari_is_segmented_as_it_is_now(qtbot, viewer_and_widget, weights, tmp_path):
    """Its copy beside the output is saved again at every run: a changed layer (or another
    layer into the same output) is not segmented from what an earlier run saved."""
    viewer, widget = viewer_and_widget
    rng = np.random.default_rng(0)
    first, second = (rng.normal(100, 20, (4, 64, 64)).astype(np.float32) for _ in range(2))
    layer = viewer.add_image(first, name="made")
    output = tmp_path / "made-phases.zarr"
    segment_with(qtbot, widget, layer, weights, output)
    assert widget.segment.status.value == "done: made-phases.zarr", widget.segment.status.value
    copy = tmp_path / "made-phases.input.zarr"
    np.testing.assert_array_equal(zarr.open_array(str(copy), mode="r")[:], first)
    layer.data = second
    widget.segment.overwrite.value = True
    segment_with(qtbot, widget, layer, weights, output)
    assert widget.segment.status.value == "done: made-phases.zarr", widget.segment.status.value
    np.testing.assert_array_equal(zarr.open_array(str(copy), mode="r")[:], second)
    fresh = matseg.segment(
        str(copy), tmp_path / "fresh.zarr", model="cheap", weights=weights, tile=(4, 32, 32)
    )
    assert fresh["volume_fractions"] == matseg.open_segmentation(output).report["volume_fractions"]


def test_a_ranking_for_a_layer_no_longer_chosen_is_dropped(qtbot, viewer_and_widget, segmented):
    """Two outputs picked one after the other: the first's ranking, if it ends last, is not
    taken for the second's queue (it showed 512 tiles for an output of 8)."""
    viewer, widget = viewer_and_widget
    viewer.open(str(segmented), plugin="matseg-napari")
    review = widget.review
    review.select(viewer.layers["cathode-phases phases"])
    qtbot.waitUntil(lambda: bool(review.queue), timeout=60_000)
    ranked = list(review.queue)
    review._ranked(ranked * 3, str(segmented.parent / "another-output.zarr"))
    assert review.queue == ranked


def test_a_ranking_that_fails_is_said_not_raised(qtbot, viewer_and_widget, segmented, tmp_path):
    """The output can go while its tiles are ranked (segmented again with overwrite): the status
    says so; nothing is raised in Qt's event loop (pytest-qt fails a test on that)."""
    import shutil

    viewer, widget = viewer_and_widget
    copy = tmp_path / "gone.zarr"
    shutil.copytree(segmented, copy)
    viewer.open(str(copy), plugin="matseg-napari")
    layer = viewer.layers["gone phases"]
    shutil.rmtree(copy)
    review = widget.review
    review._layer_changed(layer)
    qtbot.waitUntil(lambda: review.status.value.startswith("cannot rank tiles"), timeout=60_000)


def test_a_region_output_lies_over_its_box_of_the_image(qtbot, viewer_and_widget, sample, weights, tmp_path):
    """A --region output opens translated onto the box of the image it was cut from, and the
    review moves the camera and the outline to its tiles there, not to the image's corner."""
    out = tmp_path / "box.zarr"
    matseg.segment(sample, out, model="cheap", weights=weights, tile=(4, 32, 32), region="4:8,16:48,32:64")
    viewer, widget = viewer_and_widget
    viewer.open(str(out), plugin="matseg-napari")
    image = viewer.layers["cathode"]
    phases = viewer.layers["box phases"]
    assert tuple(image.translate) == (0, 0, 0) and image.data.shape[-2:] == (64, 64)
    for name in ("box phases", "box decisions", "box uncertainty"):
        assert tuple(viewer.layers[name].translate) == (4, 16, 32), name
    review = widget.review
    review.select(phases)
    qtbot.waitUntil(lambda: len(review.queue) == 1, timeout=30_000)
    click(review.next_button)
    assert viewer.dims.point[0] == pytest.approx(4 + round(1.5))
    assert tuple(viewer.camera.center[-2:]) == pytest.approx((16 + 15.5, 32 + 15.5))
    outline = viewer.layers[review_module.REVIEW_LAYER]
    assert tuple(outline.translate) == (16, 32)
    # the outline over the box's tile: its corner in world coordinates at the box's corner
    assert tuple(outline.data_to_world(outline.data[0].min(axis=0))) == pytest.approx((15.5, 31.5))
