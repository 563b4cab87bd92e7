"""Optimization decides whether the double-descent peak appears (Liu & Flanigan 2023).

Liu & Flanigan (abstract) argue that "model-wise double descent is observed if and
only if the optimizer can find a sufficiently low-loss minimum", and that initialization,
normalization, batch size, learning rate and the optimizer all act through the condition number
of the problem. Gradient descent from zero on random features is a spectral filter
(:mod:`gdlab.double_descent.spectral`): after T steps at step size eta, a direction with
singular value s is fitted to the fraction 1 - (1 - eta s^2 / n)^T. Near N = n the smallest
singular values are tiny, so these directions are fitted, and their noise amplified, only when
eta T s_min^2 / n is large: the budget, the learning rate and the conditioning of F (set by the
initialization of the random weights) decide whether the optimizer gets there.
"""
from __future__ import annotations

import numpy as np

from gdlab.double_descent.random_features import FeatureCurves, Filter, peak_prominence
from gdlab.double_descent.spectral import gd_gain
from gdlab.runtime import check_float, check_int

__all__ = ["gd_filter", "peak_summary"]


def gd_filter(steps: int, lr_scale: float = 1.0) -> Filter:
    """The filter of ``steps`` GD steps from zero on (1/2n)||y - F beta||^2 at step size
    eta = lr_scale / lambda_max, with lambda_max = s_max^2 / n the largest curvature
    (lr_scale = 1: the largest step that is stable and monotone in every direction)."""
    steps = check_int("steps", steps, min=0)
    lr_scale = check_float("lr_scale", lr_scale, min=0.0, open_min=True, max=2.0)

    def filt(s, n):
        eta = lr_scale * n / float(s[0]) ** 2
        return gd_gain(eta * s**2 / n, steps) / s
    return filt


def peak_summary(curves: FeatureCurves, name: str) -> dict:
    """What Liu & Flanigan relate: the peak
    (:func:`~gdlab.double_descent.random_features.peak_prominence` of the trial-mean test MSE at
    N = n), the training MSE reached at N = n, the median cond(F) there and the best test MSE over N (how good the model is anywhere)."""
    j = curves.index(1.0)
    test = curves.mean(name)
    return {"peak": peak_prominence(curves.ratio, test), "train_mse_at_n": float(curves.mean(name, "train")[j]),
            "cond_at_n": float(np.median(curves.condition[:, j])), "best_test_mse": float(test.min())}
