"""``matseg measure``: microstructure metrics of a phase label volume, with error bars.

Modules by concern: ``source`` (labels, uncertainty, voxel size), ``blocks``
(streaming), ``interfaces`` (fractions, areas, TPB), ``thickness`` (sizes),
``connectivity``, ``tortuosity`` (diffusion solve), ``uncertainty`` (draws),
``metrics`` (one table), ``report`` (the entry point, JSON/CSV), ``plots``.
"""

from matseg.microstructure.plots import plot_rev, plot_sizes
from matseg.microstructure.report import measure, write_report

__all__ = ["measure", "write_report", "plot_sizes", "plot_rev"]
