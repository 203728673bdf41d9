"""The Measure panel: microstructure metrics of the open output, with intervals, a table and plots.

Calls ``matseg.measure`` (the public API behind ``matseg measure``) on the store
of the chosen phases layer in a napari ``thread_worker``, so the viewer stays
responsive; shows every metric with its interval in a table and the size
distributions and representative-volume curves as plots. Owns no metric.
"""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox, Table

import matseg
from matseg_napari._tasks import wrapping

WIDTH = 520
COLUMNS = ["metric", "phases", "axis", "value", "interval", "unit"]


def phases_layers(viewer: napari.Viewer) -> list[tuple[str, object]]:
    """(name, layer) of the phases layers of matseg outputs open in the viewer (they know their
    store). A corrections layer is not offered: Measure reads the output's own labels, not the
    corrections painted over them (fine-tune and segment again to measure those)."""
    return [
        (layer.name, layer)
        for layer in viewer.layers
        if (meta := layer.metadata.get("matseg", {})).get("role") == "phases"
        and meta.get("output")
        and not meta.get("corrections")
    ]


def table_rows(report: dict) -> list[list]:
    """The report's metrics as table rows: metric, phases, axis, value, interval, unit."""
    rows = []
    for r in report["rows"]:
        interval = f"{r['low']:.4g} – {r['high']:.4g}" if r["low"] is not None else ""
        rows.append([r["metric"], r["phases"], r["axis"], f"{r['value']:.4g}", interval, r["unit"]])
    return rows


class MeasurePanel(Container):
    """Measure the output behind a phases layer: fractions, areas, connectivity, tortuosity, sizes, TPB."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = ComboBox(label="phases", choices=lambda _: phases_layers(self.viewer))
        self.samples = SpinBox(label="draws", value=4, min=0, max=64, tooltip="0: no intervals")
        self.transport = CheckBox(text="tortuosity (diffusion solve)", value=True)
        self.run_button = PushButton(text="Measure")
        self.status = Label(label="status", value="")
        wrapping(self.status)
        self.table = Table(
            value={"data": [], "columns": ["metric", "phases", "axis", "value", "interval", "unit"]}
        )
        self.table.native.setMinimumHeight(220)
        self.plots = Container(layout="vertical", labels=False)
        self.extend(
            [self.layer, self.samples, self.transport, self.run_button, self.status, self.table, self.plots]
        )
        self.native.setMinimumWidth(WIDTH)  # room for the table and the plots beside the canvas
        self.run_button.changed.connect(self.start)
        self.report: dict | None = None
        self.canvases: list = []
        self.worker = None
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda *_: self.reset_choices())

    def start(self, *_):
        from napari.qt.threading import thread_worker

        layer = self.layer.value
        if layer is None:
            self.status.value = "open a matseg output first (its phases layer)"
            return
        path = layer.metadata["matseg"]["output"]
        self.run_button.enabled = False
        self.status.value = f"measuring {path} ..."
        worker = thread_worker(matseg.measure)(
            path, samples=self.samples.value, transport=self.transport.value
        )
        worker.returned.connect(self.show)
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker = worker
        worker.start()

    def _failed(self, error: Exception):
        self.status.value = f"failed: {error}"

    def show(self, report: dict):
        """Fill the table and the plots from a ``matseg.measure`` report."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        from matseg.microstructure import plot_rev, plot_sizes

        self.report = report
        rows = table_rows(report)
        self.table.value = {"data": rows, "index": list(range(len(rows))), "columns": COLUMNS}
        self.table.native.resizeColumnsToContents()
        layout = self.plots.native.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        self.canvases = []
        for figure in [plot_sizes(report)] + ([plot_rev(report)] if "rev" in report else []):
            canvas = FigureCanvasQTAgg(figure)
            canvas.setMinimumHeight(230)
            layout.addWidget(canvas)
            self.canvases.append(canvas)
        source = report["input"]
        self.status.value = (
            f"{len(report['rows'])} metrics, {report['uncertainty']['samples']} draws, "
            f"voxel {' x '.join(f'{v:g}' for v in source['voxel_size'])} {source['unit']} "
            f"(from {source['voxel_size_from']}), {report['seconds']:.0f} s"
        )
