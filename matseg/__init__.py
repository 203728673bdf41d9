"""matseg: cost-aware segmentation of large materials-microscopy volumes into phases."""

__version__ = "0.1.0"

from matseg.errors import MatsegError  # noqa: E402
from matseg.io.read import Volume, open_volume  # noqa: E402
from matseg.segment import score_labels, segment  # noqa: E402
from matseg.tiling import DEFAULT_TILE  # noqa: E402

__all__ = ["MatsegError", "Volume", "open_volume", "segment", "score_labels", "DEFAULT_TILE", "__version__"]

# Review and correction of a finished segmentation (the napari plugin's API).
from matseg.corrections import (  # noqa: E402
    corrections_path,
    finetune_from_corrections,
    load_corrections,
    save_corrections,
    training_data_from_corrections,
)
from matseg.review import open_segmentation, review_queue, store_kind  # noqa: E402

__all__ += [
    "open_segmentation",
    "review_queue",
    "store_kind",
    "corrections_path",
    "save_corrections",
    "load_corrections",
    "training_data_from_corrections",
    "finetune_from_corrections",
]

# Microstructure metrics of a segmentation (``matseg measure``).
from matseg.measure import measure  # noqa: E402

__all__ += ["measure"]
