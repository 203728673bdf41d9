"""Fixtures: a small synthetic sample, quickly trained weights, a segmented output.

GUI tests need a display: run them under Xvfb (``make test`` does), e.g.
``LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s "-screen 0 1280x1024x24" pytest plugins/matseg-napari``.
Without one they are skipped (Qt's offscreen platform renders nothing for napari).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import matseg

PHASES = ("pore", "carbon-binder", "active")
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform != "linux":
        return
    skip = pytest.mark.skip(reason="no display: run the napari plugin tests under xvfb-run (see make test)")
    for item in items:
        if HERE in Path(str(item.fspath)).parents and "make_napari_viewer" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    """An 8 x 64 x 64 synthetic cathode (OME-Zarr image + labels/truth)."""
    from matseg.sample import write_sample

    path = tmp_path_factory.mktemp("sample") / "cathode.zarr"
    write_sample(path, (8, 64, 64), seed=3)
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Cheap + expensive nets trained for a few steps on another sample: fair, not good."""
    from matseg.labelled import load_labelled
    from matseg.models.segmenter import new_segmenter
    from matseg.models.store import save_segmenter
    from matseg.sample import write_sample
    from matseg.training import fit

    folder = tmp_path_factory.mktemp("weights")
    train = tmp_path_factory.mktemp("train") / "train.zarr"
    write_sample(train, (8, 64, 64), seed=11)
    data, _ = load_labelled(train)
    for name, steps in (("cheap", 40), ("expensive", 2)):
        model = new_segmenter(name, PHASES, seed=1)
        fit(model, [data], steps, batch=8, patch=64, lr=3e-3, seed=0)
        save_segmenter(model, folder)
    return folder


@pytest.fixture(scope="session")
def segmented_store(sample, weights, tmp_path_factory) -> Path:
    """``matseg segment`` of the sample with the cheap model, tiles of 4 x 32 x 32 (8 tiles)."""
    out = tmp_path_factory.mktemp("segmented") / "cathode-phases.zarr"
    matseg.segment(sample, out, model="cheap", weights=weights, tile=(4, 32, 32))
    return out


@pytest.fixture
def segmented(segmented_store, tmp_path) -> Path:
    """A private copy of the segmented output (tests may write corrections beside it)."""
    out = tmp_path / segmented_store.name
    shutil.copytree(segmented_store, out)
    return out


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    """A viewer with the matseg dock widget docked in it."""
    from matseg_napari._widget import MatsegWidget

    viewer = make_napari_viewer()
    widget = MatsegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="matseg")
    return viewer, widget
