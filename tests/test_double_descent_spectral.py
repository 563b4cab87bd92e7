"""Tests for gdlab.double_descent.spectral: each spectral filter equals its definition
(property-based: pseudo-inverse, normal equations, the GD loop)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.double_descent import spectral

FAST = settings(max_examples=25, deadline=None)


def data(n, N, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@FAST
@given(n=st.integers(2, 12), N=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_min_norm_solution_is_pseudo_inverse(n, N, seed):
    F, y = data(n, N, seed)
    torch.testing.assert_close(spectral.min_norm_solution(F, y), torch.linalg.pinv(F) @ y, rtol=1e-8, atol=1e-8)


@FAST
@given(n=st.integers(2, 12), N=st.integers(1, 12), lam=st.floats(1e-3, 10.0), seed=st.integers(0, 10**6))
def test_ridge_solution_solves_normal_equations(n, N, lam, seed):
    F, y = data(n, N, seed)
    beta = spectral.ridge_solution(F, y, lam)
    lhs = (F.T @ F / n + lam * torch.eye(N, dtype=F.dtype)) @ beta
    torch.testing.assert_close(lhs, F.T @ y / n, rtol=1e-9, atol=1e-9)


@FAST
@given(n=st.integers(2, 10), N=st.integers(1, 10), steps=st.integers(0, 30), frac=st.floats(0.1, 1.9),
       seed=st.integers(0, 10**6))
def test_gd_solution_equals_gd_loop(n, N, steps, frac, seed):
    F, y = data(n, N, seed)
    eta = frac * n / float(torch.linalg.matrix_norm(F, 2)) ** 2  # any stable step, eta lambda_max < 2
    beta = torch.zeros(N, dtype=F.dtype)
    for _ in range(steps):
        beta = beta - eta * F.T @ (F @ beta - y) / n
    torch.testing.assert_close(spectral.gd_solution(F, y, eta, steps), beta, rtol=1e-9, atol=1e-9)


def test_ridge_at_zero_is_min_norm_and_inputs_are_checked():
    F, y = data(5, 8, 0)
    torch.testing.assert_close(spectral.ridge_solution(F, y, 0.0), spectral.min_norm_solution(F, y))
    with pytest.raises(ValueError, match="lam"):
        spectral.ridge_solution(F, y, -1.0)
    with pytest.raises(ValueError, match="eta"):
        spectral.gd_solution(F, y, 0.0, 3)


def test_condition_number_matches_numpy():
    F, _ = data(6, 9, 1)
    assert float(spectral.condition_number(F)) == pytest.approx(np.linalg.cond(F.numpy()), rel=1e-10)
