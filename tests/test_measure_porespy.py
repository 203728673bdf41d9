"""matseg measure against PoreSpy on the same labels (needs the measure-validation extra)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from matseg.microstructure.blocks import Reader
from matseg.microstructure.interfaces import local_metrics
from matseg.microstructure.thickness import local_thickness
from matseg.microstructure.tortuosity import tortuosity

ps = pytest.importorskip("porespy", reason="pip install -e '.[measure-validation]' to compare with PoreSpy")
pytest.importorskip("openpnm", reason="PoreSpy's tortuosity_fd needs OpenPNM (measure-validation extra)")


@pytest.fixture(scope="module")
def pores():
    """A tortuous pore space with dead ends and isolated pores (55 % solid)."""
    rng = np.random.default_rng(1)
    field = ndi.gaussian_filter(rng.normal(size=(28, 36, 36)), 2.5)
    return field > np.quantile(field, 0.55)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tortuosity_within_two_percent_of_porespy(pores, axis):
    theirs = ps.simulations.tortuosity_fd(pores, axis=axis)
    ours = tortuosity(pores, axis, tol=1e-8)
    assert ours["converged"]
    assert ours["eps"] == pytest.approx(theirs.effective_porosity, abs=1e-12)
    assert ours["tau"] == pytest.approx(theirs.tortuosity, rel=0.02)
    assert ours["tau"] > 1.2  # a tortuous structure, not a trivial one


def test_local_thickness_and_fractions_equal_porespy(pores):
    theirs = 2 * ps.filters.local_thickness(pores)  # radii -> diameters
    np.testing.assert_array_equal(local_thickness(pores, 12)[pores], theirs[pores])
    result = local_metrics(Reader(da.from_array(pores.astype(np.uint8), chunks=16)), 2, (1.0, 1.0, 1.0))
    assert result["fraction"][1] == ps.metrics.porosity(pores)
