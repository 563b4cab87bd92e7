"""Diagonal linear networks ``beta = u*u - v*v``: the one home of the model for Chapters 2 and 4.

The data (:func:`sparse_regression`), the (S)GD update (:func:`sgd_step`, :func:`train`) and the
curvature at a solution (:func:`trace_hessian`, :func:`per_sample_hessians`) live here; Chapter 2
uses them for the implicit bias of the initialization scale, Chapter 4 for SGD's stability.

Woodworth et al. 2020 (Thm. 1): gradient flow on the square loss from ``u(0) = v(0) = alpha 1``
reaches the interpolant minimizing
``Q_alpha(beta) = sum_i alpha^2 q(beta_i / alpha^2)``, ``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z / 2)``.
Large alpha gives the minimum-l2-norm interpolant (``min_norm_solution``, shared with
:mod:`gdlab.double_descent`), alpha -> 0 the minimum-l1-norm one (:func:`min_l1_solution`).

With the square loss the Hessian at an interpolating solution is ``(1/n) sum_i J_i J_i^T`` with
``J_i = 2 (x_i * u, -x_i * v)``, so ``Tr H = (4/n) sum_i sum_k x_ik^2 (u_k^2 + v_k^2)``, about
``4 ||beta||_1`` for unit-variance features when ``u_k v_k ~ 0`` (Wu & Su 2023, Sec. 4).

Everything is drawn on the device of the generator it is given and computed on the device of its
inputs; runs are batched (``R`` networks advance together as one tensor program).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gdlab.double_descent import min_norm_solution  # noqa: F401  (the pseudo-inverse interpolant X^+ y)
from gdlab.implicit._threads import single_threaded
from gdlab.runtime import check_choice, check_float, check_int, progress

__all__ = [
    "SparseRegression", "sparse_regression", "beta_of", "trace_hessian", "per_sample_hessians",
    "train_loss", "batch_weights", "sgd_step", "DiagonalRun", "train", "flow_step_sizes",
    "diagonal_gd", "q", "Q_alpha", "q_alpha_minimizer", "min_l1_solution", "SaddlePath",
    "saddle_to_saddle", "saddle_tracking", "min_norm_solution",
]


# ------------------------------------------------------------------------------------------ data
@dataclass
class SparseRegression:
    """``y = x beta*`` with a ``k``-sparse ``beta*`` and standard Gaussian features (train and test)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    beta_star: torch.Tensor


def sparse_regression(n: int, d: int, k: int, generator: torch.Generator, *, n_test: int = 1000,
                      signs: str = "random", dtype=torch.float64) -> SparseRegression:
    """Noiseless sparse regression (the setting of Woodworth et al. 2020, Sec. 5; Wu & Su 2023, Sec. 4).

    ``beta*`` is nonzero on ``k`` coordinates drawn uniformly without replacement, with entries +-1
    at random (``signs="random"``) or all +1 (``signs="positive"``). Features are i.i.d. N(0, 1).
    Everything is drawn with ``generator`` on its device, in this order: support, signs (if random),
    train features, test features.
    """
    n, d = check_int("n", n, min=1), check_int("d", d, min=1)
    k = check_int("k", k, min=1, max=d)
    n_test = check_int("n_test", n_test, min=1)
    check_choice("signs", signs, ("random", "positive"))
    dev = generator.device
    support = torch.randperm(d, generator=generator, device=dev)[:k]
    if signs == "random":
        values = torch.randint(0, 2, (k,), generator=generator, device=dev).to(dtype) * 2 - 1
    else:
        values = torch.ones(k, dtype=dtype, device=dev)
    beta = torch.zeros(d, dtype=dtype, device=dev).index_put_((support,), values)
    x = torch.randn(n, d, generator=generator, dtype=dtype, device=dev)
    xt = torch.randn(n_test, d, generator=generator, dtype=dtype, device=dev)
    return SparseRegression(x, x @ beta, xt, xt @ beta, beta)


