"""Tests for gdlab.stability.spectrum: outlier counting and the trained-classifier spectrum."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import spectrum


@settings(max_examples=30, deadline=None)
@given(n_out=st.integers(1, 12), n_bulk=st.integers(1, 12), seed=st.integers(0, 1000))
def test_outlier_count_finds_the_planted_gap(n_out, n_bulk, seed):
    """Exact: outliers in [50, 60], bulk in [0.5, 1]; every within-group ratio is < 2 < 50."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.cat([50 + 10 * torch.rand(n_out, generator=g, dtype=torch.float64),
                      0.5 + 0.5 * torch.rand(n_bulk, generator=g, dtype=torch.float64)])
    assert spectrum.outlier_count(vals.sort(descending=True).values) == n_out


def test_outlier_count_validation():
    with pytest.raises(ValueError, match="'eigenvalues'"):
        spectrum.outlier_count(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="descending"):
        spectrum.outlier_count(torch.tensor([1.0, 2.0]))


def test_mixture_classifier_spectrum_small():
    s = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), n=60, dim=5, steps=50,
                                             k=6, n_steps=20)
    assert s.top.shape == (6,) and bool((s.top[:-1] >= s.top[1:]).all())
    assert 1 <= s.n_outliers <= 5 and s.num_params == 5 * 8 + 8 + 8 * 3 + 3
    assert abs(float(torch.trapezoid(s.density, s.grid)) - 1) < 1e-10
    with pytest.raises(ValueError, match="'num_classes'"):
        spectrum.mixture_classifier_spectrum(8, 1, torch.Generator())


def test_eigenvalue_count_counts_parameters_and_uses_the_shared_grid():
    """Over the whole grid the SLQ count is P (the density integrates to 1); a passed grid and sigma are used."""
    grid = torch.linspace(-20, 80, 1001, dtype=torch.float64)
    s = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), n=60, dim=5, steps=50,
                                             k=6, n_steps=20, grid=grid, sigma=0.5)
    assert torch.equal(s.grid, grid)
    assert spectrum.eigenvalue_count(s, -20.0, 80.0) == pytest.approx(s.num_params, rel=1e-9)
    mid = float(grid[210])   # a grid point (about 1.0), shared by the two halves
    lo, hi = spectrum.eigenvalue_count(s, -20.0, mid), spectrum.eigenvalue_count(s, mid, 80.0)
    assert lo + hi == pytest.approx(s.num_params, rel=1e-9) and 0 < hi < s.num_params
    assert spectrum.eigenvalue_count(s, 100.0, 200.0) == 0.0
    with pytest.raises(ValueError, match="'lo', 'hi'"):
        spectrum.eigenvalue_count(s, 1.0, 1.0)
