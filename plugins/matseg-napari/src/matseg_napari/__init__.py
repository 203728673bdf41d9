"""napari plugin for matseg: open volumes and segmentations, segment, review, correct, retrain."""

__version__ = "0.1.0"

from matseg_napari._reader import napari_get_reader, read_matseg
from matseg_napari._widget import MatsegWidget

__all__ = ["napari_get_reader", "read_matseg", "MatsegWidget", "__version__"]
