"""In-context learners that a transformer can be compared with, and their closed forms.

Each learner maps a context (x (…, N, d), y (…, N)) to weights w_hat (…, d); the prediction at a
query is w_hat . x_q. GD++ transforms the inputs as well, so it returns predictions directly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from gdlab.icl.tasks import RegressionTasks
from gdlab.runtime import check_float, check_int

__all__ = ["gd_weights", "gd_plus_plus_predict", "preconditioned_step_weights", "averaging_weights",
           "ridge_weights", "ols_weights", "knn_predict", "predict", "one_step_loss", "best_one_step_size",
           "tune_steps", "mahankali_step_size", "ahn_preconditioner", "garg_baselines", "uniform_one_step_optimum",
           "prefix_predictions", "prefix_apply", "tuned_one_step_weights", "baselines"]


def gd_weights(x: torch.Tensor, y: torch.Tensor, etas: Sequence[float] | torch.Tensor,
               w0: torch.Tensor | None = None) -> torch.Tensor:
    """len(etas) GD steps on L(w) = 1/(2N) sum_i (w.x_i - y_i)^2, from w0 (default 0).

    w <- w - eta_l (1/N) X^T (X w - y)  (von Oswald et al. 2022, Eq. 1).
    """
    n = x.shape[-2]
    w = torch.zeros_like(x[..., 0, :]) if w0 is None else w0.expand_as(x[..., 0, :])
    for eta in etas:
        residual = (x @ w.unsqueeze(-1)).squeeze(-1) - y
        w = w - eta * (x.transpose(-1, -2) @ residual.unsqueeze(-1)).squeeze(-1) / n
    return w


def gd_plus_plus_predict(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor,
                         etas: Sequence[float] | torch.Tensor, gammas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """GD++: step l takes a GD step on the residuals r and moves every input, x <- (I - gamma_l A) x.

    With r_j the residual of point j (the query starts at r_q = 0) and A = (1/N) sum_i x_i x_i^T::

        r_j <- r_j - eta_l (1/N) sum_i r_i x_i^T x_j,   x_j <- x_j - gamma_l A x_j,

    both from the same step-l values; the prediction is -r_q (von Oswald et al. 2022, Sec. 4).
    """
    n = x.shape[-2]
    xs = torch.cat([x, x_query.unsqueeze(-2)], dim=-2)
    r = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)
    for eta, gamma in zip(etas, gammas):
        ctx = xs[..., :n, :]
        gram = xs @ ctx.transpose(-1, -2) / n  # (1/N) x_j^T x_i
        second_moment = ctx.transpose(-1, -2) @ ctx / n  # A
        r, xs = r - eta * (gram @ r[..., :n].unsqueeze(-1)).squeeze(-1), xs - gamma * xs @ second_moment
    return -r[..., -1]


def preconditioned_step_weights(x: torch.Tensor, y: torch.Tensor, preconditioner: torch.Tensor) -> torch.Tensor:
    """One preconditioned GD step from zero: w_hat = P (1/N) X^T y (Mahankali et al. 2023; Ahn et al. 2023)."""
    b = (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1) / x.shape[-2]
    return b @ preconditioner.transpose(-1, -2)


def averaging_weights(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """w_hat = (1/k) sum_i y_i x_i (Garg et al. 2022, "averaging")."""
    return (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1) / x.shape[-2]


def ridge_weights(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """w_hat = (X^T X + lam I)^-1 X^T y (Akyürek et al. 2022); lam = 0 gives min-norm least squares.

    Solved on the smaller Gram matrix: the d x d one, or for k < d the k x k one through the identity
    (X^T X + lam I)^-1 X^T = X^T (X X^T + lam I)^-1.
    """
    lam = check_float("lam", lam, min=0.0)
    if lam == 0:
        return ols_weights(x, y)
    return _gram_solve(x, y, lam)


def ols_weights(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares, w_hat = X^+ y (Garg et al. 2022's "least squares").

    Through the normal equations on the small Gram matrix: (X^T X)^-1 X^T y when k >= d, X^T (X X^T)^-1 y when
    k < d (both equal X^+ y for full-rank X, which Gaussian inputs give with probability one). Batched small
    solves instead of a batched pseudo-inverse, whose SVD is slow on GPUs for many small matrices.
    """
    return _gram_solve(x, y, 0.0)


def _gram_solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """(X^T X + lam I)^-1 X^T y through a Cholesky factor of the smaller Gram matrix, in float64.

    A jitter of 1e-13 times the Gram matrix's mean diagonal keeps the factorization defined for the
    (numerically) singular square systems that random float32 inputs produce now and then; it moves the
    solution by a relative 1e-13 times the condition number.
    """
    k, d = x.shape[-2], x.shape[-1]
    x64, y64 = x.double(), y.double().unsqueeze(-1)
    xt = x64.transpose(-1, -2)
    gram = xt @ x64 if k >= d else x64 @ xt
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    jitter = 1e-13 * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    factor = torch.linalg.cholesky(gram + (lam + jitter) * eye)
    if k >= d:
        w = torch.cholesky_solve(xt @ y64, factor)
    else:
        w = xt @ torch.cholesky_solve(y64, factor)
    return w.squeeze(-1).to(x.dtype)


