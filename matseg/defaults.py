"""Defaults the command line shows in its help (a leaf module: no numpy, no torch)."""

# Tiles of 8 slices: each tile costs a fixed amount of reading, writing and scheduling per
# stage besides its model calls, which thinner tiles pay more often (docs/benchmarks.md).
# The models are 2-D, so the depth changes only how finely the selector decides along Z.
DEFAULT_TILE = (8, 256, 256)
# No accuracy tolerance by default: the audit's estimate overstates the loss on volumes like
# the training data, so keeping 0.01 costs ~80 % of an all-expensive run there
# (docs/benchmarks.md, "The audit"); --tolerance 0.01 asks for it.
DEFAULT_TOLERANCE = None
