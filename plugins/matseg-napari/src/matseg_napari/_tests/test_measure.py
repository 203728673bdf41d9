"""The Measure panel in a real viewer: it measures the open output in the background and shows it."""

from __future__ import annotations

import numpy as np

from matseg_napari._measure import MeasurePanel

RUN_TIMEOUT_MS = 240_000


def test_measure_panel_fills_table_and_plots(qtbot, make_napari_viewer, segmented):
    viewer = make_napari_viewer()
    viewer.open(str(segmented), plugin="matseg-napari")
    panel = MeasurePanel(viewer)
    viewer.window.add_dock_widget(panel, name="Measure")
    assert [layer.name for layer in panel.layer.choices] == ["cathode-phases phases"]
    panel.samples.value = 2
    panel.run_button.native.click()
    assert not panel.run_button.enabled  # running in a thread, the viewer stays live
    qtbot.waitUntil(lambda: panel.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert panel.report is not None, panel.status.value
    rows = panel.table.value["data"]
    assert len(rows) == len(panel.report["rows"]) and rows[0][0] == "volume_fraction"
    phases = np.asarray(viewer.layers["cathode-phases phases"].data)
    assert float(rows[0][3]) == float(f"{np.mean(phases == 0):.4g}")
    assert all(r[4] for r in rows if r[0] == "interfacial_area")  # each with its interval
    assert [c.parentWidget() for c in panel.canvases] == [panel.plots.native] * 2  # sizes, REV
    assert "2 draws" in panel.status.value


def test_a_corrections_layer_is_not_offered_for_measuring():
    """Measure reads the output's own labels: offering the corrected layer measured the
    uncorrected output under its name."""
    from types import SimpleNamespace

    from matseg_napari._measure import phases_layers

    def layer(name, **meta):
        return SimpleNamespace(name=name, metadata={"matseg": {"role": "phases", "output": "o.zarr", **meta}})

    viewer = SimpleNamespace(
        layers=[layer("o phases"), layer("o corrected phases", corrections="o.corr.zarr")]
    )
    assert [name for name, _ in phases_layers(viewer)] == ["o phases"]
