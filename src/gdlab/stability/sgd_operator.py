"""Linear stability of SGD near a minimum: the exact mean-square operator for batch size B.

Near a minimum with per-sample Hessians ``H_i`` (i = 1..n, ``H`` their mean), SGD with step
``eta`` and a batch ``S`` of size B drawn uniformly *without replacement* is the random
linear map ``delta <- (I - eta H_S) delta`` with ``H_S = mean_{i in S} H_i``. The second
moment ``Sigma = E[delta delta^T]`` evolves by the (completely positive) operator

    T(Sigma) = Sigma - eta (H Sigma + Sigma H) + eta^2 E[H_S Sigma H_S],
    E[H_S Sigma H_S] = c1 (1/n) sum_i H_i Sigma H_i + c2 H Sigma H,
    c1 = (n - B) / (B (n - 1)),   c2 = n (B - 1) / (B (n - 1)),

and SGD is mean-square stable iff the spectral radius of T is <= 1 (Wu, Ma & E 2018, Def. 1;
Ma & Ying 2021; Mulayoff & Michaeli 2024). Because T is a positive map its spectral radius
is an eigenvalue with a PSD eigenvector, so rho(T) = 1 exactly when ``A X = eta C X`` with
``A = I (x) H + H (x) I`` and ``C = c1 (1/n) sum_i H_i (x) H_i + c2 H (x) H`` on symmetric
matrices: the critical step is ``eta* = 1 / lambda_max(C, A)`` (a generalized eigenvalue).
At B = n, ``eta* = 2 / lambda_max(H)``, the GD condition.

Mean-square stability is sufficient for SGD to stay at a minimum, not necessary. Whether the
iterates can accumulate there is decided by the sign of the top Lyapunov exponent of the random
linear map, the almost-sure growth rate of ``||delta||`` (Chemnitz & Engel 2024; Ziyin et al.
2023). By Jensen's inequality it is at most the mean-square rate, so a minimum can be unstable in
mean square and still attract SGD: :func:`lyapunov_exponent` estimates it by simulation.

``sampling="bernoulli"`` is the batch model of Dexter et al. 2024: every sample joins the batch
on its own with probability B/n and ``H_S = (1/B) sum_{i in S} H_i``, so the batch size is random
with mean B. Then ``c1 = (n - B) / (n B)`` and ``c2 = 1``.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = [
    "SAMPLINGS", "batch_coefficients", "second_moment_operator", "spectral_radius", "critical_step",
    "stability_bounds", "frobenius_ratio", "regression_hessians", "simulate_sgd", "lyapunov_exponent"
]


def _check_hessians(per_sample_hessians) -> np.ndarray:
    H = np.asarray(per_sample_hessians.detach().cpu() if isinstance(per_sample_hessians, torch.Tensor)
                   else per_sample_hessians, dtype=np.float64)
    if H.ndim != 3 or H.shape[1] != H.shape[2] or H.shape[0] < 1:
        raise ValueError(f"parameter 'per_sample_hessians': got shape {H.shape}; expected (n, d, d)")
    if not np.allclose(H, H.transpose(0, 2, 1), atol=1e-12 * max(1.0, np.abs(H).max())):
        raise ValueError("parameter 'per_sample_hessians': the matrices must be symmetric")
    return H


SAMPLINGS = ("without", "bernoulli")


def batch_coefficients(n: int, B: int, sampling: str = "without") -> tuple[float, float]:
    """``(c1, c2)`` with ``E[H_S X H_S] = c1 mean_i H_i X H_i + c2 H X H``: batches of B drawn
    without replacement (the default), or Bernoulli batches (each sample in with probability B/n,
    ``H_S`` summed and divided by B; Dexter et al. 2024)."""
    n = check_int("n", n, min=1)
    B = check_int("B", B, min=1, max=n)
    if check_choice("sampling", sampling, SAMPLINGS) == "bernoulli":
        return (n - B) / (n * B), 1.0
    if n == 1:
        return 0.0, 1.0
    return (n - B) / (B * (n - 1)), n * (B - 1) / (B * (n - 1))


def _symmetric_basis(d: int) -> np.ndarray:
    """Orthonormal basis (d^2, d(d+1)/2) of vec(symmetric d x d matrices)."""
    cols = []
    for a in range(d):
        for b in range(a, d):
            E = np.zeros((d, d))
            if a == b:
                E[a, a] = 1.0
            else:
                E[a, b] = E[b, a] = 1 / math.sqrt(2)
            cols.append(E.reshape(-1))
    return np.stack(cols, axis=1)


def _restrict_to_range(H):
    """Express the Hessians (a numpy array or a tensor) in a basis of the range of their mean.
    Directions in its null space are flat for every H_i (they are PSD), so the linearized SGD
    leaves them unchanged."""
    xp = torch if isinstance(H, torch.Tensor) else np
    lam, V = xp.linalg.eigh(H.mean(0))
    keep = lam > 1e-10 * max(float(lam.max()), 1e-300)
    if keep.all():
        return H
    Q = V[:, keep]
    return xp.einsum("ai,nab,bj->nij", Q, H, Q)


def _diagonal_moments(H: np.ndarray):
    """For Hessians that are all diagonal in the standard basis: ``(h, q)`` with ``h_a = H_aa`` and
    ``q_a = mean_i (H_i)_aa^2`` over the coordinates that some H_i curves, else None.

    Then the random step ``J = I - eta H_S`` is diagonal, ``T`` maps ``X_ab`` to ``E[J_a J_b] X_ab``,
    and ``|E[J_a J_b]| <= max(E J_a^2, E J_b^2)``: the diagonal multipliers
    ``m_a = 1 - 2 eta h_a + eta^2 (c1 q_a + c2 h_a^2)`` decide stability, one coordinate at a time.
    """
    d = H.shape[1]
    if d == 1 or np.any(H[:, ~np.eye(d, dtype=bool)]):
        return None
    diag = np.einsum("naa->na", H)
    h = diag.mean(axis=0)
    keep = h > 1e-10 * max(h.max(), 1e-300)
    return h[keep], (diag[:, keep] ** 2).mean(axis=0)


def _operator_parts(H: np.ndarray, B: int, sampling: str) -> tuple[np.ndarray, np.ndarray]:
    """``(A, C)`` on symmetric matrices over the range of H (vec(X Y Z) = (Z^T (x) X) vec Y)."""
    H = _restrict_to_range(H)
    n, d, _ = H.shape
    Hbar = H.mean(axis=0)
    c1, c2 = batch_coefficients(n, B, sampling)
    I = np.eye(d)
    A = np.kron(I, Hbar) + np.kron(Hbar, I)
    C = c2 * np.kron(Hbar, Hbar)
    if c1:
        C = C + c1 * np.einsum("nab,ncd->acbd", H, H).reshape(d * d, d * d) / n
    P = _symmetric_basis(d)
    return P.T @ A @ P, P.T @ C @ P


def second_moment_operator(per_sample_hessians, B: int, eta: float, *,
                           sampling: str = "without") -> np.ndarray:
    """The matrix of ``T`` on symmetric matrices over the range of H (orthonormal basis), float64."""
    H = _check_hessians(per_sample_hessians)
    eta = check_float("eta", eta, min=0.0)
    A, C = _operator_parts(H, B, sampling)
    return np.eye(A.shape[0]) - eta * A + eta ** 2 * C


def spectral_radius(per_sample_hessians, B: int, eta: float, *, sampling: str = "without") -> float:
    """Spectral radius of the mean-square operator ``T`` (stable iff <= 1)."""
    H = _check_hessians(per_sample_hessians)
    diagonal = _diagonal_moments(H)
    if diagonal is not None:
        eta = check_float("eta", eta, min=0.0)
        c1, c2 = batch_coefficients(H.shape[0], B, sampling)
        h, q = diagonal
        return float(np.abs(1 - 2 * eta * h + eta ** 2 * (c1 * q + c2 * h ** 2)).max())
    T = second_moment_operator(H, B, eta, sampling=sampling)
    return float(np.abs(np.linalg.eigvalsh((T + T.T) / 2)).max())


def critical_step(per_sample_hessians, B: int, *, sampling: str = "without") -> float:
    """The largest mean-square-stable step ``eta* = 1 / lambda_max(C, A)`` (on the range of H;
    the Hessians must be positive semidefinite). Diagonal Hessians take a closed form."""
    H = _check_hessians(per_sample_hessians)
    if np.linalg.eigvalsh(H).min() < -1e-10 * max(np.abs(H).max(), 1e-300):
        raise ValueError("parameter 'per_sample_hessians': expected positive semidefinite matrices")
    diagonal = _diagonal_moments(H)
    if diagonal is not None:  # m_a(eta) = 1 at eta = 2 h_a / (c1 q_a + c2 h_a^2)
        c1, c2 = batch_coefficients(H.shape[0], B, sampling)
        h, q = diagonal
        return float((2 * h / (c1 * q + c2 * h ** 2)).min())
    A, C = _operator_parts(H, B, sampling)
    mu = scipy.linalg.eigh(C, A, eigvals_only=True)[-1]
    return float(1.0 / mu)


def stability_bounds(per_sample_hessians, B: int) -> dict[str, float]:
    """Upper bounds on the stable step from simpler statistics of the Hessians.

    - ``sharpness``: 2 / lambda_max(H), the GD condition (exact at B = n);
    - ``trace``: 2 / Tr H, necessary at B = 1 (Wu & Su 2023, Sec. 3);
    - ``frobenius``: sqrt(B) / ||H||_F, the *scale* of Wu, Wang & Su 2022's necessary condition
      ``||H||_F <= O(sqrt(B) / eta)`` (its constant depends on an alignment factor of the noise;
      :func:`frobenius_ratio` measures the constant an instance needs);
    - ``nonuniformity``: sqrt(B) / s with ``s^2 = lambda_max(mean_i H_i^2 - H^2)`` (Wu, Ma & E 2018, Thm 1).
    """
    H = _check_hessians(per_sample_hessians)
    B = check_int("B", B, min=1, max=H.shape[0])
    Hbar = H.mean(axis=0)
    lam = np.linalg.eigvalsh(Hbar)
    s2 = max(float(np.linalg.eigvalsh(np.einsum("nab,nbc->ac", H, H) / H.shape[0] - Hbar @ Hbar).max()), 1e-300)
    return {"sharpness": 2.0 / float(lam.max()), "trace": 2.0 / float(lam.sum()),
            "frobenius": math.sqrt(B) / float(np.linalg.norm(Hbar)),
            "nonuniformity": math.sqrt(B) / math.sqrt(s2)}


def frobenius_ratio(per_sample_hessians, B: int) -> float:
    """``eta*(B) ||H||_F / sqrt(B)``: the constant in Wu, Wang & Su 2022's ``||H||_F <= C sqrt(B) / eta``
    that this instance attains at its exact critical step. Their theorem says C does not grow with
    the model size or the number of samples."""
    H = _check_hessians(per_sample_hessians)
    return critical_step(H, B) * float(np.linalg.norm(H.mean(axis=0))) / math.sqrt(check_int("B", B, min=1))


def regression_hessians(n: int, d: int, generator: torch.Generator, *, dtype=torch.float64) -> torch.Tensor:
    """Per-sample Hessians ``x_i x_i^T`` of least squares at an interpolating minimum, x ~ N(0, I_d),
    drawn on the generator's device."""
    n, d = check_int("n", n, min=1), check_int("d", d, min=1)
    x = torch.randn(n, d, generator=generator, device=generator.device, dtype=dtype)
    return x[:, :, None] * x[:, None, :]


