"""File > Open Sample > matseg: the demo cathode, generated once, opened like a file."""

from __future__ import annotations

import numpy as np

from matseg_napari import _sample_data


def test_demo_cathode_opens_as_image_and_true_phases(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(_sample_data, "DEMO_SHAPE", (4, 64, 64))
    monkeypatch.setattr(_sample_data, "sample_folder", lambda: tmp_path / "samples")
    viewer = make_napari_viewer()
    viewer.open_sample("matseg-napari", "cathode")
    image, labels = viewer.layers
    assert image.data.shape == (4, 64, 64) and image.data.dtype == np.uint8
    store = next((tmp_path / "samples").glob("*.zarr"))
    assert image.metadata["matseg"]["source"] == str(store)  # a file the Segment panel can run on
    assert list(labels.features["phase"]) == ["pore", "carbon-binder", "active"]
    assert set(np.unique(np.asarray(labels.data))) == {0, 1, 2}
    assert not list((tmp_path / "samples").glob(".*partial"))

    made = store.stat().st_mtime_ns
    viewer.open_sample("matseg-napari", "cathode")  # the second time, the stored volume is reused
    assert store.stat().st_mtime_ns == made and len(viewer.layers) == 4
