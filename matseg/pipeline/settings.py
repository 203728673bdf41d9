"""What a segment run is asked to do, checked in one place before anything is read."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from matseg.candidates.registry import CANDIDATES
from matseg.defaults import DEFAULT_TOLERANCE
from matseg.errors import MatsegError
from matseg.validate import check_number, check_phase_names

MODES = ("auto", *CANDIDATES)
AUDIT_OPTIONS = {  # option: Settings field
    "--audit-fraction": "audit_fraction",
    "--reference": "reference",
    "--tolerance": "tolerance",
    "--no-recalibrate": "recalibrate",
    "audit_seed": "audit_seed",  # the API's only
}
MAX_CLASSICAL_PHASES = 8  # intensity classes multi-Otsu separates in seconds (matseg.normalize)


@dataclass(frozen=True)
class Settings:
    """The settings of a segment run; invalid combinations are refused when it is made.

    Parameters
    ----------
    model : str
        ``auto`` (default): the cheap pass everywhere and, where the selector
        says so, a costlier candidate. Or one candidate for every tile:
        ``cheap``, ``medium``, ``expensive``, ``expensive-2x``, ``classical``.
    lam : float, optional
        Accuracy/cost trade-off λ in [0, 1] for ``auto``: higher spends less.
        Default: the selector's own, picked at training time as the largest λ
        that stayed within 0.01 mIoU of all-expensive on its training tiles (of its
        most accurate candidate, for a selector without the expensive net).
    budget_gflops : float, optional
        Instead of λ: a hard cap on the GFLOPs of the whole run.
    max_expensive_fraction : float, optional
        Instead of λ: at most this fraction of tiles runs a costlier candidate.
    weights : path, optional
        A folder written by ``matseg train`` (and ``train-selector``); default: the bundled weights.
    tile : sequence of int, optional
        Tile size per axis (default 8 x 256 x 256, in-plane multiples of the stride).
    halo : int, optional
        In-plane halo; default and minimum: the models' receptive radius.
    batch_tiles : int
        Tiles whose slices a model runs in one forward pass, from the tiles a process's
        threads run at once (:class:`matseg.models.inference.TileBatcher`): 1 (default)
        runs each tile on its own; more keep a GPU's kernels full. Same output on a CPU,
        where it is slower (docs/benchmarks.md). On a GPU the cheap pass is not batched:
        its results are reduced on the device tile by tile.
    phases : sequence of str, optional
        With ``model="classical"`` only: the volume's phase names, dark to bright (as many as
        it has intensity classes); the run then needs no network weights at all. Default:
        the phases the weights name.
    audit_fraction : float
        With ``auto``: the fraction of the cells the selector did not send to ``reference``
        that the reference also runs on, drawn at random by stratum (:mod:`matseg.pipeline.audit`);
        its answer is kept there, and what it finds gives the report's ``estimate`` of how far
        the run's mIoU falls below an all-reference run's, with a 95 % interval. 0 turns it off.
    reference : str, optional
        The candidate the audit measures against: the most accurate one. Default: the one that
        scored best on the selector's own labelled training tiles (its record's
        ``mean_tile_iou``; ``expensive`` for the bundled weights, the classical candidate for a
        selector trained on the EMPS micrographs), ``expensive`` if it records none.
    audit_seed : int
        The seed of the audit's draw of cells (the same seed, the same cells).
    tolerance : float or None
        With ``auto`` and an audit: the most mIoU the run may lose against an all-reference run
        at 95 % confidence. Where the audit's interval reaches below ``-tolerance``, strata of
        tiles move to costlier candidates until it no longer does, then to cheaper ones while
        it stays within (:mod:`matseg.pipeline.escalate`); a budget caps this too. None (the
        default): the audit recalibrates the plan instead (``recalibrate``).
    recalibrate : bool
        With ``auto``, an audit, λ and no tolerance (the default): each stratum of tiles takes
        the candidate that the selector's own trade-off picks when the gains are the ones the
        audit measured on this volume, not the ones the policy predicted
        (:func:`matseg.pipeline.escalate.plan_recalibration`). False: the selector's plan stands
        whatever the audit finds.

    Examples
    --------
    >>> Settings(lam=0.03, tile=(8, 256, 256)).model
    'auto'
    """

    model: str = "auto"
    lam: float | None = None
    budget_gflops: float | None = None
    max_expensive_fraction: float | None = None
    weights: str | os.PathLike | None = None
    tile: tuple[int, ...] | None = None
    halo: int | None = None
    batch_tiles: int = 1
    phases: tuple[str, ...] | None = None
    audit_fraction: float = 0.03
    reference: str | None = None
    audit_seed: int = 0
    tolerance: float | None = DEFAULT_TOLERANCE
    recalibrate: bool = True

    def __post_init__(self) -> None:
        if self.tile is not None:
            object.__setattr__(self, "tile", _whole_numbers("tile", self.tile))
            # (the multiple of the models' stride it must be is known once the weights are read)
            if len(self.tile) not in (2, 3) or min(self.tile) <= 0:
                raise MatsegError(f"tile {self.tile}: give 2 (Y, X) or 3 (Z, Y, X) positive sizes")
        if self.halo is not None:
            object.__setattr__(self, "halo", _whole_numbers("halo", [self.halo])[0])
            if self.halo < 0:
                raise MatsegError(f"halo {self.halo}: give a size of at least 0")
        if not isinstance(self.batch_tiles, int) or self.batch_tiles < 1:
            raise MatsegError(
                f"batch_tiles must be a whole number of tiles, at least 1; got {self.batch_tiles!r}"
            )
        if self.phases is not None:
            object.__setattr__(self, "phases", tuple(str(p).strip() for p in self.phases))
            _check_phases(self.model, self.phases)
        _check_options(self.model, self.lam, self.budget_gflops, self.max_expensive_fraction)
        if self.model != "auto":  # the audit's settings: a single model has no audit to apply them to
            given = [
                option
                for option, name in AUDIT_OPTIONS.items()
                if getattr(self, name) != next(f.default for f in fields(self) if f.name == name)
            ]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise MatsegError(
                    f"{' and '.join(given)} only {verb} with --model auto (the selector's audit); "
                    f"--model {self.model} runs one candidate on every tile, with no audit"
                )
        check_number("--audit-fraction", self.audit_fraction, low=0.0, high=1.0)
        check_number("--tolerance", self.tolerance, low=0.0, high=1.0)
        if self.reference is not None and (self.reference not in CANDIDATES or self.reference == "cheap"):
            others = ", ".join(n for n in CANDIDATES if n != "cheap")
            raise MatsegError(f"--reference {self.reference}: choose one of {others}")

    @classmethod
    def of(cls, settings: Settings | None = None, **changes) -> Settings:
        """``settings`` (default: the defaults) with ``changes`` (``lam=0.03``, ``tile=...``)."""
        if settings is not None and not isinstance(settings, Settings):
            raise MatsegError(
                f"settings must be a matseg.Settings, got {type(settings).__name__}; give its fields "
                "as keywords, e.g. matseg.segment(input, output, model='cheap')"
            )
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; Settings has {_names()}")
        return replace(settings or cls(), **changes) if changes else settings or cls()


def _whole_numbers(name: str, values) -> tuple[int, ...]:
    """``values`` as whole numbers: a fraction or text is refused, not truncated."""
    if isinstance(values, str | bytes):
        raise MatsegError(f"{name} {values!r}: give whole numbers, e.g. (8, 256, 256), not text")
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise MatsegError(f"{name} {values!r}: give whole numbers") from None
    if not all(math.isfinite(v) and v == int(v) for v in numbers):
        raise MatsegError(f"{name} {tuple(values)}: give whole numbers")
    return tuple(int(v) for v in numbers)


def _check_phases(model: str, phases: tuple[str, ...]) -> None:
    if model != "classical":
        raise MatsegError(
            f"--phases names the phases of --model classical; --model {model} takes the phases "
            "its weights name"
        )
    check_phase_names(phases, ", dark to bright")
    if len(phases) > MAX_CLASSICAL_PHASES:
        raise MatsegError(
            f"--phases names {len(phases)} phases; the classical candidate tells at most "
            f"{MAX_CLASSICAL_PHASES} apart by intensity: train a network for more (matseg train)"
        )


def _names() -> str:
    return ", ".join(f.name for f in fields(Settings))


def _check_options(model, lam, budget_gflops, max_expensive_fraction) -> None:
    if model not in MODES:
        raise MatsegError(f"unknown model '{model}'; choose from {', '.join(MODES)}")
    chosen = [n for n, v in (("--lambda", lam), ("--budget-gflops", budget_gflops)) if v is not None]
    if max_expensive_fraction is not None:
        chosen.append("--max-expensive-fraction")
    if model != "auto" and chosen:
        verb = "applies" if len(chosen) == 1 else "apply"
        raise MatsegError(f"{' and '.join(chosen)} only {verb} with --model auto (the selector)")
    check_number("--lambda", lam, low=0.0, high=1.0)
    check_number("--budget-gflops", budget_gflops, low=0.0, open_low=True)
    check_number("--max-expensive-fraction", max_expensive_fraction, low=0.0, high=1.0)
    if lam is not None and len(chosen) > 1:
        raise MatsegError("give either --lambda or a budget (--budget-gflops / --max-expensive-fraction)")
