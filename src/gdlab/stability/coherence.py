"""Hessian coherence (Dexter, Ocejo, Keerthi, Gupta, Acharya & Khanna 2024).

``S_ij = sqrt(Tr(H_i H_j))`` for PSD per-sample Hessians, and the coherence measure
``sigma = lambda_1(S) / max_i lambda_1(H_i)`` (Dexter et al. 2024, Def. 1). For rank-one
Hessians it runs from 1 (orthogonal directions: SGD noise is large) to n (all aligned); Hessians
of higher rank can have sigma > n. With B, eta and the sharpness it decides whether SGD diverges
(their Thm 1 and Sec. 5 synthetic experiments).

Their Thm 1, for batches in which each sample is kept with probability B/n: linearized SGD
diverges when ``(eta lambda_1(H) / sigma)^2 (n/B - 1) > 1``. We read the condition in Chang &
Khanna 2025 (App. C.7), who restate it; :func:`divergence_step` gives the step it names.
"""
from __future__ import annotations

import math

import torch

from gdlab.runtime import check_float, check_int

__all__ = ["coherence_matrix", "coherence", "equiangular_hessians", "aligned_hessians",
           "divergence_step"]


def coherence_matrix(per_sample_hessians: torch.Tensor) -> torch.Tensor:
    """``S_ij = sqrt(Tr(H_i H_j))`` (Dexter et al. 2024, Def. 1)."""
    H = per_sample_hessians
    if H.dim() != 3 or H.shape[1] != H.shape[2]:
        raise ValueError(f"parameter 'per_sample_hessians': got shape {tuple(H.shape)}; expected (n, d, d)")
    gram = torch.einsum("iab,jba->ij", H, H)
    return gram.clamp_min(0).sqrt()


def coherence(per_sample_hessians: torch.Tensor) -> float:
    """``sigma = lambda_1(S) / max_i lambda_1(H_i)``."""
    S = coherence_matrix(per_sample_hessians)
    top = torch.linalg.eigvalsh(per_sample_hessians)[:, -1].max()
    return float(torch.linalg.eigvalsh(S)[-1] / top)


def equiangular_hessians(n: int, sigma: float, lam: float = 1.0, *, dtype=torch.float64) -> torch.Tensor:
    """Rank-one Hessians ``lam u_i u_i^T`` with ``|<u_i, u_j>| = rho`` for all i != j, in d = n + 1 dims.

    ``u_i = sqrt(rho) e_0 + sqrt(1 - rho) e_i`` gives ``S = lam((1 - rho) I + rho 11^T)``, so
    ``sigma = 1 + (n - 1) rho``: any designed sigma in [1, n] is hit exactly. This follows the spirit
    of Dexter et al. 2024, Sec. 5 (synthetic Hessians of designed coherence); the exact
    construction is ours.
    """
    n = check_int("n", n, min=2)
    sigma = check_float("sigma", sigma, min=1.0, max=float(n))
    lam = check_float("lam", lam, min=0.0, open_min=True)
    rho = (sigma - 1.0) / (n - 1)
    U = torch.zeros(n, n + 1, dtype=dtype)
    U[:, 0] = math.sqrt(rho)
    U[:, 1:] = math.sqrt(1.0 - rho) * torch.eye(n, dtype=dtype)
    return lam * U[:, :, None] * U[:, None, :]


def aligned_hessians(n: int, k: int, lam: float = 1.0, *, dtype=torch.float64) -> torch.Tensor:
    """Rank-one Hessians with coherence exactly k: k samples curve along one shared axis and the
    other n - k each along an axis of their own, all of weight ``m = lam n / k``, so that
    ``lambda_max(H) = lam`` (in d = n - k + 1 dims). The synthetic construction of Dexter et al.
    2024, Sec. 5, as Chang & Khanna 2025 (App. C.3) describe it."""
    n = check_int("n", n, min=1)
    k = check_int("k", k, min=1, max=n)
    lam = check_float("lam", lam, min=0.0, open_min=True)
    axis = torch.zeros(n, dtype=torch.long)
    axis[k:] = torch.arange(1, n - k + 1)
    H = torch.zeros(n, n - k + 1, n - k + 1, dtype=dtype)
    H[torch.arange(n), axis, axis] = lam * n / k
    return H


def divergence_step(per_sample_hessians: torch.Tensor, B: int, *, sigma: float | None = None) -> float:
    """The step above which Dexter et al. 2024, Thm 1 says linearized SGD with Bernoulli batches of
    mean size B diverges: ``sigma / (lambda_1(H) sqrt(n/B - 1))`` (infinite at B = n). ``sigma``
    defaults to the Hessians' coherence; pass another value to see what the bound says without it."""
    H = per_sample_hessians
    n = H.shape[0]
    B = check_int("B", B, min=1, max=n)
    if sigma is None:
        sigma = coherence(H)
    sigma = check_float("sigma", sigma, min=0.0, open_min=True)
    if B == n:
        return math.inf
    lam = float(torch.linalg.eigvalsh(H.mean(dim=0))[-1])
    return sigma / (lam * math.sqrt(n / B - 1))