def knn_predict(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean label of the k context points nearest to the query (all of them if fewer); Garg et al. 2022's
    "3-nearest neighbours" baseline. x (..., N, d), y (..., N), x_query (..., d) -> (...)."""
    k = min(check_int("k", k, min=1), x.shape[-2])
    dist = (x - x_query.unsqueeze(-2)).pow(2).sum(-1)
    idx = dist.topk(k, dim=-1, largest=False).indices
    return y.gather(-1, idx).mean(-1)


def predict(weights: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """w_hat . x_q."""
    return (weights * x_query).sum(-1)


# ------------------------------------------------------------------ tuned and closed-form step sizes
def one_step_loss(tasks: RegressionTasks, etas: torch.Tensor) -> torch.Tensor:
    """Query loss 1/2 E (y_q - eta p)^2 of one GD step for every eta in ``etas``, p = (1/N) sum_i y_i x_i^T x_q.

    The prediction is linear in eta, so the whole curve costs one pass (von Oswald et al. 2022, Fig. 2).
    """
    p = predict(averaging_weights(tasks.x, tasks.y), tasks.x_query).flatten()
    yq = tasks.y_query.flatten()
    return 0.5 * ((yq[None, :] - etas.to(p)[:, None] * p[None, :]) ** 2).mean(-1)


def best_one_step_size(tasks: RegressionTasks) -> float:
    """The eta minimizing the one-step query loss on ``tasks``: eta* = <y_q, p> / <p, p> (exact line search)."""
    p = predict(averaging_weights(tasks.x, tasks.y), tasks.x_query).flatten()
    return float((tasks.y_query.flatten() @ p) / (p @ p))


def tune_steps(tasks: RegressionTasks, steps: int, *, plus_plus: bool = False, tied: bool = False,
               iterations: int = 300, lr: float = 0.02) -> dict:
    """Per-step sizes eta_l (and gamma_l for GD++) minimizing the query loss on ``tasks``, by Adam.

    ``tied=True`` shares one eta (and one gamma) across all steps, the GD++ that a recurrent LSA can run
    (von Oswald et al. 2022, Sec. 4). Returns {"etas": [...], "gammas": [...], "loss": float}; the lists
    have one entry per step either way. Starts from eta_l = the best one-step size.
    """
    from gdlab.train import fit

    steps = check_int("steps", steps, min=1)
    kw = dict(dtype=tasks.x.dtype, device=tasks.x.device)
    # optimize relative scales: eta_l = eta0 * s_l and gamma_l = g_l / a, with a the mean eigenvalue of A
    eta0 = best_one_step_size(tasks)
    a = float(tasks.x.pow(2).sum(-1).mean()) / tasks.d
    free = 1 if tied else steps
    eta_scale = torch.ones(free, **kw, requires_grad=True)
    gamma_scale = torch.zeros(free, **kw, requires_grad=plus_plus)
    etas, gammas = (lambda: (eta0 * eta_scale).expand(steps)), (lambda: (gamma_scale / a).expand(steps))

    def loss_fn(_):
        if plus_plus:
            pred = gd_plus_plus_predict(tasks.x, tasks.y, tasks.x_query, etas(), gammas())
        else:
            pred = predict(gd_weights(tasks.x, tasks.y, etas()), tasks.x_query)
        return 0.5 * (pred - tasks.y_query).pow(2).mean()

    with torch.enable_grad():
        fit([eta_scale, gamma_scale] if plus_plus else [eta_scale], loss_fn, iterations, lr=lr, log_every=iterations)
    with torch.no_grad():
        loss = float(loss_fn(0))
        return {"etas": etas().tolist(), "gammas": gammas().tolist(), "loss": loss}


def mahankali_step_size(n: int, d: int, sigma: float = 0.0) -> float:
    """Optimal one-layer LSA = one GD step with eta* = n / (n + d + 1 + sigma^2), for x ~ N(0, I), w ~ N(0, I).

    Mahankali, Hashimoto & Ma 2023 (Thm. 1), with y = w.x + N(0, sigma^2) noise.
    """
    n, d = check_int("n", n, min=1), check_int("d", d, min=1)
    sigma = check_float("sigma", sigma, min=0.0)
    return n / (n + d + 1 + sigma**2)


def ahn_preconditioner(covariance: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal one-layer preconditioner Gamma^-1, Gamma = ((n+1)/n) Sigma + (tr Sigma / n) I, for x ~ N(0, Sigma).

    Ahn et al. 2023 (Thm. 1); Mahankali et al. 2023. Noiseless data, w ~ N(0, I).
    """
    n = check_int("n", n, min=1)
    d = covariance.shape[-1]
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    gamma = (n + 1) / n * covariance + torch.trace(covariance) / n * eye
    return torch.linalg.inv(gamma)


def garg_baselines(k: np.ndarray | Sequence[int], d: int) -> dict[str, np.ndarray]:
    """Expected normalized error E (y_hat - w.x)^2 / d after k points, x, w ~ N(0, I_d), no noise.

    averaging: (d+1)/k; min-norm least squares: max(0, 1 - k/d); one GD step with the best step size
    eta* = k/(k+d+1): (d+1)/(k+d+1). Averaging and least squares are Garg et al. 2022's baselines; the tuned
    one-step GD is the learner of von Oswald et al. 2022, with the Gaussian-data step of Mahankali et al. 2023.
    Derivation: with A = (1/k) sum_i x_i x_i^T, E A^2 = (1 + (d+1)/k) I, so E||(eta A - I) w||^2 / d
    = 1 - 2 eta + eta^2 (1 + (d+1)/k); eta = 1 gives averaging and eta* the tuned step.
    """
    d = check_int("d", d, min=1)
    k = np.asarray(k, dtype=float)
    if (k < 1).any():
        raise ValueError(f"parameter 'k': got {k.tolist()}; expected context sizes >= 1")
    return {"averaging": (d + 1) / k, "least squares": np.maximum(0.0, 1 - k / d),
            "one GD step": (d + 1) / (k + d + 1)}


def uniform_one_step_optimum(n: int, d: int) -> dict:
    """Exact best one-step GD for x ~ U(-0.5, 0.5)^d, w ~ N(0, I), no noise (von Oswald et al.'s data).

    With s = E x_a^2 = 1/12 and T = E tr(A^2), A = (1/N) sum_i x_i x_i^T, the query loss is
    L(eta) = s/2 (d - 2 eta d s + eta^2 T), so eta* = d s / T and L* = (s d / 2)(1 - d s^2 / T);
    T = (E||x||^4 + (N-1) d s^2) / N with E||x||^4 = d/80 + d(d-1) s^2. The zero predictor has loss s d / 2.
    """
    n, d = check_int("n", n, min=1), check_int("d", d, min=1)
    s = 1 / 12
    fourth = d / 80 + d * (d - 1) * s**2
    t = (fourth + (n - 1) * d * s**2) / n
    return {"eta": d * s / t, "loss": s * d / 2 * (1 - d * s**2 / t), "zero_loss": s * d / 2}


def prefix_predictions(x: torch.Tensor, y: torch.Tensor, weights_fn) -> torch.Tensor:
    """Prediction of y_k from the first k points, for k = 0..n-1 (k = 0 predicts 0): (…, n, d), (…, n) -> (…, n).

    ``weights_fn(x_prefix, y_prefix) -> w_hat`` is any learner above (Garg et al. 2022's evaluation).
    """
    return prefix_apply(x, y, lambda xp, yp, xq: predict(weights_fn(xp, yp), xq))


def prefix_apply(x: torch.Tensor, y: torch.Tensor, predict_fn) -> torch.Tensor:
    """Like :func:`prefix_predictions` for any ``predict_fn(x_prefix, y_prefix, x_query) -> y_hat`` (e.g. k-NN)."""
    out = [torch.zeros_like(y[..., 0])]
    for k in range(1, x.shape[-2]):
        out.append(predict_fn(x[..., :k, :], y[..., :k], x[..., k, :]))
    return torch.stack(out, dim=-1)


def tuned_one_step_weights(x: torch.Tensor, y: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """One GD step with the optimal step for Gaussian data, eta*(k) = k / (k + d + 1 + sigma^2) (Mahankali et al.)."""
    k, d = x.shape[-2], x.shape[-1]
    return mahankali_step_size(k, d, sigma) * averaging_weights(x, y)


def baselines(sigma: float = 0.0) -> dict:
    """The learners a trained transformer is compared with, as ``predict(x, y, x_query) -> y_hat``:
    least squares, averaging and 3-nearest neighbours (Garg et al. 2022's baselines) and one GD step with the
    Gaussian-optimal step k/(k+d+1+sigma^2) (von Oswald et al. 2022; Mahankali et al. 2023)."""
    return {"least squares": lambda x, y, q: predict(ols_weights(x, y), q),
            "one GD step": lambda x, y, q: predict(tuned_one_step_weights(x, y, sigma), q),
            "averaging": lambda x, y, q: predict(averaging_weights(x, y), q),
            "3-NN": knn_predict}
