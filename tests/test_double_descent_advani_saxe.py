"""Tests for gdlab.double_descent.advani_saxe: the closed-form GD trajectory equals the GD loop
(with and without weight decay), the frozen subspace, and the Marchenko-Pastur law."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from gdlab.double_descent import advani_saxe as asx

FAST = settings(max_examples=25, deadline=None)


def problem(P, N, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    return X, torch.randn(P, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)


@FAST
@given(P=st.integers(1, 12), N=st.integers(1, 12), frac=st.floats(0.1, 1.9), wd=st.sampled_from([0.0, 0.01, 0.5]),
       seed=st.integers(0, 10**6))
def test_spectral_gd_solution_equals_gd_iterates(P, N, frac, wd, seed):
    """Advani & Saxe 2017: the discrete GD trajectory is the spectral formula, frozen subspace included."""
    X, y, w0 = problem(P, N, seed)
    eta = frac / (float(torch.linalg.eigvalsh(X.T @ X).max()) + wd)
    loop = asx.gd_iterates(X, y, w0, eta, 40, weight_decay=wd)
    closed = asx.spectral_gd_solution(X, y, w0, eta, range(41), weight_decay=wd)
    assert float((loop - closed).abs().max()) < 1e-10


def test_frozen_subspace_keeps_its_initialization_and_weight_decay_forgets_it():
    X, y, w0 = problem(5, 12, 0)
    eta = 0.5 / float(torch.linalg.eigvalsh(X.T @ X).max())
    null = torch.eye(12, dtype=X.dtype) - torch.linalg.pinv(X) @ X
    w = asx.spectral_gd_solution(X, y, w0, eta, [10**6])[0]
    torch.testing.assert_close(null @ w, null @ w0)
    w_wd = asx.spectral_gd_solution(X, y, w0, eta, [10**6], weight_decay=1e-2)[0]  # decays as (1 - eta wd)^t
    assert float((null @ w_wd).norm()) < 1e-10


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_marchenko_pastur_density_mass_and_mean(alpha):
    lo, hi = asx.marchenko_pastur_edges(alpha)
    mass = integrate.quad(lambda x: asx.marchenko_pastur_density(x, alpha), lo, hi, limit=200)[0]
    assert mass == pytest.approx(min(alpha, 1.0), abs=1e-6)
    mean = integrate.quad(lambda x: x * asx.marchenko_pastur_density(x, alpha), lo, hi, limit=200)[0]
    assert mean == pytest.approx(alpha, abs=1e-6)  # E[lambda] = tr(X^T X)/N = P/N


def test_marchenko_pastur_matches_sample_spectrum():
    N, alpha = 400, 2.0
    X = torch.randn(int(alpha * N), N, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / math.sqrt(N)
    eig = torch.linalg.eigvalsh(X.T @ X).numpy()
    lo, hi = asx.marchenko_pastur_edges(alpha)
    assert eig.min() > lo - 0.1 and eig.max() < hi + 0.1
    theory = integrate.quad(lambda x: asx.marchenko_pastur_density(x, alpha), lo, 2.0)[0]
    assert np.mean(eig < 2.0) == pytest.approx(theory, abs=0.03)


def test_advani_saxe_curves_shapes_frozen_excess_and_validation():
    times = [1, 10, 100, 10**6]
    cv = asx.advani_saxe_curves(40, 0.5, 0.5, 1.0, torch.Generator().manual_seed(0), times, trials=30)
    assert cv.test_error.shape == (30, 4) and cv.test_error_zero_init.shape == (30, 4)
    assert cv.eigenvalues.shape == (30 * 40,)
    assert 0 < cv.overtraining_ratio <= 1
    # the frozen half of the init costs (1 - alpha) sigma0^2 on average (per-trial spread ~ 1/sqrt(N))
    assert cv.frozen_excess.mean() == pytest.approx(0.5, abs=0.15)
    forget = asx.advani_saxe_curves(40, 0.5, 0.5, 1.0, torch.Generator().manual_seed(0), times, trials=5,
                                    weight_decay=1e-3)
    assert np.abs(forget.frozen_excess).max() < 1e-6
    with pytest.raises(ValueError, match="alpha"):
        asx.advani_saxe_curves(30, -1.0, 0.5, 1.0, torch.Generator(), [1])
