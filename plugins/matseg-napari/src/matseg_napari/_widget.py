"""The matseg dock widget: segment an image, review the uncertain tiles, correct, retrain.

Three panels share one viewer: :class:`SegmentPanel` runs :func:`matseg.segment`
in a napari thread worker (cancellable, never freezing napari) and opens the
result with this plugin's reader; :class:`~matseg_napari._review.ReviewPanel`
steps through the tiles by uncertainty and saves corrections;
:class:`~matseg_napari._retrain.RetrainPanel` fine-tunes the segmenters on them.
The widget owns no segmentation logic: it calls matseg's public API.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask.array as da
import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Layer

import matseg
from matseg.review import gflops_all
from matseg_napari._layers import add_layers, layer_source, path_value
from matseg_napari._reader import segmentation_layers
from matseg_napari._retrain import RetrainPanel
from matseg_napari._review import ReviewPanel
from matseg_napari._tasks import Task, TaskPanel, TaskResult, wrapping

WIDTH = 440


DEFAULT_COST = "selector's default"
SAVED_LAYER = "matseg-napari-layer"  # the attribute that marks a layer's copy saved by the panel
# Cost controls by their label: the keyword of matseg.segment, range, step and a starting value.
COST_CONTROLS = {
    "λ (higher spends less)": ("lam", 0.0, 1.0, 0.01, 0.1),
    "GFLOP budget": ("budget_gflops", 1.0, 1e9, 1.0, 100.0),  # above 0: matseg refuses 0
    "max costlier fraction": ("max_expensive_fraction", 0.0, 1.0, 0.05, 0.25),
}


def cost_text(report: dict, weights: str | None = None) -> str:
    """GFLOPs spent by a run against running the expensive candidate on every tile."""
    spent = float(report.get("gflops") or 0.0)
    reference = report.get("all_expensive_gflops")
    if reference is None:
        try:
            reference = gflops_all(report, "expensive", weights)
        except matseg.MatsegError:
            reference = None
    text = f"GFLOPs spent: {spent:,.2f}"
    if reference:
        name = report.get("cost_reference", "expensive")
        text += f" = {100 * spent / reference:.1f} % of all-{name} ({reference:,.2f})"
    return text


def audit_text(report: dict) -> str:
    """A selector run's audit (its estimate against the all-reference run and what the audit
    moved), a fill holding many voxels and whether the volume fits the weights, as the command
    line's summary says them."""
    lines = []
    if "estimate" in report:
        summary = matseg.format_estimate(report["estimate"])  # indented for the terminal
        lines.append("estimate: " + "\n".join(line.strip() for line in summary.splitlines()))
    if fill := matseg.describe_fill(report.get("normalization", {})):
        lines.append("fill: " + fill)
    if report.get("fit"):
        lines.append("fit: " + matseg.describe_fit(report["fit"]))
    return "\n".join(lines)


