"""Small helpers the panels share: layers in and out of the viewer, paths from file fields."""

from __future__ import annotations

import os
from pathlib import Path

import napari
from magicgui.widgets import FileEdit
from napari.layers import Layer


def path_value(edit: FileEdit) -> Path | None:
    """A FileEdit's path, or None while it is empty."""
    value = edit.value
    text = os.fspath(value) if value is not None else ""
    return Path(text) if text not in ("", ".") else None


def add_layers(viewer: napari.Viewer, layer_data: list[tuple]) -> list[Layer]:
    """Add reader output (data, kwargs, type) to the viewer."""
    layers = []
    for data, kwargs, layer_type in layer_data:
        layer = Layer.create(data, kwargs, layer_type)
        viewer.add_layer(layer)
        layers.append(layer)
    return layers


def layer_source(layer: Layer) -> str | None:
    """The file an image layer was read from, if any."""
    meta = layer.metadata.get("matseg", {})
    if meta.get("source"):
        return meta["source"]
    path = getattr(layer.source, "path", None)
    return str(Path(path).absolute()) if path else None
