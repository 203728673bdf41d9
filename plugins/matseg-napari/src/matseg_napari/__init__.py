"""napari plugin for matseg: open volumes and segmentations, segment, review, correct, retrain."""

__version__ = "0.1.0"

from matseg_napari._reader import napari_get_reader, read_matseg

# The dock widget (Qt) is not imported here: napari imports it from the manifest when it is
# opened, so importing the package (its reader, in a script) needs no Qt.
__all__ = ["napari_get_reader", "read_matseg", "__version__"]
