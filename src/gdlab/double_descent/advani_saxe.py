"""Gradient descent in a linear teacher-student model (Advani & Saxe 2017).

A teacher w* labels P = alpha N inputs x ~ N(0, I/N) with noise sigma; a student starts at
w_0 ~ N(0, sigma0^2 I) and runs full-batch GD on (1/2)||y - X w||^2 (+ (wd/2)||w||^2). Each
eigendirection of X^T X evolves on its own, the eigenvalues follow the Marchenko-Pastur law,
directions with small eigenvalues amplify the noise late in training (overtraining, worst at
alpha = 1), and for alpha < 1 the null space of X never moves: the *frozen subspace* keeps
the initialization.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from gdlab.double_descent.spectral import gd_gain
from gdlab.runtime import check_float, check_int

__all__ = ["marchenko_pastur_edges", "marchenko_pastur_density", "gd_iterates",
           "spectral_gd_solution", "AdvaniSaxeCurves", "advani_saxe_curves"]


def marchenko_pastur_edges(alpha: float) -> tuple[float, float]:
    """Support [(1 - sqrt(alpha))^2, (1 + sqrt(alpha))^2] of the spectrum of X^T X for
    X (P, N) with entries N(0, 1/N) and alpha = P/N (the Marchenko-Pastur law used by Advani & Saxe 2017)."""
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    return (1 - math.sqrt(alpha)) ** 2, (1 + math.sqrt(alpha)) ** 2


def marchenko_pastur_density(lam, alpha: float):
    """Continuous part of the Marchenko-Pastur density of X^T X (entries N(0, 1/N), alpha = P/N):
    ``rho(lambda) = sqrt((lambda_+ - lambda)(lambda - lambda_-)) / (2 pi lambda)`` on the support.
    It integrates to min(alpha, 1); for alpha < 1 the remaining mass 1 - alpha sits at
    lambda = 0."""
    lo, hi = marchenko_pastur_edges(alpha)
    lam = np.asarray(lam, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.sqrt(np.clip((hi - lam) * (lam - lo), 0, None)) / (2 * math.pi * lam)
    rho = np.where((lam > lo) & (lam < hi) & (lam > 0), rho, 0.0)
    return float(rho) if rho.ndim == 0 else rho


def gd_iterates(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, eta: float, steps: int,
                weight_decay: float = 0.0) -> torch.Tensor:
    """Plain gradient descent on (1/2)||y - X w||^2 + (wd/2)||w||^2, the iterates w_0 .. w_steps
    (steps+1, N): the loop that :func:`spectral_gd_solution` solves in closed form."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=0)
    wd = check_float("weight_decay", weight_decay, min=0.0)
    w, out = w0.clone(), [w0.clone()]
    for _ in range(steps):
        w = w - eta * (X.mT @ (X @ w - y) + wd * w)
        out.append(w)
    return torch.stack(out)


def spectral_gd_solution(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, eta: float,
                         times: torch.Tensor | Sequence[int], weight_decay: float = 0.0) -> torch.Tensor:
    """The GD iterate of (1/2)||y - X w||^2 + (wd/2)||w||^2 at each step count in ``times``, in
    closed form (the discrete-time solution of Advani & Saxe 2017's linear model): with A = X^T X + wd I =
    V diag(mu) V^T,

        w_t = w_0 + V diag((1 - (1 - eta mu)^t) / mu) V^T (X^T y - A w_0).

    Without weight decay, directions with mu = 0 (the null space of X) keep their initial value:
    the frozen subspace. Returns (len(times), N)."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    wd = check_float("weight_decay", weight_decay, min=0.0)
    t = torch.as_tensor(times, dtype=X.dtype, device=X.device).reshape(-1, 1)
    lam, V = torch.linalg.eigh(X.mT @ X)
    mu = lam + wd
    g = V.mT @ (X.mT @ (y - X @ w0) - wd * w0)  # minus the gradient at w0, in the eigenbasis
    tiny = lam.abs().amax() * torch.finfo(X.dtype).eps * X.shape[-1]
    live = mu > tiny
    safe = torch.where(live, mu, torch.ones_like(mu))
    gain = torch.where(live, gd_gain(eta * safe, t) / safe, eta * t)
    return w0 + (gain * g) @ V.mT


@dataclass
class AdvaniSaxeCurves:
    """Generalization error E_g(t) = ||w_t - w*||^2 / N + sigma^2 over GD time, one row per
    trial, for students started at w_0 and, on the same data, at w_0 = 0."""

    alpha: float
    times: np.ndarray
    test_error: np.ndarray            # (trials, len(times)) from w_0 ~ N(0, sigma0^2 I)
    test_error_zero_init: np.ndarray  # (trials, len(times)) from w_0 = 0
    eigenvalues: np.ndarray           # spectrum of X^T X of all trials (for the MP histogram)

    @property
    def overtraining_ratio(self) -> float:
        """min_t E_g(t) / E_g(t_last) of the trial-mean curve: near 0 when early stopping helps
        a lot (Advani & Saxe 2017: worst at alpha = 1)."""
        e = self.test_error.mean(0)
        return float(e.min() / e[-1])

    @property
    def frozen_excess(self) -> np.ndarray:
        """Per trial, E_g at the last time minus the same run from w_0 = 0: what the
        initialization still costs after training (Advani & Saxe 2017's frozen subspace)."""
        return self.test_error[:, -1] - self.test_error_zero_init[:, -1]


def advani_saxe_curves(N: int, alpha: float, sigma: float, sigma0: float, generator: torch.Generator,
                       times: Sequence[int], trials: int = 10, sigma_w: float = 1.0,
                       weight_decay: float = 0.0) -> AdvaniSaxeCurves:
    """Linear teacher-student regression (Advani & Saxe 2017): teacher w* ~ N(0, sigma_w^2 I),
    P = alpha N inputs x ~ N(0, I/N), labels y = w*.x + N(0, sigma^2), student w_0 ~ N(0, sigma0^2 I),
    full-batch GD with eta = 1 / lambda_+ (stable on the whole MP support) and optional weight
    decay. Everything, the error at the last time included, comes from the GD trajectory
    (:func:`spectral_gd_solution`). Draws on the generator's device, in float64."""
    N = check_int("N", N, min=2)
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    sigma, sigma0 = check_float("sigma", sigma, min=0.0), check_float("sigma0", sigma0, min=0.0)
    trials = check_int("trials", trials, min=1)
    P = max(1, round(alpha * N))
    eta = 1.0 / (marchenko_pastur_edges(alpha)[1] + weight_decay)
    opts = dict(generator=generator, dtype=torch.float64, device=generator.device)
    curves, curves0, eigs = [], [], []
    for _ in range(trials):
        X = torch.randn(P, N, **opts) / math.sqrt(N)
        w_star = sigma_w * torch.randn(N, **opts)
        y = X @ w_star + sigma * torch.randn(P, **opts)
        w0 = sigma0 * torch.randn(N, **opts)
        err = lambda w: ((w - w_star) ** 2).sum(-1) / N + sigma**2  # noqa: E731
        curves.append(err(spectral_gd_solution(X, y, w0, eta, times, weight_decay)))
        curves0.append(err(spectral_gd_solution(X, y, torch.zeros_like(w0), eta, times, weight_decay)))
        eigs.append(torch.linalg.eigvalsh(X.mT @ X))
    host = lambda ts: torch.stack(ts).cpu().numpy()  # noqa: E731
    return AdvaniSaxeCurves(alpha, np.asarray(times, dtype=float), host(curves), host(curves0),
                            torch.cat(eigs).cpu().numpy())
