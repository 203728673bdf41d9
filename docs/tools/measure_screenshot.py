"""Take docs/images/measure-panel.png: the Measure panel on a segmented sample.

Needs a display; on a headless machine run it under Xvfb:

    LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s "-screen 0 1600x1100x24" \\
        .venv/bin/python docs/tools/measure_screenshot.py

It generates a synthetic cathode, segments it with matseg's bundled weights,
opens the output with the plugin's reader, runs the Measure panel (2 draws) and
saves a PNG of the viewer with the panel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from plugin_screenshots import IMAGES, settle, shoot, wait_until  # docs/tools/ is the script's folder


def main() -> None:
    import napari
    from matseg_napari._measure import MeasurePanel

    import matseg
    from matseg.sample import write_sample

    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "cathode.zarr"
        write_sample(sample, (16, 128, 128), seed=5)
        output = Path(tmp) / "cathode-phases.zarr"
        matseg.segment(sample, output, model="cheap")
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1600, 1050)
        viewer.open(str(output), plugin="matseg-napari")
        for layer in viewer.layers:
            layer.visible = layer.name.endswith("phases") or layer.name == "cathode"
        panel = MeasurePanel(viewer)
        viewer.window.add_dock_widget(panel, name="Measure", area="right")
        panel.samples.value = 2
        panel.run_button.native.click()
        wait_until(lambda: panel.run_button.enabled and panel.report is not None)
        settle(2.0)
        IMAGES.mkdir(parents=True, exist_ok=True)
        shoot(viewer, "measure-panel.png")
        viewer.close()


if __name__ == "__main__":
    main()
