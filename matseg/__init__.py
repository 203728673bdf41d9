"""matseg: cost-aware segmentation of large materials-microscopy volumes into phases.

The public API (imported on first use, so that ``import matseg`` and ``matseg --help``
stay fast)::

    matseg.segment(input, output, matseg.Settings(lam=0.03), progress=callback, cancel=event)
    matseg.train(images, output, progress=callback, cancel=event)
    matseg.finetune_from_corrections(corrections, output, progress=callback, cancel=event)
"""

from __future__ import annotations

import importlib

from matseg._version import __version__
from matseg.errors import Cancelled, MatsegError

# public name -> module that defines it
_API = {
    "segment": "matseg.pipeline.run",
    "Settings": "matseg.pipeline.settings",
    "MODES": "matseg.pipeline.settings",  # what Settings.model accepts: "auto" and each candidate
    "SEGMENTERS": "matseg.models.segmenter",  # the networks matseg trains and fine-tunes
    "score_labels": "matseg.pipeline.report",
    "REPORT_NAME": "matseg.pipeline.report",
    "Volume": "matseg.io.read",
    "open_volume": "matseg.io.read",
    "DEFAULT_TILE": "matseg.defaults",
    "train": "matseg.training",
    # review and correction of a finished segmentation (the napari plugin's API)
    "open_segmentation": "matseg.review",
    "review_queue": "matseg.review",
    "store_kind": "matseg.review",
    "corrections_path": "matseg.corrections",
    "save_corrections": "matseg.corrections",
    "load_corrections": "matseg.corrections",
    "training_data_from_corrections": "matseg.corrections",
    "finetune_from_corrections": "matseg.finetune",
    # microstructure metrics of a segmentation (``matseg measure``)
    "measure": "matseg.microstructure",
    # a report's audit, fit and fill in words, as the CLI summary prints them
    "format_estimate": "matseg.console",
    "describe_fit": "matseg.candidates.fit",
    "describe_fill": "matseg.normalize",
}

__all__ = ["__version__", "MatsegError", "Cancelled", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'matseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
