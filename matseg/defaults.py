"""Defaults the command line shows in its help (a leaf module: no numpy, no torch)."""

# Tiles of 8 slices: each tile costs a fixed amount of reading, writing and scheduling per
# stage besides its model calls, which thinner tiles pay more often (docs/benchmarks.md).
# The models are 2-D, so the depth changes only how finely the selector decides along Z.
DEFAULT_TILE = (8, 256, 256)
