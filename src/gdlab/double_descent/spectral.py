"""Least-squares solvers as spectral filters of the data matrix.

With ``F = U diag(s) V^T`` (n samples, N features), every solver in this chapter is

    beta = V diag(f(s)) U^T y,

where ``f(s) = 1/s`` is the minimum-norm least-squares solution (Belkin et al. 2019; Hastie et
al. 2019), ``f(s) = s / (s^2 + n lambda)`` is ridge, and ``f(s) = (1 - (1 - eta s^2/n)^T) / s``
is T steps of gradient descent from zero (Advani & Saxe 2017; Liu & Flanigan 2023). The peak of
the test error at N = n comes from the smallest singular value: 1/s is huge there, while ridge
and a finite GD budget keep the filter bounded.
"""
from __future__ import annotations

import torch

from gdlab.runtime import check_float, check_int

__all__ = ["rank_cutoff", "gd_gain", "spectral_solution", "min_norm_solution", "ridge_solution",
           "gd_solution", "condition_number"]


def rank_cutoff(s: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """Mask of the singular values treated as nonzero: ``s > rcond * s_max`` (numerical rank)."""
    if rcond is None:
        rcond = torch.finfo(s.dtype).eps * max(s.shape[-1], 1) * 10
    return s > rcond * s.amax(-1, keepdim=True)


def gd_gain(eta_lam: torch.Tensor, t) -> torch.Tensor:
    """1 - (1 - eta lambda)^t: the fraction of a direction of curvature lambda that t steps of GD
    have fitted (discrete-time GD on a quadratic)."""
    return 1 - torch.pow(1 - eta_lam, t)


def spectral_solution(F: torch.Tensor, y: torch.Tensor, filt) -> torch.Tensor:
    """beta = V diag(filt(s)) U^T y for F = U diag(s) V^T (batched over leading dims)."""
    U, s, Vh = torch.linalg.svd(F, full_matrices=False)
    coef = filt(s) * (U.mT @ y.unsqueeze(-1)).squeeze(-1)
    return (Vh.mT @ coef.unsqueeze(-1)).squeeze(-1)


def min_norm_solution(F: torch.Tensor, y: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """The minimum-norm least-squares solution F^+ y: the interpolant of smallest norm when
    N >= n, ordinary least squares when N < n (Hastie et al. 2019, ridge with lambda -> 0)."""
    def filt(s):
        keep = rank_cutoff(s, rcond)
        return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return spectral_solution(F, y, filt)


def ridge_solution(F: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_beta (1/n) ||y - F beta||^2 + lambda ||beta||^2 (Hastie et al. 2019);
    lambda = 0 gives the min-norm solution."""
    lam = check_float("lam", lam, min=0.0)
    if lam == 0:
        return min_norm_solution(F, y)
    n = F.shape[-2]
    return spectral_solution(F, y, lambda s: s / (s * s + n * lam))


def gd_solution(F: torch.Tensor, y: torch.Tensor, eta: float, steps: int) -> torch.Tensor:
    """``steps`` steps of gradient descent on (1/2n) ||y - F beta||^2 from beta = 0, in closed
    form: the filter (1 - (1 - eta s^2/n)^T) / s (Liu & Flanigan 2023; Advani & Saxe 2017)."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=0)
    n = F.shape[-2]

    def filt(s):
        keep = rank_cutoff(s)
        safe = torch.where(keep, s, torch.ones_like(s))
        return torch.where(keep, gd_gain(eta * safe**2 / n, steps) / safe, torch.zeros_like(s))
    return spectral_solution(F, y, filt)


def condition_number(F: torch.Tensor) -> torch.Tensor:
    """s_max / s_min of F over its min(n, N) singular values (Liu & Flanigan 2023)."""
    s = torch.linalg.svdvals(F)
    return s[..., 0] / s[..., -1]