class SegmentPanel(TaskPanel, Container):
    """Pick an image, a model and a tile size; run :func:`matseg.segment` and open the result."""

    controls = {
        "--overwrite": "overwrite output",
        "--model": "model",
        "--tile": "tile",
        "--weights": "weights",
        "--output": "output",
        "--lambda": "cost control: λ",
        "--budget-gflops": "cost control: GFLOP budget",
        "--max-expensive-fraction": "cost control: max costlier fraction",
    }
    # the fit's way out (matseg.describe_fit), as it is taken in this dock
    phrases = {
        "in the napari plugin, then 'matseg train --from-corrections'": (
            "(Review below), then 'Fine-tune from corrections'"
        )
    }

    def __init__(self, viewer: napari.Viewer, on_result: Callable[[list[Layer]], None] | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._on_result = on_result
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.model = ComboBox(label="model", choices=list(matseg.MODES), value=matseg.MODES[0])
        self.tile_yx = SpinBox(label="tile Y, X", value=matseg.DEFAULT_TILE[-1], min=16, max=8192, step=16)
        self.tile_z = SpinBox(label="tile Z", value=matseg.DEFAULT_TILE[0], min=1, max=4096)
        self.weights = FileEdit(
            label="weights", mode="d", value="", tooltip="empty: matseg's bundled weights"
        )
        self.output = FileEdit(label="output", mode="w", filter="*.zarr", value="")
        self.overwrite = CheckBox(text="overwrite output", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=100)
        self.status = Label(label="status", value="")
        self.cost = Label(label="cost", value="")
        self.audit = Label(label="audit", value="")
        wrapping(self.status, self.cost, self.audit)
        self.extend(
            [
                self.image,
                self.model,
                self.tile_z,
                self.tile_yx,
                *self._cost_widgets(),
                self.weights,
                self.output,
                self.overwrite,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
                self.cost,
                self.audit,
            ]
        )
        self.image.changed.connect(self._suggest_output)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.watch_close()
        self._suggest_output()

    # Accuracy/cost control of the selector (model auto): λ, a GFLOP budget or a cap on the
    # fraction of costlier tiles; "selector's default" passes none (the λ recorded with the selector).
    def _cost_widgets(self) -> list:
        self.cost_mode = ComboBox(label="cost control", choices=[DEFAULT_COST, *COST_CONTROLS])
        self.cost_value = FloatSpinBox(label="value", value=0.0, min=0.0, max=1.0, step=0.01)
        self.cost_mode.changed.connect(self._cost_mode_changed)
        self.model.changed.connect(self._cost_enabled)  # the value the user set is kept
        self._cost_mode_changed()
        return [self.cost_mode, self.cost_value]

    def _cost_mode_changed(self, *_) -> None:
        """Another cost control: its range, step and starting value."""
        mode = COST_CONTROLS.get(self.cost_mode.value)
        if mode is not None:
            _, low, high, step, default = mode
            self.cost_value.min, self.cost_value.max, self.cost_value.step = low, high, step
            self.cost_value.value = default
        self._cost_enabled()

    def _cost_enabled(self, *_) -> None:
        """The cost controls apply to the selector (model auto) only."""
        auto = self.model.value == "auto"
        self.cost_mode.enabled = auto
        self.cost_value.enabled = auto and COST_CONTROLS.get(self.cost_mode.value) is not None

    def _cost_keywords(self) -> dict[str, float]:
        mode = COST_CONTROLS.get(self.cost_mode.value)
        if self.model.value != "auto" or mode is None:
            return {}
        return {mode[0]: float(self.cost_value.value)}

    def _layers_of(self, output: Path) -> list[Layer]:
        """The layers of a segmentation output open in the viewer (none of the input image's)."""
        where = str(Path(output).absolute())
        return [
            layer for layer in self.viewer.layers if layer.metadata.get("matseg", {}).get("output") == where
        ]

    def _image_choices(self, _widget=None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Image)
            and layer.metadata.get("matseg", {}).get("role") != "uncertainty"
        ]

    def _suggest_output(self, *_):
        layer = self.image.value
        if layer is None or path_value(self.output) is not None:
            return
        source = layer_source(layer)
        folder = Path(source.rsplit(":", 1)[0]).parent if source else Path.cwd()
        name = Path(source.rsplit(":", 1)[0]).name if source else layer.name
        stem = name[: -len(".zarr")] if name.endswith(".zarr") else Path(name).stem
        self.output.value = folder / f"{stem}-phases.zarr"

    def task(self) -> tuple[Task, Path]:
        """The :func:`matseg.segment` call for the current choices, and its output."""
        layer = self.image.value
        if layer is None:
            raise matseg.MatsegError("choose an image layer to segment")
        output = path_value(self.output)
        if output is None:
            raise matseg.MatsegError("choose an output store (e.g. phases.zarr)")
        output = output.absolute()
        source = layer_source(layer) or self._save_layer(layer, output)
        tile = [self.tile_yx.value] * 2
        if layer.ndim == 3:
            tile = [self.tile_z.value, *tile]
        weights = path_value(self.weights)
        settings = matseg.Settings(
            model=self.model.value,
            tile=tuple(tile),
            weights=str(weights.absolute()) if weights is not None else None,
            **self._cost_keywords(),
        )
        return Task(matseg.segment, source, output, settings, overwrite=bool(self.overwrite.value)), output

    def _save_layer(self, layer: Layer, output: Path) -> str:
        """An image made in napari (no file) is saved beside the output, as matseg reads files:
        its data as it is now, at every run (a copy of what it held before would be segmented
        instead, or another layer's). Only a copy this panel saved is replaced."""
        import zarr

        path = output.with_name(output.name.removesuffix(".zarr") + ".input.zarr")
        if path.exists():
            try:
                ours = SAVED_LAYER in zarr.open(str(path), mode="r").attrs
            except Exception:  # not a Zarr store at all
                ours = False
            if not ours:
                raise matseg.MatsegError(
                    f"{path} exists and is not a copy of a napari layer saved here; choose another output"
                )
        da.asarray(layer.data).to_zarr(str(path), overwrite=True)
        zarr.open_array(str(path), mode="r+").attrs[SAVED_LAYER] = {"layer": layer.name}
        return str(path.absolute())

    def run(self, *_):
        """Start :func:`matseg.segment` in the background."""
        self.cost.value = self.audit.value = ""  # the last run's lines go, whatever this one does
        try:
            task, output = self.task()
        except matseg.MatsegError as err:
            self.say(str(err))
            return
        edited = [layer.name for layer in self._layers_of(output) if getattr(layer.data, "edited_chunks", 0)]
        if edited:  # the run would change the store those corrections were painted over
            self.status.value = (
                f"{edited[0]} holds corrections not saved yet: save them (Review) or close the layer, "
                "then segment into this output"
            )
            return
        weights = path_value(self.weights)
        self.start_task(
            task,
            lambda result: self._finished(result, output, weights),
            f"segmenting with {self.model.value}...",
        )

    def _finished(self, result: TaskResult, output: Path, weights: Path | None):
        left = " (the finished tiles are kept: Segment again resumes)" if output.exists() else ""
        if not self.task_succeeded(result, cancelled=f"cancelled{left}"):
            return
        image = self.image.value
        for layer in self._layers_of(output):  # what an earlier run of this output showed: replaced
            self.viewer.layers.remove(layer)
        layers = add_layers(self.viewer, segmentation_layers(output, include_image=image is None))
        for layer in layers:
            if layer.metadata["matseg"].get("role") == "phases":
                layer.metadata["matseg"]["weights"] = str(weights.absolute()) if weights else None
        self.cost.value = cost_text(result.value, str(weights) if weights else None)
        self.audit.value = self.in_words(audit_text(result.value))
        self.status.value = f"done: {output.name}"
        if self._on_result:
            self._on_result(layers)


class MatsegWidget(Container):
    """Segment -> review -> correct -> retrain, in one dock widget."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=False, scrollable=True)  # taller than a screen: it scrolls
        self.viewer = napari_viewer
        self.segment = SegmentPanel(napari_viewer, on_result=self._segmented)
        self.review = ReviewPanel(napari_viewer)
        self.retrain = RetrainPanel(napari_viewer, self.review, self.segment)
        self.extend(
            [
                Label(value="<b>1 · Segment</b>"),
                self.segment,
                Label(value="<b>2 · Review and correct</b> (paint on the phases layer)"),
                self.review,
                Label(value="<b>3 · Retrain from corrections</b>"),
                self.retrain,
            ]
        )
        self.native.setMaximumWidth(WIDTH)  # long paths and messages wrap instead of squeezing the canvas
        for panel in (self.segment, self.retrain):  # closing this dock cancels their runs
            panel.watch_close(self)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._layers_changed()

    def _layers_changed(self, *_):
        self.reset_choices()

    def _segmented(self, layers: list[Layer]):
        phases = [layer for layer in layers if layer.metadata["matseg"].get("role") == "phases"]
        if phases:
            self.review.select(phases[0])
