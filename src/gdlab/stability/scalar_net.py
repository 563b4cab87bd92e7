"""The scalar network ``L(w) = 0.5 (prod_i w_i - y)^2`` and its exact gradient-flow solution.

Gradient flow conserves ``w_i^2 - w_j^2`` (d/dt w_i^2 = -2 (p - y) p is the same for every i),
so the flow from ``w`` ends at ``w_i* = sign(w_i) sqrt(w_i^2 + c)`` with the scalar ``c`` fixed
by ``prod_i w_i* = y``. At a minimum the Hessian is ``g g^T`` with ``g_i = y / w_i*``, so the
sharpness of the gradient-flow solution (GFS) is ``phi(w) = y^2 sum_i 1 / (w_i^2 + c)``.
Kreisler, Nacson, Soudry & Carmon 2023, Sec. 3 and Thm 3.2: along GD with step eta the GFS
sharpness decreases monotonically, and GD converges to a minimum with sharpness <= 2/eta.

Every function is batched over leading dimensions: ``w`` has shape (..., D).
"""
from __future__ import annotations

import torch

from gdlab.runtime import check_float, check_int

__all__ = [
    "loss", "gradient", "hessian", "sharpness", "gfs_shift", "gfs_point", "gfs_sharpness",
    "run_gd"
]


def loss(w: torch.Tensor, y: float) -> torch.Tensor:
    """``0.5 (prod_i w_i - y)^2`` per leading index."""
    return 0.5 * (w.prod(dim=-1) - y) ** 2


def gradient(w: torch.Tensor, y: float) -> torch.Tensor:
    """``dL/dw_i = (p - y) prod_{j != i} w_j``."""
    return (w.prod(dim=-1, keepdim=True) - y) * _prod_others(w)


def _prod_others(w: torch.Tensor) -> torch.Tensor:
    D = w.shape[-1]
    eye = torch.eye(D, dtype=torch.bool, device=w.device)
    return torch.where(eye, torch.ones((), dtype=w.dtype, device=w.device), w[..., None, :]).prod(dim=-1)


def hessian(w: torch.Tensor, y: float) -> torch.Tensor:
    """The exact D x D Hessian: ``g g^T + (p - y) d^2 p / dw_i dw_j``."""
    D = w.shape[-1]
    g = _prod_others(w)
    eye = torch.eye(D, dtype=torch.bool, device=w.device)
    # d^2 p / dw_i dw_j = prod_{k != i, j} w_k  (i != j), 0 on the diagonal
    mask = eye[:, None, :] | eye[None, :, :]                      # [i, j, k]: k == i or k == j
    pairs = torch.where(mask, torch.ones((), dtype=w.dtype, device=w.device), w[..., None, None, :]).prod(dim=-1)
    pairs = pairs.masked_fill(eye, 0.0)
    resid = (w.prod(dim=-1) - y)[..., None, None]
    return g[..., :, None] * g[..., None, :] + resid * pairs


def sharpness(w: torch.Tensor, y: float) -> torch.Tensor:
    """Top eigenvalue of the Hessian at ``w`` (NaN where ``w`` is not finite, e.g. after divergence)."""
    H = hessian(w, y)
    finite = torch.isfinite(H).all(dim=-1).all(dim=-1) & (H.abs().amax(dim=(-1, -2)) < 1e150)
    H = torch.where(finite[..., None, None], H, torch.zeros_like(H))
    return torch.linalg.eigvalsh(H)[..., -1].masked_fill(~finite, float("nan"))


def gfs_shift(w: torch.Tensor, y: float, iters: int = 200) -> torch.Tensor:
    """The ``c`` with ``prod_i sqrt(w_i^2 + c) = |y|``: the root of the increasing function
    ``sum_i log(w_i^2 + c) - 2 log|y|`` on ``c > -min_i w_i^2``, found by bisection to machine precision."""
    sq = w ** 2
    target = 2 * torch.log(torch.as_tensor(abs(y), dtype=w.dtype, device=w.device))
    lo = -sq.min(dim=-1).values
    hi = lo + abs(y) ** (2.0 / w.shape[-1])   # there every factor is >= |y|^(2/D): f(hi) >= 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if bool(((mid == lo) | (mid == hi)).all()):
            break
        above = torch.log(sq + mid[..., None]).sum(dim=-1) > target
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return 0.5 * (lo + hi)


def gfs_point(w: torch.Tensor, y: float) -> torch.Tensor:
    """The minimum gradient flow from ``w`` converges to (assumes sign(prod w) = sign(y) along the flow)."""
    c = gfs_shift(w, y)
    return torch.sign(w) * torch.sqrt(w ** 2 + c[..., None])


def gfs_sharpness(w: torch.Tensor, y: float) -> torch.Tensor:
    """``phi(w) = y^2 sum_i 1 / (w_i^2 + c)``: sharpness of the gradient-flow solution (Kreisler et al. 2023, Eq. 4)."""
    c = gfs_shift(w, y)
    return y ** 2 * (1.0 / (w ** 2 + c[..., None])).sum(dim=-1)


def run_gd(w0: torch.Tensor, y: float, eta, steps: int) -> dict[str, torch.Tensor]:
    """GD on the scalar network for a batch of starts and step sizes (``eta`` broadcasts to w0[..., 0]).

    Returns per step (steps + 1 rows): ``w``, ``loss``, ``sharpness`` and ``gfs_sharpness``.
    """
    steps = check_int("steps", steps, min=1)
    y = check_float("y", y)
    eta = torch.as_tensor(eta, dtype=w0.dtype, device=w0.device)[..., None]
    ws = [w0]
    w = w0
    for _ in range(steps):
        w = w - eta * gradient(w, y)
        ws.append(w)
    W = torch.stack(ws)
    return {"w": W, "loss": loss(W, y), "sharpness": sharpness(W, y), "gfs_sharpness": gfs_sharpness(W, y)}