def simulate_sgd(per_sample_hessians, B: int, etas, *, steps: int, runs: int,
                 generator: torch.Generator, burn_in: int = 0,
                 sampling: str = "without") -> torch.Tensor:
    """Simulate linearized SGD for every step size at once; returns the mean growth
    ``log(mean_runs ||delta_T||^2 / ||delta_b||^2) / (T - b)`` per eta (> 0 means divergence),
    measured after the first ``b = burn_in`` steps (which remove the transient of the random start).

    All (eta, run) pairs advance as one batched computation; each run draws its own batches,
    without replacement or as Bernoulli batches (``sampling``, as in :func:`batch_coefficients`).
    Works on the device of ``per_sample_hessians`` if it is a tensor.
    """
    H = per_sample_hessians if isinstance(per_sample_hessians, torch.Tensor) else torch.as_tensor(per_sample_hessians)
    n, d, _ = H.shape
    B = check_int("B", B, min=1, max=n)
    steps, runs = check_int("steps", steps, min=1), check_int("runs", runs, min=1)
    burn_in = check_int("burn_in", burn_in, min=0, max=steps - 1)
    check_choice("sampling", sampling, SAMPLINGS)
    etas = torch.as_tensor(etas, dtype=H.dtype, device=H.device).reshape(-1)
    E = etas.numel()
    gdev = generator.device
    delta = torch.randn(E * runs, d, generator=generator, device=gdev, dtype=H.dtype).to(H.device)
    delta = delta / delta.norm(dim=1, keepdim=True)
    eta = etas.repeat_interleave(runs)[:, None]
    log_scale = torch.zeros(E * runs, dtype=H.dtype, device=H.device)
    for t in range(steps):
        if t == burn_in:
            log_scale.zero_()
        if sampling == "bernoulli":  # each sample in with probability B/n; the sum divided by B
            keep = torch.rand(E * runs, n, generator=generator, device=gdev) < B / n
            step = torch.einsum("nab,rb,rn->ra", H, delta, keep.to(H.device, H.dtype)) / B
        else:
            idx = torch.rand(E * runs, n, generator=generator, device=gdev).argsort(dim=1)[:, :B]
            idx = idx.to(H.device)
            if B * d <= 2 * n:  # few samples: gather their Hessians, (E*runs, B, d, d)
                step = torch.einsum("rkab,rb->ra", H[idx], delta) / B
            else:               # many: every H_i delta once, (E*runs, n, d), then the batch's rows
                Hd = torch.einsum("nab,rb->rna", H, delta)
                step = Hd.gather(1, idx[:, :, None].expand(-1, -1, d)).mean(dim=1)
        delta = delta - eta * step
        norm = delta.norm(dim=1).clamp_min(1e-300)                  # renormalize to avoid overflow
        log_scale += 2 * norm.log()
        delta = delta / norm[:, None]
    log_sq = log_scale.view(E, runs)
    return (torch.logsumexp(log_sq, dim=1) - math.log(runs)) / (steps - burn_in)


