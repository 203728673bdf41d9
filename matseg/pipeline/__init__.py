"""The segmentation pipeline, in the order a run goes:

settings -> job (prepared: volume, models, grid, identity) -> resume (what is at the
output) -> stages (intensity pass, cheap pass, selector, costlier candidates and
blending, or one model on every tile) -> report. :func:`matseg.pipeline.run.segment`
is the entry point (``matseg.segment``).
"""
