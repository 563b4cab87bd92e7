"""Hessian coherence (Dexter, Ocejo, Keerthi, Gupta, Acharya & Khanna 2024).

``S_ij = sqrt(Tr(H_i H_j))`` for PSD per-sample Hessians, and the coherence measure
``sigma = lambda_1(S) / max_i lambda_1(H_i)`` (Dexter et al. 2024, Def. 1). It runs from about
1 (per-sample Hessians in orthogonal directions: SGD noise is large) to n (all aligned:
SGD behaves like GD), and with B, eta and the sharpness it decides whether SGD diverges
(their Thm 1 and Sec. 5 synthetic experiments).
"""
from __future__ import annotations

import math

import torch

from gdlab.runtime import check_float, check_int

__all__ = ["coherence_matrix", "coherence", "equiangular_hessians"]


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