# ------------------------------------------------------------------------ the model and its curvature
def beta_of(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The regression vector ``u*u - v*v`` of the diagonal network."""
    return u * u - v * v


def trace_hessian(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gauss-Newton trace ``(4/n) sum_i sum_k x_ik^2 (u_k^2 + v_k^2)`` (exact at interpolation);
    batched over leading dimensions of ``u``, ``v``."""
    return 4 * ((u ** 2 + v ** 2) * (x ** 2).mean(dim=0)).sum(dim=-1)


def per_sample_hessians(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Gauss-Newton Hessians ``H_i = J_i J_i^T``, ``J_i = 2 (x_i * u, -x_i * v)``: (n, 2d, 2d).

    At an interpolating solution these are the per-sample Hessians of ``(1/2) (<x_i, beta> - y_i)^2``
    in the weights ``(u, v)``; their mean is the Hessian of the training loss. Feed them to
    :func:`gdlab.stability.sgd_operator.critical_step` for SGD's critical step at that solution.
    """
    J = 2 * torch.cat([x * u, -x * v], dim=-1)
    return J.unsqueeze(-1) * J.unsqueeze(-2)


def train_loss(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1/2n) ||x beta - y||^2``, batched over leading dimensions of ``u``, ``v``."""
    r = beta_of(u, v) @ x.T - y
    return 0.5 * (r * r).mean(-1)


# -------------------------------------------------------------------------------------- (S)GD
def batch_weights(batch_sizes: torch.Tensor, n: int, generator: torch.Generator | None,
                  dtype=torch.float64) -> torch.Tensor:
    """Weights ``(R, n)`` equal to ``1/B_r`` on a batch of ``B_r`` samples drawn without replacement
    (the first ``B_r`` of a fresh random permutation), 0 elsewhere. Runs with ``B_r = n`` get ``1/n``
    everywhere. Draws ``rand(R, n)`` with ``generator`` (on its device) only when some ``B_r < n``."""
    Bs = batch_sizes.to(torch.long)
    R = Bs.numel()
    if bool((Bs == n).all()):
        return torch.full((R, n), 1.0 / n, dtype=dtype, device=Bs.device)
    if generator is None:
        raise ValueError("parameter 'generator': required when a batch size is smaller than n")
    order = torch.rand(R, n, generator=generator, device=generator.device).argsort(dim=1)
    rank = torch.arange(n, device=order.device)[None, :]
    chosen = (rank < Bs.to(order.device)[:, None]).to(dtype)
    weight = torch.zeros(R, n, dtype=dtype, device=order.device).scatter_(1, order, chosen)
    return weight / Bs.to(order.device)[:, None].to(dtype)


def sgd_step(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eta: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One (S)GD step on ``L_S = (1/2) sum_i weight_i (<x_i, beta> - y_i)^2`` for R runs at once.

    ``u, v``: (R, d); ``eta``: (R, 1) or a number; ``weight``: (R, n) (see :func:`batch_weights`;
    ``1/n`` everywhere is full-batch GD). Returns the new ``(u, v)``:
    ``u <- u - 2 eta g * u``, ``v <- v + 2 eta g * v`` with ``g = dL_S/dbeta``.
    """
    g = (weight * (beta_of(u, v) @ x.T - y)) @ x
    return u - eta * 2 * g * u, v + eta * 2 * g * v


@dataclass
class DiagonalRun:
    """(S)GD on R diagonal networks.

    ``alpha``, ``eta``, ``batch_size``: (R,) per run; ``u``, ``v``, ``beta``: final weights (R, d);
    ``steps``: logged step indices (T,); ``loss``: full training loss at those steps (R, T);
    ``path``: ``beta`` at those steps (R, T, d). Diverged runs hold non-finite values.
    """

    alpha: torch.Tensor
    eta: torch.Tensor
    batch_size: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    beta: torch.Tensor
    steps: torch.Tensor
    loss: torch.Tensor
    path: torch.Tensor

    @property
    def alphas(self) -> list:
        return [float(a) for a in self.alpha.cpu()]

    def summary(self, task: SparseRegression) -> dict[str, torch.Tensor]:
        """Per run: ``beta``, ``l1``, ``trace`` (Tr H), ``train_loss`` and ``test_error`` (mean squared
        error on the test set), all on the run's device."""
        beta = self.beta
        return {"beta": beta, "l1": beta.abs().sum(-1), "trace": trace_hessian(self.u, self.v, task.x),
                "train_loss": train_loss(self.u, self.v, task.x, task.y),
                "test_error": ((beta @ task.x_test.T - task.y_test) ** 2).mean(-1)}


def _per_run(name, value, R, dtype, device):
    t = torch.as_tensor(value, dtype=dtype).reshape(-1).to(device)
    if t.numel() == 1:
        t = t.expand(R)
    if t.numel() != R:
        raise ValueError(f"parameter {name!r}: got {t.numel()} values; expected 1 or {R} (one per run)")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"parameter {name!r}: got {t.cpu().tolist()}; expected finite numbers > 0")
    return t.clone()


def train(x: torch.Tensor, y: torch.Tensor, *, alpha, eta, steps: int, batch_sizes=None,
          generator: torch.Generator | None = None, log_every: int | None = None) -> DiagonalRun:
    """(S)GD on ``L(u, v) = (1/2n) ||x (u*u - v*v) - y||^2`` from ``u = v = alpha 1``, R runs at once.

    ``alpha``, ``eta`` and ``batch_sizes`` are each a number or one value per run (R is the longest);
    ``batch_sizes=None`` means full batch (GD) for every run. A run with batch size B < n draws a batch
    without replacement every step with ``generator`` (required then, on the device of ``x``).
    ``log_every`` (default: only the start and the end) sets how often the full loss and ``beta`` are
    recorded. Deterministic given the generator's state and the device.
    """
    steps = check_int("steps", steps, min=1)
    log_every = steps if log_every is None else check_int("log_every", log_every, min=1)
    n, d = x.shape
    if y.shape != (n,) or y.device != x.device:
        raise ValueError(f"parameter 'y': expected shape ({n},) on {x.device}; got {tuple(y.shape)} on {y.device}")
    if generator is not None and torch.device(generator.device).type != x.device.type:
        raise ValueError(f"parameter 'generator': on {generator.device}, the data on {x.device}")
    if isinstance(batch_sizes, torch.Tensor):
        batch_sizes = batch_sizes.cpu()
    sizes = [n] if batch_sizes is None else np.atleast_1d(np.asarray(batch_sizes)).tolist()
    sizes = [check_int(f"batch_sizes[{i}]", b, min=1, max=n) for i, b in enumerate(sizes)]
    R = max(len(sizes), torch.as_tensor(alpha).numel(), torch.as_tensor(eta).numel())
    a = _per_run("alpha", alpha, R, x.dtype, x.device)
    e = _per_run("eta", eta, R, x.dtype, x.device)
    Bs = torch.as_tensor(sizes, dtype=torch.long, device=x.device)
    if Bs.numel() == 1:
        Bs = Bs.expand(R)
    if Bs.numel() != R:
        raise ValueError(f"parameter 'batch_sizes': got {Bs.numel()} values; expected 1 or {R} (one per run)")
    u = a[:, None].expand(R, d).clone()
    v = a[:, None].expand(R, d).clone()
    eta_col = e[:, None]
    logged, losses, path = [], [], []
    with single_threaded(x.device):
        for t in progress(range(steps + 1), desc="diagonal (S)GD"):
            if t % log_every == 0 or t == steps:
                logged.append(t)
                losses.append(train_loss(u, v, x, y))
                path.append(beta_of(u, v))
            if t == steps:
                break
            u, v = sgd_step(u, v, x, y, eta_col, batch_weights(Bs, n, generator, x.dtype))
    return DiagonalRun(a, e, Bs.clone(), u, v, beta_of(u, v), torch.tensor(logged), torch.stack(losses, 1),
                       torch.stack(path, 1))


def flow_step_sizes(x: torch.Tensor, y: torch.Tensor, alphas, step_scale: float = 0.05) -> torch.Tensor:
    """Per-alpha steps ``eta = step_scale / (4 lambda_max(x^T x / n) max(alpha^2, max|beta_l1|))``: a small
    fraction of the local stability limit along the path, so that GD tracks gradient flow."""
    step_scale = check_float("step_scale", step_scale, min=0.0, max=1.0, open_min=True)
    a = _per_run("alphas", alphas, torch.as_tensor(alphas).numel(), x.dtype, x.device)
    L = float(torch.linalg.eigvalsh(x.T @ x / x.shape[0])[-1])
    scale = float(min_l1_solution(x, y).abs().max())
    return step_scale / (4 * L * torch.clamp(a * a, min=scale))


def diagonal_gd(x: torch.Tensor, y: torch.Tensor, alphas, steps: int, *, step_scale: float = 0.05,
                log_every: int = 100) -> DiagonalRun:
    """Full-batch GD from ``u = v = alpha 1``, one network per alpha, each at its
    :func:`flow_step_sizes` step (Woodworth et al. 2020 analyse the flow). Time is measured in steps."""
    return train(x, y, alpha=alphas, eta=flow_step_sizes(x, y, alphas, step_scale), steps=steps,
                 log_every=log_every)


# ------------------------------------------------------------------------- reference interpolants
def q(z: torch.Tensor) -> torch.Tensor:
    """``q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z / 2)`` (Woodworth et al. 2020, Thm. 1)."""
    return 2 - torch.sqrt(4 + z * z) + z * torch.asinh(z / 2)


def Q_alpha(beta: torch.Tensor, alpha: float) -> torch.Tensor:
    """``Q_alpha(beta) = sum_i alpha^2 q(beta_i / alpha^2)`` over the last dimension."""
    return (alpha ** 2 * q(beta / alpha ** 2)).sum(-1)


def q_alpha_minimizer(X: torch.Tensor, y: torch.Tensor, alpha: float, *, tol: float = 1e-12,
                      max_iter: int = 200) -> torch.Tensor:
    """The interpolant ``X beta = y`` minimizing ``Q_alpha``, from its dual (on the device of ``X``).

    Stationarity gives ``arcsinh(beta / (2 alpha^2)) = X^T lambda``, i.e.
    ``beta = 2 alpha^2 sinh(X^T lambda)``; lambda minimizes the convex dual
    ``D(lambda) = 2 alpha^2 sum cosh(X^T lambda) - y^T lambda``, solved by damped Newton in float64.
    """
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    with single_threaded("cpu"):
        beta = _q_alpha_newton(X.detach().cpu().double(), y.detach().cpu().double(), alpha, tol, max_iter)
    return beta.to(device=X.device, dtype=X.dtype)


def _q_alpha_newton(Xd, yd, alpha, tol, max_iter):
    c = 2 * alpha ** 2
    lam = torch.zeros_like(yd)
    dual = lambda l: c * torch.cosh(Xd.T @ l).sum() - yd @ l  # noqa: E731
    for _ in range(max_iter):
        z = Xd.T @ lam
        grad = Xd @ (c * torch.sinh(z)) - yd
        if float(grad.norm()) <= tol * max(1.0, float(yd.norm())):
            break
        H = (Xd * (c * torch.cosh(z))) @ Xd.T
        step = torch.linalg.solve(H, grad)
        t, d0 = 1.0, dual(lam)
        while dual(lam - t * step) > d0 - 0.25 * t * (grad @ step) and t > 1e-12:
            t /= 2
        lam = lam - t * step
    return c * torch.sinh(Xd.T @ lam)


def min_l1_solution(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmin ||beta||_1`` s.t. ``X beta = y`` as a linear program (beta = u - v, u, v >= 0), solved by
    HiGHS on the host; the result is returned on the device and in the dtype of ``X``."""
    from scipy.optimize import linprog

    Xn, yn = X.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
    d = Xn.shape[1]
    res = linprog(np.ones(2 * d), A_eq=np.hstack([Xn, -Xn]), b_eq=yn, bounds=(0, None), method="highs")
    if not res.success:
        raise RuntimeError(f"the l1 linear program failed: {res.message}")
    return torch.as_tensor(res.x[:d] - res.x[d:]).to(device=X.device, dtype=X.dtype)


# ------------------------------------------------------------------------------ saddle to saddle
@dataclass
class SaddlePath:
    """The limit of the accelerated flow ``beta(t ln(1/alpha))`` as alpha -> 0 (Pesme & Flammarion 2023):
    piecewise constant, equal to ``saddles[k]`` on ``[times[k], times[k+1])`` (the last one for ever).
    ``times`` (K+1,) starts at 0 with ``saddles[0] = 0``; ``signs`` (K+1, d) is the dual vector s(t_k) with
    the support's signs at +-1/2."""

    times: torch.Tensor
    saddles: torch.Tensor
    signs: torch.Tensor

    def at(self, t: torch.Tensor) -> torch.Tensor:
        """The limiting process at accelerated times ``t`` (T,): (T, d)."""
        idx = torch.searchsorted(self.times, t.to(self.times), right=True) - 1
        return self.saddles[idx.clamp(min=0)]


def saddle_to_saddle(X: torch.Tensor, y: torch.Tensor, *, tol: float = 1e-10, max_jumps: int = 1000) -> SaddlePath:
    """The saddles and jump times of small-initialization gradient flow on ``(1/2n)||X beta - y||^2``
    with ``beta = u*u - v*v``, ``u = v = alpha 1`` (Pesme & Flammarion 2023, Algorithm 1, in this
    parametrization).

    The flow gives ``beta_i(t) = 2 alpha^2 sinh(4 S_i(t))`` with ``S(t) = -int_0^t grad L(beta)``. In the
    accelerated time ``t~ = t / ln(1/alpha)`` and with ``s = S / ln(1/alpha)``, ``|beta_i| ~ alpha^(2 - 4|s_i|)``:
    a coordinate is zero while ``|s_i| < 1/2`` and may be nonzero, with the sign of ``s_i``, once ``|s_i| = 1/2``.
    Between jumps ``beta`` sits at a saddle and ``s`` moves linearly, ``ds/dt~ = -grad L(beta_k)``; the next
    jump is the first time an inactive coordinate reaches ``|s_i| = 1/2``, and the new saddle minimizes L
    over ``beta_i = 0`` (``|s_i| < 1/2``), ``sign(s_i) beta_i >= 0`` (``|s_i| = 1/2``), a bounded least-squares
    problem (scipy's BVLS). The path ends at an interpolant, the minimum-l1-norm one. Runs on the host in
    float64; the result is on the device of ``X``.
    """
    from scipy.optimize import lsq_linear

    tol = check_float("tol", tol, min=0.0, open_min=True)
    max_jumps = check_int("max_jumps", max_jumps, min=1)
    Xn, yn = X.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
    n, d = Xn.shape
    scale = max(1.0, float(np.abs(Xn.T @ yn).max()) / n)
    t, s, beta = 0.0, np.zeros(d), np.zeros(d)
    times, saddles, signs = [0.0], [beta.copy()], [s.copy()]
    for _ in range(max_jumps):
        g = Xn.T @ (Xn @ beta - yn) / n
        if np.abs(g).max() <= tol * scale:
            break
        moving = np.abs(g) > tol * scale
        target = np.where(g < 0, 0.5, -0.5)            # the boundary s_i moves towards
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(moving, (s - target) / g, np.inf)
        delta[delta <= 1e-15] = np.inf                   # at the boundary already (or moving away)
        if not np.isfinite(delta.min()):
            raise RuntimeError("saddle_to_saddle: no coordinate can activate, but the gradient is not zero")
        step = delta.min()
        t, s = t + step, np.clip(s - step * g, -0.5, 0.5)
        on = np.abs(np.abs(s) - 0.5) <= 1e-9
        idx = np.nonzero(on)[0]
        lo = np.where(s[idx] > 0, 0.0, -np.inf)
        hi = np.where(s[idx] > 0, np.inf, 0.0)
        fit = lsq_linear(Xn[:, idx], yn, bounds=(lo, hi), method="bvls", tol=1e-14)
        beta = np.zeros(d)
        beta[idx] = fit.x
        times.append(t)
        saddles.append(beta.copy())
        signs.append(s.copy())
    else:
        raise RuntimeError(f"saddle_to_saddle: no interpolant after {max_jumps} jumps")
    as_t = lambda a: torch.as_tensor(np.asarray(a)).to(device=X.device, dtype=torch.float64)  # noqa: E731
    return SaddlePath(as_t(times), as_t(saddles), as_t(signs))


def saddle_tracking(run: DiagonalRun, path: SaddlePath, *, min_plateau: float = 0.1) -> dict[str, torch.Tensor]:
    """How closely each GD run of ``run`` follows the saddle-to-saddle ``path`` in accelerated time
    ``t~ = eta t / ln(1/alpha)`` (steps times the run's step, over ln(1/alpha)).

    Per run (R,): ``time_error``, the largest relative error ``|t~_hit / t~_k - 1|`` over the activations,
    where a coordinate that enters the support at jump k is "hit" when ``|beta_i|`` first reaches half its value
    in saddle k (inf if never); ``saddle_error``, the largest ``||beta(t~) - saddle_k|| / ||beta_final||`` at the
    middle of every plateau at least ``min_plateau`` long (and at 1.15 t~_K for the last one). Needs the
    run's path logged densely (``log_every``)."""
    min_plateau = check_float("min_plateau", min_plateau, min=0.0)
    times, saddles = path.times.cpu(), path.saddles.cpu()
    K = len(times) - 1
    scale = float(saddles[-1].norm())
    t_errors, s_errors = [], []
    for r in range(run.beta.shape[0]):
        a, e = float(run.alpha[r]), float(run.eta[r])
        tt = run.steps.double() * e / np.log(1 / a)
        beta = run.path[r].detach().cpu().double()
        errs = []
        for k in range(1, K + 1):
            for i in torch.nonzero((saddles[k] != 0) & (saddles[k - 1] == 0)).flatten().tolist():
                hit = torch.nonzero(beta[:, i].abs() >= saddles[k, i].abs() / 2).flatten()
                errs.append(abs(float(tt[hit[0]]) / float(times[k]) - 1) if len(hit) else float("inf"))
        t_errors.append(max(errs) if errs else float("nan"))
        ends = torch.cat([times[2:], times[-1:] * 1.3])
        serrs = []
        for k in range(1, K + 1):
            if float(ends[k - 1] - times[k]) >= min_plateau or k == K:
                mid = (times[k] + ends[k - 1]) / 2
                j = min(int(torch.searchsorted(tt, mid)), len(tt) - 1)
                serrs.append(float((beta[j] - saddles[k]).norm()) / scale)
        s_errors.append(max(serrs))
    return {"time_error": torch.tensor(t_errors, dtype=torch.float64),
            "saddle_error": torch.tensor(s_errors, dtype=torch.float64)}
