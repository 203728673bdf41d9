"""What a user walking through the dock saw: messages read whole, layers that belong together."""

from __future__ import annotations

import matseg
from matseg.candidates.fit import ADVICE as FIT_ADVICE
from matseg_napari._retrain import NOTHING_TO_RETRAIN
from matseg_napari._review import REVIEW_LAYER
from matseg_napari._tests.test_widget import click, segment_with
from matseg_napari._widget import audit_text


def long_audit() -> str:
    """An audit that moved tiles between many candidates, on a volume unlike the weights' data."""
    moves = {f"{a}->{b}": n for n, (a, b) in enumerate(
        [("cheap", "medium"), ("cheap", "expensive"), ("medium", "expensive"), ("medium", "cheap"),
         ("expensive", "medium"), ("expensive-2x", "expensive"), ("cheap", "expensive-2x")], start=2
    )}  # fmt: skip
    estimate = {
        "delta_miou": -0.019, "ci95": [-0.029, -0.005], "audited_fraction": 0.03, "audited_cells": 62,
        "reference": "expensive", "recalibrated_lambda": 0.1, "moved_tiles": moves, "every_tile": None,
    }  # fmt: skip
    fit = {"fits": False, "distance": 2.0, "threshold": 1.0, "advice": FIT_ADVICE}
    return audit_text({"estimate": estimate, "fit": fit})


def test_a_long_audit_line_is_shown_whole_and_shrinks_again(qtbot, viewer_and_widget):
    """The audit of a selector run ran to a dozen lines and was cut off at the bottom: the label
    kept the height Qt guessed for a wider panel. It grows to its text, and shrinks back."""
    viewer, widget = viewer_and_widget
    viewer.window.show()  # laid out at the dock's real width
    panel = widget.segment
    label = panel.audit.native

    def whole() -> bool:
        return label.height() >= label.heightForWidth(label.width())

    panel.audit.value = panel.in_words(long_audit())
    qtbot.waitUntil(lambda: label.isVisible() and label.width() > 0, timeout=5_000)
    assert label.heightForWidth(label.width()) > 12 * label.fontMetrics().height()  # what was cut
    qtbot.waitUntil(whole, timeout=5_000)
    panel.audit.value = "one line"
    qtbot.waitUntil(lambda: label.height() < 3 * label.fontMetrics().height(), timeout=5_000)
    panel.status.value = panel.in_words(long_audit())  # the other messages the same way
    qtbot.waitUntil(lambda: panel.status.native.height() > 12 * label.fontMetrics().height(), timeout=5_000)
    # and not by narrowing the dock below its contents (Qt's height-for-width policy did: the
    # right edge of every control was cut off)
    dock = widget.native.parentWidget()
    assert dock.width() >= widget.native.width(), (dock.width(), widget.native.width())


def test_opening_corrections_or_an_output_reuses_the_open_image(make_napari_viewer, segmented, sample):
    """Opening a corrections store (or an output) next to the image it was made from added that
    image a second time (``cathode [1]``); the image already open is used, and one not open yet
    comes along."""
    labels = matseg.open_segmentation(segmented).phases.compute()
    store = matseg.save_corrections(segmented, labels, session="s1")
    viewer = make_napari_viewer()
    viewer.open(str(sample), plugin="matseg-napari")
    viewer.open(str(segmented), plugin="matseg-napari")
    viewer.open(str(store), plugin="matseg-napari")
    assert [layer.name for layer in viewer.layers] == [
        "cathode",
        "cathode labels",
        "cathode-phases uncertainty",
        "cathode-phases phases",
        "cathode-phases decisions",
        "cathode-phases corrected phases",
        "cathode-phases corrections mask",
    ]
    elsewhere = make_napari_viewer()  # a viewer without the image: the store brings it
    elsewhere.open(str(store), plugin="matseg-napari")
    assert [layer.name for layer in elsewhere.layers][0] == "cathode"


def test_the_review_outline_goes_with_the_output_it_outlined(
    qtbot, viewer_and_widget, sample, weights, tmp_path
):
    """After a second Segment run the outline of the first run's tile stayed on the canvas. The
    outline goes when the layer under review is replaced, removed or another one is chosen."""
    viewer, widget = viewer_and_widget
    viewer.open(str(sample), plugin="matseg-napari")
    image, output, review = viewer.layers["cathode"], tmp_path / "outlined.zarr", widget.review
    segment_with(qtbot, widget, image, weights, output)
    qtbot.waitUntil(lambda: len(review.queue) == 8, timeout=30_000)
    click(review.next_button)
    assert REVIEW_LAYER in viewer.layers
    widget.segment.overwrite.value = True
    segment_with(qtbot, widget, image, weights, output, tile=(4, 64))
    assert widget.segment.status.value == "done: outlined.zarr", widget.segment.status.value
    assert REVIEW_LAYER not in viewer.layers
    qtbot.waitUntil(lambda: len(review.queue) == 2, timeout=30_000)  # the new run's tiles
    click(review.next_button)
    assert len(viewer.layers[REVIEW_LAYER].data) == 1
    viewer.layers.remove(viewer.layers["outlined phases"])
    assert review.layer.value is None and REVIEW_LAYER not in viewer.layers


def test_retrain_offers_nothing_to_fine_tune_until_a_phases_layer_is_chosen(
    qtbot, viewer_and_widget, segmented
):
    """With no phases layer under review the Retrain panel listed 'cheap'; it lists none and
    says why, lists the output's segmenters once one is chosen, and none again once it goes."""
    viewer, widget = viewer_and_widget
    retrain = widget.retrain
    assert list(retrain.models.choices) == [] and retrain.models.value == []
    assert retrain.status.value == NOTHING_TO_RETRAIN and "--" not in NOTHING_TO_RETRAIN
    viewer.open(str(segmented), plugin="matseg-napari")
    widget.review.select(viewer.layers["cathode-phases phases"])
    assert list(retrain.models.choices) == ["cheap"] and retrain.models.value == ["cheap"]
    assert retrain.status.value == ""
    qtbot.waitUntil(lambda: len(widget.review.queue) == 8, timeout=30_000)
    viewer.layers.remove(viewer.layers["cathode-phases phases"])
    assert list(retrain.models.choices) == [] and retrain.status.value == NOTHING_TO_RETRAIN
    click(retrain.run_button)
    assert retrain.status.value == NOTHING_TO_RETRAIN and retrain.run_button.enabled


def test_retrain_says_when_a_net_came_out_worse(viewer_and_widget, tmp_path):
    """A fine-tune that scores lower on the slices it learnt from is said beside its mIoU, with
    what to change in the panel's words; the other nets' lines stay as they are."""
    from matseg_napari._tasks import TaskResult

    _, widget = viewer_and_widget
    tuned = {"miou_before": 0.81, "miou_after": 0.85, "worse": False}
    wrecked = {"miou_before": 0.80, "miou_after": 0.31, "worse": True}
    result = TaskResult(value={"cheap": wrecked, "medium": tuned, "selector": {"trained": True, "tiles": 4}})
    widget.retrain._finished(result, tmp_path / "tuned")
    cheap, medium, *_ = widget.retrain.status.value.split("; ")
    assert cheap == (
        "cheap: mIoU 0.8000 -> 0.3100 (worse on the corrected slices: try a smaller 'learning rate' "
        "or more 'steps')"
    ), cheap
    assert medium == "medium: mIoU 0.8100 -> 0.8500"
