"""Tests for gdlab.double_descent.optimization_gate."""
import numpy as np
import pytest
import torch

from gdlab.double_descent import optimization_gate as gate
from gdlab.double_descent import random_features as rf
from gdlab.double_descent.spectral import gd_solution


def test_gd_filter_is_gd_at_a_step_relative_to_the_largest_curvature():
    g = torch.Generator().manual_seed(0)
    F, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(F, full_matrices=False)
    beta = Vh.T @ (gate.gd_filter(30, 0.5)(s, 8) * (U.T @ y))
    eta = 0.5 * 8 / float(s[0]) ** 2
    torch.testing.assert_close(beta, gd_solution(F, y, eta, 30))
    with pytest.raises(ValueError, match="lr_scale"):
        gate.gd_filter(10, 2.5)


def test_peak_summary_sees_the_peak_only_when_the_loss_at_n_is_low():
    curves = rf.feature_curves(40, 5, [0.5, 0.8, 1.0, 1.25, 2.0], 0.5, torch.Generator().manual_seed(0),
                               filters={"exact": rf.min_norm_filter, "short": gate.gd_filter(10)}, trials=3,
                               n_test=200)
    exact, short = gate.peak_summary(curves, "exact"), gate.peak_summary(curves, "short")
    assert exact["train_mse_at_n"] < 1e-20 < short["train_mse_at_n"]
    assert exact["peak"] > 2 > short["peak"]
    assert exact["cond_at_n"] == short["cond_at_n"] and np.isfinite(exact["best_test_mse"])
