"""Tests for gdlab.double_descent: exact identities (spectral filters = their definitions, the GD
closed form = the GD loop) as property-based tests, and the closed forms against simulation."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from gdlab import double_descent as dd

FAST = settings(max_examples=25, deadline=None)


def data(n, N, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@FAST
@given(n=st.integers(2, 12), N=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_min_norm_solution_is_pseudo_inverse(n, N, seed):
    F, y = data(n, N, seed)
    beta = dd.min_norm_solution(F, y)
    torch.testing.assert_close(beta, torch.linalg.pinv(F) @ y, rtol=1e-8, atol=1e-8)


@FAST
@given(n=st.integers(2, 12), N=st.integers(1, 12), lam=st.floats(1e-3, 10.0), seed=st.integers(0, 10**6))
def test_ridge_solution_solves_normal_equations(n, N, lam, seed):
    F, y = data(n, N, seed)
    beta = dd.ridge_solution(F, y, lam)
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
    torch.testing.assert_close(dd.gd_solution(F, y, eta, steps), beta, rtol=1e-9, atol=1e-9)


@FAST
@given(P=st.integers(1, 12), N=st.integers(1, 12), frac=st.floats(0.1, 1.9), seed=st.integers(0, 10**6))
def test_spectral_gd_solution_equals_gd_iterates(P, N, frac, seed):
    """Advani & Saxe 2017: the discrete GD trajectory is the spectral formula, frozen subspace included."""
    X, _ = data(P, N, seed)
    g = torch.Generator().manual_seed(seed + 1)
    y, w0 = torch.randn(P, generator=g, dtype=X.dtype), torch.randn(N, generator=g, dtype=X.dtype)
    eta = frac / float(torch.linalg.eigvalsh(X.T @ X).max())
    loop = dd.gd_iterates(X, y, w0, eta, 40)
    closed = dd.spectral_gd_solution(X, y, w0, eta, range(41))
    assert float((loop - closed).abs().max()) < 1e-10


def test_frozen_subspace_keeps_its_initialization():
    X, y = data(5, 12, 0)
    w0 = torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=X.dtype)
    w = dd.spectral_gd_solution(X, y, w0, 0.5 / float(torch.linalg.eigvalsh(X.T @ X).max()), [10**6])[0]
    null = torch.eye(12, dtype=X.dtype) - torch.linalg.pinv(X) @ X
    torch.testing.assert_close(null @ w, null @ w0)


def test_ridgeless_risk_values():
    assert dd.ridgeless_risk(0.5, r2=1.0, sigma2=2.0) == pytest.approx(2.0)
    assert dd.ridgeless_risk(2.0, r2=1.0, sigma2=2.0) == pytest.approx(0.5 + 2.0)
    assert math.isinf(dd.ridgeless_risk(1.0))
    with pytest.raises(ValueError, match="gamma"):
        dd.ridgeless_risk([0.5, -1.0])


def test_isotropic_simulation_matches_hastie_closed_form():
    g = torch.Generator().manual_seed(0)
    gammas = [0.25, 0.5, 2.0, 4.0]
    emp = dd.isotropic_ridgeless_risk(100, gammas, 0.5, g, trials=4)
    np.testing.assert_allclose(emp, dd.ridgeless_risk(np.array(gammas), 1.0, 0.25), rtol=0.1)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_marchenko_pastur_density_mass_and_mean(alpha):
    lo, hi = dd.marchenko_pastur_edges(alpha)
    mass = integrate.quad(lambda x: dd.marchenko_pastur_density(x, alpha), lo, hi, limit=200)[0]
    assert mass == pytest.approx(min(alpha, 1.0), abs=1e-6)
    mean = integrate.quad(lambda x: x * dd.marchenko_pastur_density(x, alpha), lo, hi, limit=200)[0]
    assert mean == pytest.approx(alpha, abs=1e-6)  # E[lambda] = tr(X^T X)/N = P/N


def test_marchenko_pastur_matches_sample_spectrum():
    N, alpha = 400, 2.0
    X = torch.randn(int(alpha * N), N, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / math.sqrt(N)
    eig = torch.linalg.eigvalsh(X.T @ X).numpy()
    lo, hi = dd.marchenko_pastur_edges(alpha)
    assert eig.min() > lo - 0.1 and eig.max() < hi + 0.1
    theory = integrate.quad(lambda x: dd.marchenko_pastur_density(x, alpha), lo, 2.0)[0]
    assert np.mean(eig < 2.0) == pytest.approx(theory, abs=0.03)


def test_random_features_are_nested_and_validated():
    phi = dd.random_features(5, 20, torch.Generator().manual_seed(0), kind="fourier")
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(phi(x, 8), phi(x)[:, :8])
    assert (dd.random_features(5, 20, torch.Generator().manual_seed(0))(x) >= 0).all()
    with pytest.raises(ValueError, match="kind"):
        dd.random_features(5, 20, torch.Generator(), kind="tanh")
    with pytest.raises(ValueError, match="'N'"):
        dd.random_features(5, 0, torch.Generator())


def test_condition_number_matches_numpy():
    F, _ = data(6, 9, 1)
    assert float(dd.condition_number(F)) == pytest.approx(np.linalg.cond(F.numpy()), rel=1e-10)


def test_random_feature_curves_peak_at_interpolation():
    rf = dd.random_feature_curves(60, 10, [0.5, 1.0, 4.0], 0.5, torch.Generator().manual_seed(0), trials=2,
                                  gd_budgets=(10,), n_test=200)
    assert list(rf.num_features) == [30, 60, 240]
    assert rf.min_norm_test[1] > rf.min_norm_test[0] and rf.min_norm_test[1] > rf.min_norm_test[2]
    assert rf.condition.argmax() == 1
    assert rf.at(rf.min_norm_test, 1.02) == rf.min_norm_test[1]
    assert set(rf.gd_test) == {10}


def test_advani_saxe_curves_shapes_and_validation():
    cv = dd.advani_saxe_curves(30, 0.5, 0.5, 1.0, torch.Generator().manual_seed(0), [1, 10, 100], trials=2)
    assert cv.test_error.shape == (3,) and cv.eigenvalues.shape == (60,)
    assert 0 < cv.overtraining_ratio <= 1
    with pytest.raises(ValueError, match="alpha"):
        dd.advani_saxe_curves(30, -1.0, 0.5, 1.0, torch.Generator(), [1])


def test_model_wise_peak_on_a_synthetic_curve():
    widths = [2, 4, 8, 16, 32, 64]
    train = [0.6, 0.4, 0.2, 0.10, 0.01, 0.0]
    test = [0.60, 0.50, 0.52, 0.59, 0.58, 0.45]
    pk = dd.model_wise_peak(widths, train, test)
    # h* comes from the train curve alone: the first width with train error <= 2%
    assert pk["interpolation_width"] == 32 and pk["peak"] == 0.58 and pk["train_error_at_peak"] == 0.01
    assert pk["narrow_best"] == 0.50 and pk["widest"] == 0.45  # narrow: below 32 / 1.5, i.e. 2, 4, 8, 16
    assert pk["peak_minus_narrow"] == pytest.approx(0.08) and pk["peak_minus_widest"] == pytest.approx(0.13)
    # the top of the second ascent (after the best narrow width, not the width-2 underfit) is reported apart
    assert pk["highest_width"] == 16 and pk["highest"] == 0.59 and pk["train_error_at_highest"] == 0.10
    never = dd.model_wise_peak(widths, [0.5] * 6, test)
    assert never["interpolation_width"] is None and math.isnan(never["peak_minus_narrow"])
    assert math.isnan(dd.model_wise_peak(widths, [0.0] * 6, test)["peak_minus_narrow"])  # no narrow width


def test_model_wise_peak_validates_its_inputs():
    with pytest.raises(ValueError, match="widths"):
        dd.model_wise_peak([4, 2], [0.1, 0.0], [0.5, 0.4])
    with pytest.raises(ValueError, match="shapes"):
        dd.model_wise_peak([2, 4], [0.1], [0.5, 0.4])
    with pytest.raises(ValueError, match="interpolated"):
        dd.model_wise_peak([2, 4], [0.1, 0.0], [0.5, 0.4], interpolated=2.0)


def test_epoch_wise_bump_finds_fall_rise_fall():
    curve = np.concatenate([np.linspace(0.9, 0.5, 10), np.linspace(0.5, 0.6, 10), np.linspace(0.6, 0.55, 10)])
    bump = dd.epoch_wise_bump(curve, smooth=1)
    assert bump["rise"] == pytest.approx(0.1) and bump["fall"] == pytest.approx(0.05)
    assert (bump["t1"], bump["t2"], bump["t3"]) == (9, 19, 29)
    assert dd.epoch_wise_bump(np.linspace(0.9, 0.5, 20))["rise"] == 0.0  # monotone: no bump


def test_width_curves_average_over_seeds():
    from types import SimpleNamespace as NS
    results = [NS(point=NS(width=w), test_error=[0.9, e]) for w, e in ((4, 0.5), (4, 0.7), (2, 0.8))]
    widths, mean, std = dd.width_curves(results)
    assert list(widths) == [2, 4] and mean == pytest.approx([0.8, 0.6]) and std == pytest.approx([0.0, 0.1])
