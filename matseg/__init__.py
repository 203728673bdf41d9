"""matseg: cost-aware segmentation of large materials-microscopy volumes into phases."""

__version__ = "0.1.0"

from matseg.errors import MatsegError  # noqa: E402
from matseg.io.read import Volume, open_volume  # noqa: E402
from matseg.segment import evaluate, segment  # noqa: E402

__all__ = ["MatsegError", "Volume", "open_volume", "segment", "evaluate", "__version__"]
