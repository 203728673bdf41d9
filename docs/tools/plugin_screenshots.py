"""Take the screenshots of docs/plugin.md: the napari plugin on a segmented sample.

Needs a display; on a headless machine run it under Xvfb:

    LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s "-screen 0 1600x1100x24" \\
        .venv/bin/python docs/tools/plugin_screenshots.py

It generates a synthetic cathode (``matseg sample``), segments it through the
widget with matseg's bundled weights, and saves PNGs of the viewer (canvas and
dock widget) in docs/images/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"


def wait_until(condition, timeout: float = 600.0) -> None:
    """Let Qt process events until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)


def settle(seconds: float = 1.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def shoot(viewer, name: str) -> Path:
    settle()
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def only_visible(viewer, *names: str) -> None:
    """Show these layers (the last one selected, its controls on the left), hide the others."""
    for layer in viewer.layers:
        layer.visible = layer.name in names
    viewer.layers.selection.active = viewer.layers[names[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="Where to keep the sample and outputs (default: a temp dir)."
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 256, 256))
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--lam", type=float, default=0.15, help="λ for --model auto.")
    args = parser.parse_args()

    import napari
    from matseg_napari._widget import MatsegWidget

    import matseg

    work = args.workdir or Path(tempfile.mkdtemp(prefix="matseg-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    sample = work / "cathode.zarr"
    shape = [str(s) for s in args.shape]
    subprocess.run(
        [sys.executable, "-m", "matseg.cli", "sample", str(sample), "--shape", *shape]
        + ["--seed", str(args.seed), "--profile", "test", "--overwrite"],
        check=True,
    )

    viewer = napari.Viewer(title="matseg", show=True)
    viewer.window.resize(1600, 1050)
    widget = MatsegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="matseg", area="right")
    viewer.open(str(sample), plugin="matseg-napari")

    panel = widget.segment
    panel.reset_choices()
    panel.image.value = viewer.layers["cathode"]
    panel.output.value = work / "cathode-phases.zarr"
    panel.overwrite.value = True
    panel.tile_z.value, panel.tile_yx.value = 4, 128
    if panel.model.value == "auto" and "λ (higher spends less)" in panel.cost_mode.choices:
        panel.cost_mode.value = "λ (higher spends less)"
        panel.cost_value.value = args.lam  # a mix of candidates on this sample
    panel.run_button.native.click()
    wait_until(lambda: panel.run_button.enabled)
    if not panel.status.value.startswith("done"):
        raise SystemExit(f"segmentation failed: {panel.status.value}")
    # the slice where the decision map mixes candidates most
    decisions = np.asarray(viewer.layers["cathode-phases decisions"].data)
    mix = [plane.size - np.bincount(plane.ravel()).max() for plane in decisions]
    viewer.dims.set_point(0, int(np.argmax(mix)))
    viewer.reset_view()

    only_visible(viewer, "cathode", "cathode-phases phases")
    shoot(viewer, "plugin-phases.png")
    only_visible(viewer, "cathode", "cathode-phases decisions")
    viewer.layers["cathode-phases decisions"].opacity = 0.5
    shoot(viewer, "plugin-decisions.png")
    only_visible(viewer, "cathode", "cathode-phases uncertainty")
    viewer.layers["cathode-phases uncertainty"].opacity = 0.7
    shoot(viewer, "plugin-uncertainty.png")

    # review: the most uncertain tile, then a correction painted on it and saved
    review = widget.review
    wait_until(lambda: len(review.queue) > 0)
    review.next_button.native.click()
    only_visible(viewer, "cathode", "matseg review tile", "cathode-phases phases")
    wait_until(lambda: review.current == 0)
    phases = viewer.layers["cathode-phases phases"]
    viewer.layers.selection.active = phases
    truth = matseg.open_volume(sample, labels=True).data
    tile = review.queue[0]
    zc = round(tile.centre[0])
    region = (zc, *tile.region[-2:])
    current = np.asarray(phases.data[region])
    target = np.asarray(truth[region])
    fix = np.nonzero(current != target)
    y0, x0 = (s.start for s in tile.region[-2:])
    phases.data_setitem((np.full(fix[0].size, zc), fix[0] + y0, fix[1] + x0), target[fix])
    review.mark_button.native.click()
    review.go(0)
    review.save_button.native.click()
    wait_until(lambda: review.status.value.startswith(("saved", "not saved")))
    shoot(viewer, "plugin-review.png")

    retrain = widget.retrain
    retrain.models.value = ["cheap"]  # the expensive net takes minutes more on a laptop
    retrain.steps.value = 200
    retrain.weights_out.value = work / "cathode-phases.weights"
    retrain.run_button.native.click()
    wait_until(lambda: retrain.run_button.enabled)
    print(retrain.status.value)
    shoot(viewer, "plugin-retrain.png")
    viewer.close()


if __name__ == "__main__":
    main()
