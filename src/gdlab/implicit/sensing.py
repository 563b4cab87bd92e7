"""Matrix sensing with factorized models: symmetric ``U U^T`` and asymmetric ``F G^T``.

The target is ``X* = V diag(sigma) V^T`` (d x d, rank r). Measurements are symmetric Gaussian
matrices ``A_i = (G_i + G_i^T)/2`` and ``y_i = <A_i, X*>`` (Gunasekar et al. 2017, Sec. 2;
Li, Ma & Zhang 2018). Because ``E[<A, M> A] = M`` for symmetric ``M``, the population
gradient of the loss below is ``(U U^T - X*) U``: early on each eigen-direction ``v_s`` of
``X*`` grows like ``(1 + eta sigma_s)^t``, which is incremental learning (Jin et al. 2023).

Every runner takes a list of initialization scales ``alphas`` and trains one model per alpha
as one batched tensor program (leading batch dimension ``B = len(alphas)``). All models start
from the *same* Gaussian draw, scaled by their alpha, so they differ only in alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gdlab.implicit._threads import single_threaded
from gdlab.runtime import check_float, check_int, check_sequence, progress

__all__ = [
    "SensingProblem", "gaussian_measurements", "low_rank_target", "sensing_problem", "measure",
    "adjoint", "SensingRun", "symmetric_gd", "asymmetric_gd", "Solution", "describe",
    "min_nuclear_norm_psd", "best_rank_s_fit", "stage_time_formula", "stage_times",
    "loglog_slope", "late_loglog_slope", "linear_rate", "late_rate", "late_rate_ratio",
]


@dataclass
class SensingProblem:
    """Measurements ``A`` (m, d, d), target ``X_star`` (d, d) with eigenpairs ``sigma``, ``V``, and ``y`` (m,)."""

    A: torch.Tensor
    X_star: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor
    y: torch.Tensor

    @property
    def d(self) -> int:
        return self.X_star.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    def best_rank_error(self, s: int) -> float:
        """``||X* - best rank-s approximation||_F = sqrt(sum_{j>s} sigma_j^2)`` (Eckart-Young)."""
        return float(self.sigma[s:].pow(2).sum().sqrt())


def gaussian_measurements(m: int, d: int, generator: torch.Generator, *, symmetric: bool = True,
                          dtype=torch.float64, device=None) -> torch.Tensor:
    """``m`` Gaussian measurement matrices, shape (m, d, d): ``A_i = (G_i + G_i^T) / 2`` when
    ``symmetric`` (for ``U U^T``), else ``G_i`` itself, with ``G_i`` i.i.d. N(0, 1) entries.
    Either way ``E[<A, M> A] = M`` for the matrices ``M`` the model can produce.

    A symmetric ``A_i`` sees only the symmetric part of ``F G^T``, so asymmetric models need
    ``symmetric=False`` (Xiong, Ding & Du 2023, asymmetric setting)."""
    m, d = check_int("m", m, min=1), check_int("d", d, min=1)
    G = torch.randn(m, d, d, generator=generator, dtype=dtype, device=generator.device).to(device)
    return (G + G.transpose(1, 2)) / 2 if symmetric else G


def low_rank_target(d: int, sigma, generator: torch.Generator, *, dtype=torch.float64, device=None):
    """``X* = V diag(sigma) V^T`` with a uniformly random orthonormal ``V`` (d x r). Returns (X*, V)."""
    d = check_int("d", d, min=1)
    device = generator.device if device is None else device
    sigma = torch.as_tensor(check_sequence("sigma", sigma, lambda n, v: check_float(n, v, min=0.0, open_min=True)),
                            dtype=dtype, device=device)
    if len(sigma) > d:
        raise ValueError(f"parameter 'sigma': got {len(sigma)} values; the rank can be at most d = {d}")
    V, _ = torch.linalg.qr(torch.randn(d, len(sigma), generator=generator, dtype=dtype, device=generator.device).to(device))
    return V @ torch.diag(sigma) @ V.T, V


def sensing_problem(d: int, sigma, m: int, generator: torch.Generator, *, symmetric: bool = True,
                    dtype=torch.float64, device=None) -> SensingProblem:
    """A random rank-``len(sigma)`` PSD target and ``m`` Gaussian measurements of it
    (symmetric ones by default; see :func:`gaussian_measurements`)."""
    device = generator.device if device is None else device
    X_star, V = low_rank_target(d, sigma, generator, dtype=dtype, device=device)
    A = gaussian_measurements(m, d, generator, symmetric=symmetric, dtype=dtype, device=device)
    sigma_t = torch.as_tensor(sigma, dtype=dtype, device=device)
    return SensingProblem(A=A, X_star=X_star, sigma=sigma_t, V=V, y=measure(A, X_star))


def measure(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``<A_i, X>`` for every measurement: X (..., d, d) -> (..., m)."""
    return X.flatten(-2) @ A.flatten(1).T


