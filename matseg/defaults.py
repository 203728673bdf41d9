"""Defaults the command line shows in its help (a leaf module: no numpy, no torch)."""

# Tiles of 8 slices: each tile costs a fixed amount of reading, writing and scheduling per
# stage besides its model calls, which thinner tiles pay more often (docs/benchmarks.md).
# The models are 2-D, so the depth changes only how finely the selector decides along Z.
DEFAULT_TILE = (8, 256, 256)
# the default accuracy tolerance: at most 0.01 mIoU below an all-reference run, at 95 %
DEFAULT_TOLERANCE = 0.01
