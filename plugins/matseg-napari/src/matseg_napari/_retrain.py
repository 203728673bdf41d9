"""Fine-tune the segmenters on the saved corrections, then segment with the new weights.

Runs :func:`matseg.finetune_from_corrections` (what ``matseg train
--from-corrections`` runs) in a napari thread worker, cancellable like
segmenting. The weights start from those that produced the output and go to a
folder of the user's, never over matseg's bundled weights; "Use these weights"
hands them to the Segment panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import napari
from magicgui.widgets import (
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)

import matseg
from matseg_napari._layers import path_value
from matseg_napari._review import phases_meta
from matseg_napari._tasks import Task, TaskPanel, TaskResult, wrapping

if TYPE_CHECKING:
    from matseg_napari._review import ReviewPanel
    from matseg_napari._widget import SegmentPanel

DEFAULT_STEPS = 200
DEFAULT_LR = 3e-3
NOTHING_TO_RETRAIN = (
    "nothing to fine-tune: choose a 'phases' layer under Review above (Segment an image, or open an "
    "output or its corrections)"
)


# a fine-tune that scores lower on the slices it learnt from: the weights it started from are kept
WORSE = " (worse on the corrected slices: try a smaller --lr or more --steps)"


class RetrainPanel(TaskPanel, Container):
    """Fine-tune from the corrections of the phases layer under review."""

    controls = {
        "--init": "start from",
        "--output": "new weights",
        "--model": "models",
        "--steps": "steps",
        "--lr": "learning rate",
    }

    def __init__(self, viewer: napari.Viewer, review: ReviewPanel, segment: SegmentPanel):
        super().__init__(labels=True)
        self.viewer, self.review, self.segment = viewer, review, segment
        self.init = FileEdit(
            label="start from",
            mode="d",
            value="",
            tooltip="empty: the weights that made the output (else the bundled ones)",
        )
        self.weights_out = FileEdit(label="new weights", mode="d", value="", tooltip="empty: OUT.weights")
        self.models = Select(label="models", choices=self._model_choices, allow_multiple=True)
        self.models.native.setMaximumHeight(60)
        self.steps = SpinBox(label="steps", value=DEFAULT_STEPS, min=1, max=100_000)
        self.lr = FloatSpinBox(label="learning rate", value=DEFAULT_LR, min=1e-5, max=1e-1, step=1e-4)
        self.run_button = PushButton(text="Fine-tune from corrections")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=100)
        self.status = Label(label="status", value="")
        wrapping(self.status)
        self.use_button = PushButton(text="Use these weights for Segment", enabled=False)
        self.extend(
            [
                self.init,
                self.weights_out,
                self.models,
                self.steps,
                self.lr,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
                self.use_button,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_weights)
        review.layer.changed.connect(self._layer_changed)
        self._trained: Path | None = None
        self.watch_close()
        self._layer_changed()

    def _model_choices(self, _widget=None) -> list[str]:
        """The segmenters that made the output under review: those fine-tuning can start from
        (all of them, trained from scratch, for an output made without networks); none while
        no layer is under review (an empty report read as a run of the first segmenter)."""
        if self.review.layer.value is None:
            return []
        report = phases_meta(self.review.layer.value).get("report") or {}
        trainable = list(matseg.SEGMENTERS)
        if report.get("model") == "classical" and not report.get("models"):
            return trainable
        models = [m["name"] for m in report.get("models") or [] if m.get("name") in trainable]
        return models or trainable[:1]

    def _layer_changed(self, *_) -> None:
        self.models.reset_choices()
        self.models.value = list(self.models.choices)
        if self.review.layer.value is None:
            self.status.value = NOTHING_TO_RETRAIN
        elif self.status.value == NOTHING_TO_RETRAIN:
            self.status.value = ""

    def task(self) -> tuple[Task, Path]:
        """The fine-tuning call for the current choices, and the weights folder it writes."""
        if self.review.layer.value is None:
            raise matseg.MatsegError(NOTHING_TO_RETRAIN)
        meta = phases_meta(self.review.layer.value)
        corrections = meta.get("corrections")
        if not corrections:
            raise matseg.MatsegError("save corrections first (Save corrections above)")
        output = Path(meta["output"])
        target = path_value(self.weights_out) or output.with_name(
            output.name.removesuffix(".zarr") + ".weights"
        )
        init = path_value(self.init)
        made_by = (meta.get("report") or {}).get("models")
        # an output made without networks trains from scratch unless a start is chosen here
        recorded = meta.get("weights") if made_by or made_by is None else None
        task = Task(
            matseg.finetune_from_corrections,
            corrections,
            target.absolute(),
            models=list(self.models.value) or None,
            init=str(init.absolute()) if init is not None else recorded,
            steps=int(self.steps.value),
            lr=float(self.lr.value),
        )
        return task, target.absolute()

    def run(self, *_) -> None:
        try:
            task, target = self.task()
        except matseg.MatsegError as err:
            self.say(str(err))
            return
        self.use_button.enabled = False
        self.start_task(task, lambda result: self._finished(result, target), "fine-tuning...")

    def _finished(self, result: TaskResult, target: Path) -> None:
        if not self.task_succeeded(result):
            return
        self._trained = target
        self.use_button.enabled = True
        results = dict(result.value)
        selector = results.pop("selector", None) or {"trained": False, "reason": "not retrained"}
        lines = [
            f"{name}: mIoU "
            + ("scratch" if r["miou_before"] is None else f"{r['miou_before']:.4f}")
            + f" -> {r['miou_after']:.4f}"
            + (self.in_words(WORSE) if r.get("worse") else "")
            for name, r in results.items()
        ]
        lines.append(
            f"selector retrained ({selector['tiles']} tiles)"
            if selector["trained"]
            else f"no selector ({selector['reason']}): Segment with a single model"
        )
        self.status.value = "; ".join(lines) + f" -> {target.name}"

    def use_weights(self, *_) -> None:
        if self._trained is not None:
            self.segment.weights.value = self._trained
            self.segment.overwrite.value = False
            self.segment.output.value = self._next_output()

    def _next_output(self) -> Path:
        output = Path(phases_meta(self.review.layer.value).get("output") or "phases.zarr")
        stem = output.name.removesuffix(".zarr")
        return output.with_name(f"{stem}-finetuned.zarr")