def lyapunov_exponent(per_sample_hessians, B: int, eta: float, *, steps: int, runs: int,
                      generator: torch.Generator, burn_in: int = 0) -> tuple[float, float]:
    """The almost-sure growth rate of linearized SGD, ``E[log ||delta_T||^2 - log ||delta_b||^2] /
    (T - b)`` (twice the top Lyapunov exponent; the units of :func:`simulate_sgd`), and its standard
    error over ``runs`` independent runs (batches of B drawn without replacement; ``b = burn_in``).

    Negative: SGD's iterates near the minimum converge to it with probability one, even where the
    mean-square rate is positive. The simulation runs in the range of the mean Hessian (its null
    space is flat for every sample and would hold ``||delta||`` up) and applies each ``H_i``
    through a factor ``F_i F_i^T`` of its own rank (one for a square loss with one output), so
    its cost grows with that rank, not with the dimension. Draws on the generator's device and
    computes on the device of ``per_sample_hessians`` if it is a tensor.

    The standard error covers the spread over runs, not the bias of a finite run: the estimate
    approaches its limit roughly like ``1 / (steps - burn_in)`` (from a more negative value near a
    stable minimum), so a sign judged at a few standard errors needs a rate well away from 0."""
    H = per_sample_hessians if isinstance(per_sample_hessians, torch.Tensor) else torch.as_tensor(per_sample_hessians)
    n = H.shape[0]
    B = check_int("B", B, min=1, max=n)
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps, runs = check_int("steps", steps, min=2), check_int("runs", runs, min=2)
    burn_in = check_int("burn_in", burn_in, min=0, max=steps - 1)
    if H.dim() != 3 or H.shape[1] != H.shape[2] or not bool(torch.isfinite(H).all()):
        raise ValueError(f"parameter 'per_sample_hessians': expected finite (n, d, d) matrices; got shape "
                         f"{tuple(H.shape)}")
    H = 0.5 * (H + H.transpose(1, 2))
    if not bool((torch.linalg.eigvalsh(H.mean(0)) > 0).any()):
        raise ValueError("parameter 'per_sample_hessians': every Hessian is zero; nothing to grow or shrink")
    H = _restrict_to_range(H)
    # factors F_i F_i^T = H_i: eigenvalues ascend, so each H_i's own rank sits in its last k columns
    lam, V = torch.linalg.eigh(H)
    keep = lam > 1e-12 * max(float(lam.abs().max()), 1e-300)
    k = max(1, int(keep.sum(1).max()))
    F = V[:, :, -k:] * (lam[:, -k:].clamp_min(0).sqrt() * keep[:, -k:])[:, None, :]      # (n, r, k)
    gdev = generator.device
    delta = torch.randn(runs, H.shape[1], generator=generator, device=gdev, dtype=H.dtype).to(H.device)
    delta = delta / delta.norm(dim=1, keepdim=True)
    log_sq = torch.zeros(runs, dtype=H.dtype, device=H.device)
    for t in range(steps):
        if t == burn_in:
            log_sq.zero_()
        idx = torch.rand(runs, n, generator=generator, device=gdev).argsort(dim=1)[:, :B].to(H.device)
        Fb = F[idx]                                                         # (runs, B, r, k)
        step = torch.einsum("rbik,rbk->ri", Fb, torch.einsum("rbik,ri->rbk", Fb, delta)) / B
        delta = delta - eta * step
        norm = delta.norm(dim=1).clamp_min(1e-300)
        log_sq += 2 * norm.log()
        delta = delta / norm[:, None]
    rates = log_sq / (steps - burn_in)
    return float(rates.mean()), float(rates.std() / math.sqrt(runs))