def adjoint(A: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``sum_i r_i A_i``: r (..., m) -> (..., d, d)."""
    d = A.shape[-1]
    return (r @ A.flatten(1)).unflatten(-1, (d, d))


def _check_run(alphas, k, eta, steps, log_every):
    alphas = check_sequence("alphas", alphas, lambda n, v: check_float(n, v, min=0.0, open_min=True))
    return (alphas, check_int("k", k, min=1), check_float("eta", eta, min=0.0, open_min=True),
            check_int("steps", steps, min=1), check_int("log_every", log_every, min=1))


def _initial_factor(problem: SensingProblem, alphas, k: int, generator: torch.Generator) -> torch.Tensor:
    """``alpha * N(0, 1/d)`` entries, one draw shared by every alpha: shape (B, d, k)."""
    Z = torch.randn(problem.d, k, generator=generator, dtype=problem.A.dtype,
                    device=generator.device).to(problem.A.device)
    scale = torch.tensor(alphas, dtype=Z.dtype, device=Z.device).view(-1, 1, 1)
    return scale * Z / math.sqrt(problem.d)


@dataclass
class SensingRun:
    """Logged GD trajectories for B models: ``steps`` (T,), ``error`` (B, T) = ||X_t - X*||_F,
    ``eigenvalues`` (B, T, d) of X_t in descending order, the final factors, and ``distances``
    (B, T, J) = ||X_t - R_j||_F to the reference matrices ``references`` (J = 0 when none were given)."""

    alphas: list
    steps: torch.Tensor
    error: torch.Tensor
    eigenvalues: torch.Tensor
    factors: tuple
    distances: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        """The final matrices ``X_T`` (B, d, d)."""
        if len(self.factors) == 1:
            return self.factors[0] @ self.factors[0].transpose(1, 2)
        return self.factors[0] @ self.factors[1].transpose(1, 2)


def symmetric_gd(problem: SensingProblem, alphas, k: int, eta: float, steps: int, generator: torch.Generator,
                 *, log_every: int = 1, references=()) -> SensingRun:
    """GD on ``f(U) = (1/4m) sum_i (<A_i, U U^T> - y_i)^2`` from ``U_0 = alpha N(0, 1/d)`` (d x k),
    one model per alpha. The gradient is ``(1/m) sum_i r_i sym(A_i) U``. ``references``: matrices
    whose distance to ``X_t`` is logged (``SensingRun.distances``).

    Li, Ma & Zhang 2018; Jin et al. 2023 (incremental learning); Xiong, Ding & Du 2023 (k > r).
    """
    alphas, k, eta, steps, log_every = _check_run(alphas, k, eta, steps, log_every)
    U = _initial_factor(problem, alphas, k, generator)

    def step(factors, S):
        (U,) = factors
        return (U - eta * (S + S.transpose(1, 2)) / 2 @ U,)

    return _run_gd(problem, alphas, (U,), lambda U: U @ U.transpose(1, 2), step,
                   lambda X: torch.linalg.eigvalsh(X).flip(-1), steps, log_every, "symmetric GD", references)


def asymmetric_gd(problem: SensingProblem, alphas, k: int, eta: float, steps: int, generator: torch.Generator,
                  *, g_scale: float = 1 / 3, log_every: int = 1) -> SensingRun:
    """GD on ``f(F, G) = (1/2m) sum_i (<A_i, F G^T> - y_i)^2`` from the imbalanced start
    ``F_0 = alpha N(0, 1/d)``, ``G_0 = g_scale alpha N(0, 1/d)`` (independent, d x k); use a problem
    with ``symmetric=False`` measurements. The imbalance ``F^T F - G^T G`` (about alpha^2) makes
    over-parameterized GD converge linearly, at a rate that grows with alpha.

    Xiong, Ding & Du 2023 (asymmetric matrix sensing, linear rate exp(-Omega(alpha^2 eta t))).
    """
    alphas, k, eta, steps, log_every = _check_run(alphas, k, eta, steps, log_every)
    g_scale = check_float("g_scale", g_scale, min=0.0, open_min=True)
    F = _initial_factor(problem, alphas, k, generator)
    G = _initial_factor(problem, alphas, k, generator) * g_scale

    def step(factors, S):
        F, G = factors
        return F - eta * S @ G, G - eta * S.transpose(1, 2) @ F

    return _run_gd(problem, alphas, (F, G), lambda F, G: F @ G.transpose(1, 2), step,
                   torch.linalg.svdvals, steps, log_every, "asymmetric GD")


def _run_gd(problem, alphas, factors, product, step, spectrum, steps, log_every, desc, references=()) -> SensingRun:
    """The GD loop shared by both parametrizations: ``X = product(*factors)``, the sensing
    gradient ``S = A^*(A(X) - y) / m``, then ``factors = step(factors, S)``; logs ``||X - X*||_F``,
    ``spectrum(X)`` and the distances to ``references`` every ``log_every`` steps and at the end."""
    refs = (torch.stack([r.to(problem.A) for r in references]) if len(references)
            else problem.A.new_zeros(0, problem.d, problem.d))
    logged, errors, eigs, dists = [], [], [], []
    with single_threaded(problem.A.device):
        for t in progress(range(steps + 1), desc=desc):
            X = product(*factors)
            if t % log_every == 0 or t == steps:
                logged.append(t)
                errors.append(torch.linalg.matrix_norm(X - problem.X_star))
                eigs.append(spectrum(X))
                dists.append(torch.linalg.matrix_norm(X.unsqueeze(1) - refs))
            if t == steps:
                break
            S = adjoint(problem.A, measure(problem.A, X) - problem.y) / problem.m
            factors = step(factors, S)
    return SensingRun(alphas, torch.tensor(logged), torch.stack(errors, 1), torch.stack(eigs, 1), tuple(factors),
                      torch.stack(dists, 1))


# ------------------------------------------------------------------ which interpolant: measurements
@dataclass
class Solution:
    """How a matrix ``X`` (or a batch) answers the sensing problem: relative ``residual``
    ``||A(X) - y|| / ||y||``, relative ``error`` ``||X - X*||_F / ||X*||_F``, numerical ``rank``
    (singular values above ``rtol`` times the largest) and ``nuclear`` norm."""

    residual: torch.Tensor
    error: torch.Tensor
    rank: torch.Tensor
    nuclear: torch.Tensor


def describe(problem: SensingProblem, X: torch.Tensor, rtol: float = 1e-3,
             threshold: float | None = None) -> Solution:
    """:class:`Solution` statistics of ``X`` (..., d, d), on the device of ``X``. The rank counts singular
    values above ``threshold`` if given, else above ``rtol`` times the largest."""
    rtol = check_float("rtol", rtol, min=0.0, open_min=True)
    s = torch.linalg.svdvals(X)
    cut = (rtol * s.amax(-1, keepdim=True) if threshold is None
           else check_float("threshold", threshold, min=0.0, open_min=True))
    return Solution(residual=torch.linalg.vector_norm(measure(problem.A, X) - problem.y, dim=-1) / problem.y.norm(),
                    error=torch.linalg.matrix_norm(X - problem.X_star) / torch.linalg.matrix_norm(problem.X_star),
                    rank=(s > cut).sum(-1), nuclear=s.sum(-1))


def min_nuclear_norm_psd(problem: SensingProblem, *, solver: str = "CLARABEL") -> torch.Tensor:
    """The minimum-nuclear-norm PSD interpolant ``argmin tr(X)`` s.t. ``X >= 0``, ``A(X) = y``: the
    solution Gunasekar et al. 2017 conjecture small-initialization GD on ``U U^T`` converges to (for PSD
    matrices the nuclear norm is the trace). Solved by cvxpy (interior point, Clarabel by default) on the
    host in float64; returned on the device and in the dtype of the measurements."""
    import cvxpy as cp

    A = problem.A.detach().cpu().double().numpy()
    y = problem.y.detach().cpu().double().numpy()
    d = problem.d
    X = cp.Variable((d, d), PSD=True)
    constraints = [A.reshape(len(y), -1) @ cp.vec(X, order="C") == y]
    value = cp.Problem(cp.Minimize(cp.trace(X)), constraints).solve(solver=solver)
    if X.value is None or not np.isfinite(value):
        raise RuntimeError(f"the nuclear-norm program failed ({solver}): value {value}")
    Xv = (X.value + X.value.T) / 2
    return torch.as_tensor(Xv).to(device=problem.A.device, dtype=problem.A.dtype)


def best_rank_s_fit(problem: SensingProblem, s: int, *, steps: int = 2000, eta: float = 0.1) -> torch.Tensor:
    """The rank-``s`` matrix that best fits the measurements near ``X*_s`` (the best rank-s approximation
    of ``X*``): GD on ``f(W) = (1/4m) sum_i (<A_i, W W^T> - y_i)^2`` with W (d x s), started at ``X*_s``'s
    factor. With finite m this differs from ``X*_s``; it is the "best rank-s solution" that small-init GD
    passes near (Jin et al. 2023, incremental learning)."""
    s = check_int("s", s, min=1, max=len(problem.sigma))
    steps, eta = check_int("steps", steps, min=1), check_float("eta", eta, min=0.0, open_min=True)
    W = problem.V[:, :s] * problem.sigma[:s].sqrt()
    with single_threaded(problem.A.device):
        for _ in range(steps):
            S = adjoint(problem.A, measure(problem.A, W @ W.T) - problem.y) / problem.m
            W = W - eta * (S + S.T) / 2 @ W
    return W @ W.T


def stage_time_formula(alpha: float, sigma: float, eta: float) -> float:
    """Step at which the eigenvalue of ``U U^T`` along ``v_s`` reaches ``sigma_s / 2`` under the
    linearized dynamics ``alpha^2 (1 + eta sigma_s)^(2t)``:
    ``t_s = [ln(1/alpha) + (1/2) ln(sigma_s / 2)] / ln(1 + eta sigma_s)``.

    Jin et al. 2023 (incremental learning); the initial mass along ``v_s`` is about alpha when k = d.
    """
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    sigma = check_float("sigma", sigma, min=0.0, open_min=True)
    eta = check_float("eta", eta, min=0.0, open_min=True)
    return (math.log(1 / alpha) + 0.5 * math.log(sigma / 2)) / math.log1p(eta * sigma)


def stage_times(run: SensingRun, sigma) -> torch.Tensor:
    """First logged step at which the s-th eigenvalue of X_t reaches ``sigma_s / 2``: (B, r);
    NaN where it never does."""
    sigma = torch.as_tensor(sigma, dtype=run.eigenvalues.dtype)
    r = len(sigma)
    reached = run.eigenvalues[:, :, :r].cpu() >= sigma / 2  # (B, T, r)
    first = reached.float().argmax(1)
    times = run.steps[first].to(torch.float64)
    return torch.where(reached.any(1), times, torch.full_like(times, float("nan")))


def loglog_slope(steps: torch.Tensor, values: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Least-squares slope of ``log values`` against ``log steps`` over steps in [start, stop]: (B,)."""
    steps = steps.to(torch.float64)
    stop = int(steps[-1]) if stop is None else stop
    keep = (steps >= max(start, 1)) & (steps <= stop)
    x = steps[keep].log()
    y = values[..., keep.to(values.device)].log().cpu().to(torch.float64)
    x = x - x.mean()
    return ((y - y.mean(-1, keepdim=True)) * x).sum(-1) / (x * x).sum()


def late_loglog_slope(steps: torch.Tensor, values: torch.Tensor, *, floor: float = 1e-10,
                      start: float = 0.1) -> torch.Tensor:
    """Log-log slope per row of ``values`` (B, T) over ``[start t_end, t_end]``, ``t_end`` the last logged step
    above ``floor``: about -1 for an error decaying like 1/t (Xiong et al. 2023, symmetric k > r), and steep
    (about ``-rate t_end``) for linear convergence, whose window ends where round-off begins."""
    start = check_float("start", start, min=0.0, max=1.0, open_min=True)
    rows = values.detach().cpu()
    return torch.stack([loglog_slope(steps, row[None], max(1, int(start * t)), t)[0]
                        for row in rows for t in [_last_step_above(steps, row, floor)]])


def linear_rate(steps: torch.Tensor, values: torch.Tensor, start: int, stop: int | None = None, *,
                floor: float = 1e-12) -> torch.Tensor:
    """Least-squares slope of ``log values`` against ``steps`` over [start, stop] (a linear-convergence
    rate, < 0), per row of ``values`` (B, T); points at or below ``floor`` (round-off) are left out."""
    steps = steps.to(torch.float64)
    stop = int(steps[-1]) if stop is None else stop
    window = (steps >= start) & (steps <= stop)
    rates = []
    for row in values.detach().cpu().to(torch.float64):
        keep = window & (row > floor)
        x, y = steps[keep], row[keep].log()
        x = x - x.mean()
        rates.append(((y - y.mean()) * x).sum() / (x * x).sum() if keep.sum() >= 2 else torch.tensor(float("nan")))
    return torch.stack(rates).to(torch.float64)


def _last_step_above(steps: torch.Tensor, row: torch.Tensor, floor: float) -> int:
    above = (row > floor).nonzero()
    return int(steps[int(above[-1])]) if len(above) else 0


def late_rate(steps: torch.Tensor, values: torch.Tensor, *, floor: float = 1e-10) -> torch.Tensor:
    """Log-linear rate per row of ``values`` (B, T) over [1/2, 1] t_end, with ``t_end`` the last step
    above ``floor`` (so that round-off never enters the fit)."""
    return torch.stack([linear_rate(steps, row[None], _last_step_above(steps, row, floor) // 2,
                                    _last_step_above(steps, row, floor), floor=floor)[0]
                        for row in values.detach().cpu()])


def late_rate_ratio(steps: torch.Tensor, values: torch.Tensor, *, floor: float = 1e-10) -> torch.Tensor:
    """Is the convergence linear? Per row of ``values`` (B, T): the log-linear rate on [3/4, 1] t_end
    divided by the rate on [1/2, 3/4] t_end (``t_end`` as in :func:`late_rate`). About 1 for linear
    (geometric) convergence; about 0.71 for an error decaying like 1/t."""
    out = []
    for row in values.detach().cpu():
        t_end = _last_step_above(steps, row, floor)
        late = linear_rate(steps, row[None], 3 * t_end // 4, t_end, floor=floor)
        early = linear_rate(steps, row[None], t_end // 2, 3 * t_end // 4, floor=floor)
        out.append(late[0] / early[0])
    return torch.stack(out)
