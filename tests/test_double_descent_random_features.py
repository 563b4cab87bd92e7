"""Tests for gdlab.double_descent.random_features: feature maps, the ridgeless closed forms
against simulation, the curves over N and the peak statistics."""
import math

import numpy as np
import pytest
import torch

from gdlab.double_descent import random_features as rf


def test_random_features_are_nested_scaled_and_validated():
    phi = rf.random_feature_map(5, 20, torch.Generator().manual_seed(0), kind="fourier")
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(phi(x, 8), phi(x)[:, :8])
    assert (rf.random_feature_map(5, 20, torch.Generator().manual_seed(0))(x) >= 0).all()
    wide = rf.random_feature_map(5, 20, torch.Generator().manual_seed(0), scale=3.0)
    torch.testing.assert_close(wide.weights, 3 * rf.random_feature_map(5, 20, torch.Generator().manual_seed(0)).weights)
    with pytest.raises(ValueError, match="kind"):
        rf.random_feature_map(5, 20, torch.Generator(), kind="tanh")
    with pytest.raises(ValueError, match="'N'"):
        rf.random_feature_map(5, 0, torch.Generator())


def test_standardize_uses_training_statistics():
    F = torch.randn(50, 4, dtype=torch.float64) * 3 + 2
    G = torch.randn(10, 4, dtype=torch.float64)
    Fs, Gs = rf.standardize(F, G)
    torch.testing.assert_close(Fs.mean(0), torch.zeros(4, dtype=F.dtype))
    torch.testing.assert_close(Fs.std(0), torch.ones(4, dtype=F.dtype))
    torch.testing.assert_close(Gs, (G - F.mean(0)) / F.std(0))


def test_ridgeless_risk_values():
    assert rf.ridgeless_risk(0.5, r2=1.0, sigma2=2.0) == pytest.approx(2.0)
    assert rf.ridgeless_risk(2.0, r2=1.0, sigma2=2.0) == pytest.approx(0.5 + 2.0)
    assert math.isinf(rf.ridgeless_risk(1.0))
    with pytest.raises(ValueError, match="gamma"):
        rf.ridgeless_risk([0.5, -1.0])


def test_isotropic_simulation_matches_the_exact_finite_n_risk():
    """For Gaussian X the finite-n min-norm risk is known exactly (inverse-Wishart means):
    sigma^2 p / (n - p - 1) below the threshold, r^2 (1 - n/p) + sigma^2 n / (p - n - 1) above it.
    Hastie's closed form is its n -> infinity limit, off by a relative 1 / (n |gamma - 1| - 1)."""
    n, sigma = 100, 0.5
    gammas = [0.5, 2.0]
    risk = rf.isotropic_risk(n, gammas, sigma, torch.Generator().manual_seed(0), trials=40)[0]
    exact = np.array([sigma**2 * 50 / (n - 50 - 1), (1 - n / 200) + sigma**2 * n / (200 - n - 1)])
    se = risk.std(0, ddof=1) / np.sqrt(len(risk))
    assert np.all(np.abs(risk.mean(0) - exact) < 4 * se)
    assert np.allclose(risk.mean(0), rf.ridgeless_risk(np.array(gammas), 1.0, sigma**2), rtol=0.06)


def test_optimal_ridge_beats_min_norm_most_near_the_threshold():
    mn, opt = rf.isotropic_risk(100, [0.8, 1.25], 0.5, torch.Generator().manual_seed(1), trials=5,
                                lams=(0.0, "optimal")).mean(1)
    assert np.all(opt < 0.5 * mn)
    assert rf.optimal_ridge_lambda(2.0, r2=1.0, sigma2=0.25) == pytest.approx(0.5)


def test_feature_curves_peak_at_interpolation_and_ridge_is_tuned_on_validation():
    grid = (1e-4, 1e-2, 1.0)
    curves = rf.feature_curves(60, 10, [0.5, 1.0, 4.0], 0.5, torch.Generator().manual_seed(0),
                               filters={"mn": rf.min_norm_filter}, trials=2, n_test=200, ridge_lambdas=grid)
    assert list(curves.num_features) == [30, 60, 240]
    mn = curves.mean("mn")
    assert mn[1] > mn[0] and mn[1] > mn[2]
    assert curves.condition.mean(0).argmax() == 1
    assert curves.mean("mn", "train")[1] < 1e-20  # interpolates at N = n
    assert set(np.unique(curves.ridge_lambda)) <= set(grid)
    assert curves.mean("ridge")[1] < mn[1]
    assert curves.index(1.02) == 1


def test_feature_curves_draw_on_the_generators_device():
    g = torch.Generator().manual_seed(0)
    a = rf.feature_curves(20, 3, [0.5, 2.0], 0.1, g, filters={"mn": rf.min_norm_filter}, trials=1, n_test=10)
    b = rf.feature_curves(20, 3, [0.5, 2.0], 0.1, torch.Generator().manual_seed(0),
                          filters={"mn": rf.min_norm_filter}, trials=1, n_test=10)
    assert np.array_equal(a.test["mn"], b.test["mn"])


def test_peak_prominence_is_above_one_only_for_a_peak():
    ratio = [0.5, 1.0, 2.0]
    assert rf.peak_prominence(ratio, [1.0, 5.0, 2.0]) == pytest.approx(2.5)
    assert rf.peak_prominence(ratio, [3.0, 2.0, 1.0]) < 1      # decreasing
    assert rf.peak_prominence(ratio, [1.0, 2.0, 3.0]) < 1      # increasing
    assert rf.peak_prominence(ratio, [1.0, 1.0, 1.0]) == 1     # flat
    with pytest.raises(ValueError, match="'at'"):
        rf.peak_prominence(ratio, [1.0, 2.0, 3.0], at=2.0)


def test_max_relative_rise():
    assert rf.max_relative_rise([3.0, 2.0, 1.0]) == 0.0
    assert rf.max_relative_rise([2.0, 1.0, 1.5, 1.2]) == pytest.approx(0.5)
