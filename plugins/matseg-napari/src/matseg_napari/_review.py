"""Review the most uncertain tiles first, then save the corrections painted on the phases.

The queue is the run's tile grid ordered by mean uncertainty
(:func:`matseg.review_queue`, computed lazily in a worker thread). Previous and
Next move the camera and the Z slider to a tile and outline it; "Mark reviewed"
records it. Save writes ``OUT.corrections.zarr`` beside the output with
:func:`matseg.save_corrections`; the output itself is never changed.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Labels, Layer
from napari.qt.threading import create_worker

import matseg
from matseg.corrections import new_session
from matseg_napari._layers import add_layers
from matseg_napari._tasks import CloseWatch, wrapping

REVIEW_LAYER = "matseg review tile"


def confirm(parent, text: str) -> bool:
    """Ask the user a yes/no question (tests replace this)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(parent, "matseg", text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def phases_meta(layer: Layer | None) -> dict:
    return layer.metadata.get("matseg", {}) if layer is not None else {}


class ReviewPanel(Container):
    """Tiles by uncertainty, reviewed marks, and saving the corrections."""

    def __init__(self, viewer: napari.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.layer = ComboBox(label="phases", choices=self._phase_layers, nullable=True)
        self.position = Label(label="tile", value="no segmentation selected")
        self.previous_button = PushButton(text="< Previous")
        self.next_button = PushButton(text="Next >")
        self.mark_button = PushButton(text="Mark reviewed")
        self.reviewed_label = Label(label="reviewed", value="0")
        self.save_button = PushButton(text="Save corrections")
        self.open_button = PushButton(text="Open saved corrections", visible=False)
        self.status = Label(label="status", value="")
        wrapping(self.position, self.status, self.reviewed_label)
        buttons = [self.previous_button, self.next_button, self.mark_button]
        self.extend(
            [
                self.layer,
                self.position,
                Container(widgets=buttons, layout="horizontal", labels=False),
                self.reviewed_label,
                Container(widgets=[self.save_button, self.open_button], layout="horizontal", labels=False),
                self.status,
            ]
        )
        self.queue: list[matseg.review.ReviewTile] = []
        self.current = -1
        self.reviewed: set[tuple[int, ...]] = set()
        self.own_session = new_session()  # this panel's, for layers not opened from a store
        self.session = self.own_session
        self.worker = None
        self._watch = CloseWatch(self)
        self.layer.changed.connect(self._layer_changed)
        self.previous_button.changed.connect(lambda *_: self.step(-1))
        self.next_button.changed.connect(lambda *_: self.step(+1))
        self.mark_button.changed.connect(self.mark_reviewed)
        self.save_button.changed.connect(lambda *_: self.save())
        self.open_button.changed.connect(self.open_saved)

    @property
    def closed(self) -> bool:
        """The panel's dock was closed (its Qt widget destroyed)."""
        return self._watch.closed

    def _phase_layers(self, _widget=None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and phases_meta(layer).get("role") == "phases"
        ]

    def select(self, layer: Layer) -> None:
        """Review and correct ``layer`` (a phases layer this plugin opened)."""
        self.reset_choices()
        self.layer.value = layer

    # the queue ------------------------------------------------------------------------
    def _layer_changed(self, layer: Layer | None) -> None:
        self.queue, self.current = [], -1
        self._remove_outline()
        meta = phases_meta(layer)
        self.reviewed = {tuple(t) for t in meta.get("reviewed") or []}
        # a store opened from disk is continued, so saving updates it; any other layer saves as
        # this panel's own session (so replacing a store saved by another still asks first)
        self.session = meta.get("session") or self.own_session
        self._show_reviewed()
        if layer is None:
            self.position.value = "no segmentation selected"
            return
        saved = matseg.corrections_path(meta["output"])
        self.open_button.visible = saved.exists() and not meta.get("corrections")
        self.status.value = f"{saved.name} exists: open it to continue" if self.open_button.visible else ""
        self.position.value = "ranking tiles by uncertainty..."
        # its errors are said in the status line (_rank_failed), not raised again in Qt's loop: the
        # output can go while it is ranked (segmented again with overwrite)
        self.worker = create_worker(self._rank, meta["output"], _start_thread=False, _ignore_errors=True)
        # a ranking that ends after another layer was chosen is not that layer's: dropped
        self.worker.returned.connect(lambda queue, output=meta["output"]: self._ranked(queue, output))
        self.worker.errored.connect(self._rank_failed)
        self.worker.start()

    @staticmethod
    def _rank(output: str) -> list:
        return matseg.review_queue(matseg.open_segmentation(output))

    def _rank_failed(self, error: Exception) -> None:
        if not self.closed:
            self.status.value = f"cannot rank tiles: {error}"

    def _ranked(self, queue: list, output: str) -> None:
        if self.closed or phases_meta(self.layer.value).get("output") != output:
            return
        self.queue = queue
        self.position.value = f"{len(queue)} tiles, most uncertain first: press Next"

    def step(self, delta: int) -> None:
        if self.queue:
            self.go(min(max(self.current + delta, 0), len(self.queue) - 1))

    def go(self, position: int) -> None:
        """Centre the view on tile ``position`` of the queue, Z slider on its middle slice."""
        self.current = position
        tile = self.queue[position]
        layer = self.layer.value
        # the tile in world coordinates: the layer's physical scale and --region translation
        n = len(tile.centre)
        scale, shift = np.asarray(layer.scale)[-n:], np.asarray(layer.translate)[-n:]
        centre = np.asarray(tile.centre) * scale + shift
        if n == 3:  # the tile's middle slice
            self.viewer.dims.set_point(0, round(tile.centre[0]) * scale[0] + shift[0])
        self._outline(tile)
        self.viewer.reset_view()
        # reset_view fits every layer (the whole image around a --region output): zoom to the tile
        extent = np.asarray(self.viewer.layers.extent.world)[:, -2:]
        sizes = [(s.stop - s.start) * v for s, v in zip(tile.region[-2:], scale[-2:])]
        self.viewer.camera.zoom *= 0.8 * min(n / s for n, s in zip(extent[1] - extent[0], sizes))
        self.viewer.camera.center = tuple(centre[-2:])
        self._show_position()

    def _outline(self, tile) -> None:
        (y0, y1), (x0, x1) = ((s.start, s.stop) for s in tile.region[-2:])
        rectangle = np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]])
        if REVIEW_LAYER in self.viewer.layers:
            layer = self.viewer.layers[REVIEW_LAYER]
            layer.data = [rectangle]
            layer.shape_type = ["rectangle"]
        else:
            layer = self.viewer.add_shapes(
                [rectangle],
                shape_type="rectangle",
                edge_color="yellow",
                face_color="transparent",
                edge_width=1.5,
                name=REVIEW_LAYER,
            )
        layer.scale = self.layer.value.scale[-2:]  # over the tile where the phases layer shows it
        layer.translate = self.layer.value.translate[-2:]
        self.viewer.layers.selection.active = self.layer.value

    def _remove_outline(self) -> None:
        """The outline belongs to a tile of the layer reviewed until now: once that layer is
        replaced (Segment again into its output), removed or another is chosen, it would mark
        a tile of an output no longer shown (it stayed on the canvas)."""
        if REVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(REVIEW_LAYER)

    def mark_reviewed(self, *_) -> None:
        """Record the current tile as reviewed (saved with the corrections) and move on."""
        if not self.queue or self.current < 0:
            return
        self.reviewed.add(self.queue[self.current].index)
        self._show_reviewed()
        pending = [i for i, t in enumerate(self.queue) if t.index not in self.reviewed]
        later = [i for i in pending if i > self.current]
        if later or pending:
            self.go((later or pending)[0])
        else:
            self._show_position()

    def _show_position(self) -> None:
        tile = self.queue[self.current]
        where = ", ".join(
            f"{a} {s.start}-{s.stop - 1}" for a, s in zip("zyx"[-len(tile.region) :], tile.region)
        )
        done = " (reviewed)" if tile.index in self.reviewed else ""
        self.position.value = (
            f"{self.current + 1}/{len(self.queue)}: {where}, uncertainty {tile.mean_uncertainty:.3f}{done}"
        )

    def _show_reviewed(self) -> None:
        total = f" of {len(self.queue)}" if self.queue else ""
        self.reviewed_label.value = f"{len(self.reviewed)}{total} tiles (saved with the corrections)"

    def open_saved(self, *_) -> None:
        """Add the saved corrections of the current output as a phases layer and review it."""
        from matseg_napari._reader import corrections_layers

        layer = self.layer.value
        if layer is None:
            return
        layers = add_layers(
            self.viewer, corrections_layers(matseg.corrections_path(phases_meta(layer)["output"]))[-2:]
        )
        self.select(layers[0])

    # saving ---------------------------------------------------------------------------
    def save(self, replace: bool | None = None) -> None:
        """Save the phases layer as corrections of its output (asks before replacing others')."""
        layer = self.layer.value
        if layer is None:
            self.status.value = "no phases layer to save"
            return
        meta = phases_meta(layer)
        target = matseg.corrections_path(meta["output"])
        if replace is None:
            replace = False
            if target.exists() and self._stored_session(target) != self.session:
                if not confirm(
                    self.native, f"{target.name} holds corrections from another session. Replace them?"
                ):
                    self.status.value = f"not saved: {target.name} exists"
                    return
                replace = True
        self.status.value = "saving corrections..."
        self.save_button.enabled = False
        self.worker = create_worker(
            matseg.save_corrections,
            meta["output"],
            layer.data,
            reviewed=sorted(self.reviewed),
            session=self.session,
            replace=replace,
            weights=meta.get("weights"),
            _start_thread=False,
            _ignore_errors=True,  # said in the status line (_save_failed)
        )
        self.worker.returned.connect(lambda path: self._saved(layer, Path(path)))
        self.worker.errored.connect(self._save_failed)
        self.worker.start()

    @staticmethod
    def _stored_session(path: Path) -> str | None:
        try:
            return matseg.load_corrections(path).attrs.get("session")
        except matseg.MatsegError:
            return None

    def _saved(self, layer: Layer, path: Path) -> None:
        phases_meta(layer)["corrections"] = str(path.absolute())
        if self.closed:
            return
        self.save_button.enabled = True
        attrs = matseg.load_corrections(path).attrs
        phases_meta(layer)["corrections"] = str(path.absolute())
        slices = attrs["corrected_slices"]
        self.status.value = (
            f"saved {attrs['corrected_voxels']:,} corrected voxels in {len(slices)} slice(s) "
            f"and {len(attrs['reviewed'])} reviewed tile(s) to {path.name}"
        )

    def _save_failed(self, error: Exception) -> None:
        if self.closed:
            return
        self.save_button.enabled = True
        self.status.value = f"not saved: {error}"
