"""glibc malloc tuned for tile after tile of inference, set before any thread starts
(by the ``matseg`` command, and in the environment of dask worker processes)."""

from __future__ import annotations

# (mallopt parameter, value) by environment name:
# - one arena: otherwise the few-MB arrays of tiles freed by one thread are not reused by
#   another, and peak memory creeps up with the number of tiles;
# - blocks up to 32 MiB (a slice's activations) from the heap, trimmed only past 256 MiB
#   free: otherwise glibc maps big blocks afresh and torch page-faults its activation
#   buffers again on every layer (the effect on speed: docs/benchmarks.md).
MALLOC_SETTINGS = {
    "MALLOC_ARENA_MAX": (-8, 1),  # M_ARENA_MAX
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20),  # M_MMAP_THRESHOLD
    "MALLOC_TRIM_THRESHOLD_": (-1, 256 << 20),  # M_TRIM_THRESHOLD
}


def tune_malloc() -> None:
    """glibc malloc set for tile after tile of inference (a no-op elsewhere); see MALLOC_SETTINGS."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for param, value in MALLOC_SETTINGS.values():
        mallopt(param, value)
