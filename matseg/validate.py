"""Checks of the numbers and label images a user gives, before anything is written.

Each check names the bad value and what would be accepted: a NaN learning rate,
an infinite budget or an image given where labels belong never reach the
computation.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np

from matseg.errors import MatsegError

UNLABELLED = 255
# the largest value float32 holds: normalised intensities are float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_number(
    name: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Refuse a number that is NaN, infinite or outside ``[low, high]`` (``open_*``: that end excluded).

    ``None`` (not given) passes.
    """
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MatsegError(f"{name} must be a number, got {value!r}") from None
    below = low is not None and (number <= low if open_low else number < low)
    above = high is not None and (number >= high if open_high else number > high)
    if math.isfinite(number) and not below and not above:
        return
    if low is not None and high is not None:
        wanted = f"a finite number between {low:g} and {high:g}"
        excluded = [f"{v:g}" for v, o in ((low, open_low), (high, open_high)) if o]
        wanted += f" (not {' or '.join(excluded)})" if excluded else ""
    elif low is not None:
        wanted = f"a finite number {'above' if open_low else 'at least'} {low:g}"
    elif high is not None:
        wanted = f"a finite number {'below' if open_high else 'at most'} {high:g}"
    else:
        wanted = "a finite number"
    raise MatsegError(f"{name} must be {wanted}, got {value}")


def check_label_dtype(dtype, source: str, role: str) -> None:
    """Labels are integers: refuse a floating-point image given as labels."""
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype.kind == "b"):
        raise MatsegError(
            f"{role} {source} holds {dtype} values: that is an image, not labels; give the integer "
            "label image (phase 0, 1, ...; 255 = unlabelled)"
        )


def check_label_values(data, n_phases: int, source: str, role: str, unlabelled: bool = True) -> None:
    """Every label is a phase (0 .. ``n_phases`` - 1), or 255 (unlabelled) where ``unlabelled``.

    ``data`` is a dask or numpy array; a dask array is checked in one streaming pass.

    Raises
    ------
    MatsegError
        With the number of voxels outside the phases and the largest such value.
    """
    check_label_dtype(data.dtype, source, role)
    bad = (data < 0) | (data >= n_phases)
    if unlabelled:
        bad &= data != UNLABELLED
    if isinstance(data, da.Array):
        count, smallest, largest = dask.compute(
            bad.sum(), da.where(bad, data, 0).min(), da.where(bad, data, 0).max()
        )
    else:
        count = int(bad.sum())
        smallest, largest = (data[bad].min(), data[bad].max()) if count else (0, 0)
    if int(count):
        allowed = f"0..{n_phases - 1}, 255 = unlabelled" if unlabelled else f"0..{n_phases - 1}"
        hint = "is it an image rather than labels?" if unlabelled else "every voxel needs one of the phases"
        span = f"from {int(smallest)}" + (f" up to {int(largest)}" if int(largest) > 0 else "")
        raise MatsegError(
            f"{role} {source} has {int(count):,} voxels with values outside the {n_phases} phases "
            f"({allowed}), {span if int(smallest) < 0 else f'up to {int(largest)}'}: {hint}"
        )


def check_intensities(source: str, smallest: float, largest: float, low: float, high: float) -> None:
    """Intensities normalisation can represent: finite, within float32, and a finite normalised range.

    ``smallest``/``largest``: the volume's extreme values; ``low``/``high``: its robust range.
    """
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise MatsegError(f"{source} contains NaN or infinite values; clean or mask them first")
    scale = high - low if high > low else 1.0
    reach = max(abs(smallest), abs(largest))
    spread = max(abs(smallest - low), abs(largest - low)) / scale
    if reach > FLOAT32_MAX or not math.isfinite(spread) or spread > FLOAT32_MAX:
        raise MatsegError(
            f"{source} holds values from {smallest:g} to {largest:g} (robust range {low:g} to {high:g}), "
            f"beyond what matseg's float32 normalisation represents (±{FLOAT32_MAX:.3g}); rescale the volume"
        )


def check_phase_names(phases, hint: str = "") -> None:
    """At least two phases, each named, no name twice (``hint``: what the message adds)."""
    if len(phases) < 2 or not all(str(p).strip() for p in phases) or len(set(phases)) != len(phases):
        raise MatsegError(f"--phases '{','.join(phases)}': give at least 2 distinct, non-empty names{hint}")
