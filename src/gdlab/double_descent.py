"""Double descent in linear models: random features, min-norm and ridge solutions, the
ridgeless closed forms, Marchenko-Pastur spectra and the spectral solution of gradient descent.

Every solver here is a *spectral filter* of the data matrix: with ``F = U diag(s) V^T``,

    beta = V diag(f(s)) U^T y,

where ``f(s) = 1/s`` is the min-norm least-squares solution (Belkin et al. 2019; Hastie et al.
2019), ``f(s) = s / (s^2 + n lambda)`` is ridge, and ``f(s) = (1 - (1 - eta s^2 / n)^T) / s`` is
T steps of gradient descent from zero (Advani & Saxe 2017; Liu & Flanigan 2023). The peak of
the test error at N = n comes from the smallest singular value: 1/s is huge there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from gdlab.runtime import check_choice, check_float, check_int, check_sequence

FEATURE_KINDS = ("relu", "fourier")


# ---------------------------------------------------------------- random features
@dataclass(frozen=True)
class RandomFeatures:
    """A random-feature map x -> phi(x W + b) with fixed W (d, N) ~ N(0, 1/d) (Rahimi & Recht
    2007; Belkin et al. 2019, Sec. 3): ``relu`` gives max(0, x W); ``fourier`` gives
    sqrt(2) cos(x W + b) with phases b ~ U(0, 2 pi)."""

    weights: torch.Tensor
    phases: torch.Tensor
    kind: str = "relu"

    def __call__(self, x: torch.Tensor, num_features: int | None = None) -> torch.Tensor:
        """Features of x (n, d); ``num_features`` uses only the first N features (nested maps)."""
        w, b = self.weights, self.phases
        if num_features is not None:
            w, b = w[:, :num_features], b[:num_features]
        z = x @ w
        return torch.relu(z) if self.kind == "relu" else math.sqrt(2.0) * torch.cos(z + b)


def random_features(d: int, N: int, generator: torch.Generator, kind: str = "relu",
                    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> RandomFeatures:
    """Draw a random-feature map with ``N`` features of ``d``-dimensional inputs."""
    d, N = check_int("d", d, min=1), check_int("N", N, min=1)
    check_choice("kind", kind, FEATURE_KINDS)
    w = torch.randn(d, N, generator=generator, dtype=dtype, device=device) / math.sqrt(d)
    b = torch.rand(N, generator=generator, dtype=dtype, device=device) * 2 * math.pi
    return RandomFeatures(w, b, kind)


# ---------------------------------------------------------------- spectral solvers
def _spectral_solution(F: torch.Tensor, y: torch.Tensor, filt) -> torch.Tensor:
    """beta = V diag(filt(s)) U^T y for F = U diag(s) V^T (batched over leading dims)."""
    U, s, Vh = torch.linalg.svd(F, full_matrices=False)
    coef = filt(s) * (U.mT @ y.unsqueeze(-1)).squeeze(-1)
    return (Vh.mT @ coef.unsqueeze(-1)).squeeze(-1)


def _rank_cutoff(s: torch.Tensor, rcond: float | None) -> torch.Tensor:
    if rcond is None:
        rcond = torch.finfo(s.dtype).eps * max(s.shape[-1], 1) * 10
    return s > rcond * s.amax(-1, keepdim=True)


def min_norm_solution(F: torch.Tensor, y: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """The minimum-norm least-squares solution F^+ y: the interpolant of smallest norm when
    N >= n, ordinary least squares when N < n (Hastie et al. 2019, Eq. 2 with lambda -> 0)."""
    def filt(s):
        keep = _rank_cutoff(s, rcond)
        return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return _spectral_solution(F, y, filt)


def ridge_solution(F: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_beta (1/n) ||y - F beta||^2 + lambda ||beta||^2 (Hastie et al. 2019, Eq. 3);
    lambda = 0 gives the min-norm solution."""
    lam = check_float("lam", lam, min=0.0)
    if lam == 0:
        return min_norm_solution(F, y)
    n = F.shape[-2]
    return _spectral_solution(F, y, lambda s: s / (s * s + n * lam))


def gd_solution(F: torch.Tensor, y: torch.Tensor, eta: float, steps: int) -> torch.Tensor:
    """``steps`` steps of gradient descent on (1/2n) ||y - F beta||^2 from beta = 0, in closed
    form: the filter (1 - (1 - eta s^2/n)^T) / s (Liu & Flanigan 2023, Sec. 3; Advani & Saxe 2017)."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=0)
    n = F.shape[-2]

    def filt(s):
        keep = _rank_cutoff(s, None)
        safe = torch.where(keep, s, torch.ones_like(s))
        return torch.where(keep, _gd_gain(eta * safe**2 / n, steps) / safe, torch.zeros_like(s))
    return _spectral_solution(F, y, filt)


def _gd_gain(eta_lam: torch.Tensor, t) -> torch.Tensor:
    """1 - (1 - eta lambda)^t: how much of a direction with curvature lambda GD has fit after t steps."""
    return 1 - torch.pow(1 - eta_lam, t)


def condition_number(F: torch.Tensor) -> torch.Tensor:
    """s_max / s_min of F over its min(n, N) singular values (Liu & Flanigan 2023, Sec. 4)."""
    s = torch.linalg.svdvals(F)
    return s[..., 0] / s[..., -1]


# ---------------------------------------------------------------- closed forms
def ridgeless_risk(gamma, r2: float = 1.0, sigma2: float = 1.0):
    """Asymptotic excess test risk of min-norm least squares with isotropic features,
    gamma = p/n (Hastie, Montanari, Rosset & Tibshirani 2019, Thm. 1):
    sigma^2 gamma / (1 - gamma) for gamma < 1, r^2 (1 - 1/gamma) + sigma^2 / (gamma - 1) for gamma > 1.
    ``r2`` = ||beta||^2 (signal), ``sigma2`` = noise variance. Infinite at gamma = 1."""
    r2 = check_float("r2", r2, min=0.0)
    sigma2 = check_float("sigma2", sigma2, min=0.0)
    g = np.asarray(gamma, dtype=float)
    if np.any(g <= 0):
        raise ValueError(f"parameter 'gamma': got {gamma!r}; expected values > 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        under = sigma2 * g / (1 - g)
        over = r2 * (1 - 1 / g) + sigma2 / (g - 1)
    out = np.where(g < 1, under, np.where(g > 1, over, np.inf))
    return float(out) if out.ndim == 0 else out


def optimal_ridge_lambda(gamma: float, r2: float = 1.0, sigma2: float = 1.0) -> float:
    """lambda* = sigma^2 gamma / r^2, the risk-minimizing ridge penalty for isotropic features
    (Hastie et al. 2019, Thm. 5; Dobriban & Wager 2018)."""
    gamma = check_float("gamma", gamma, min=0.0, open_min=True)
    r2 = check_float("r2", r2, min=0.0, open_min=True)
    return check_float("sigma2", sigma2, min=0.0) * gamma / r2


def marchenko_pastur_edges(alpha: float) -> tuple[float, float]:
    """Support [(1 - sqrt(alpha))^2, (1 + sqrt(alpha))^2] of the spectrum of X^T X for
    X (P, N) with entries N(0, 1/N) and alpha = P/N (Advani & Saxe 2017, Eq. 11)."""
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    return (1 - math.sqrt(alpha)) ** 2, (1 + math.sqrt(alpha)) ** 2


def marchenko_pastur_density(lam, alpha: float):
    """Continuous part of the Marchenko-Pastur density of X^T X (entries N(0, 1/N), alpha = P/N):
    rho(lambda) = sqrt((lambda_+ - lambda)(lambda - lambda_-)) / (2 pi lambda) on the support.
    It integrates to min(alpha, 1); for alpha < 1 the remaining mass 1 - alpha sits at
    lambda = 0 (Advani & Saxe 2017, Eq. 11)."""
    lo, hi = marchenko_pastur_edges(alpha)
    lam = np.asarray(lam, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.sqrt(np.clip((hi - lam) * (lam - lo), 0, None)) / (2 * math.pi * lam)
    rho = np.where((lam > lo) & (lam < hi) & (lam > 0), rho, 0.0)
    return float(rho) if rho.ndim == 0 else rho


# ---------------------------------------------------------------- Advani & Saxe dynamics
def gd_iterates(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, eta: float, steps: int) -> torch.Tensor:
    """Plain gradient descent on (1/2) ||y - X w||^2, the iterates w_0 .. w_steps (steps+1, N).
    The loop that :func:`spectral_gd_solution` solves in closed form."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=0)
    w, out = w0.clone(), [w0.clone()]
    for _ in range(steps):
        w = w - eta * (X.mT @ (X @ w - y))
        out.append(w)
    return torch.stack(out)


def spectral_gd_solution(X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, eta: float,
                         times: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """GD iterate of (1/2) ||y - X w||^2 at each step count in ``times``, in closed form:
    w_t = w_0 + V diag((1 - (1 - eta lambda)^t) / lambda) V^T X^T (y - X w_0), with
    X^T X = V diag(lambda) V^T (Advani & Saxe 2017, Eq. 7-9, discrete time). Directions with
    lambda = 0 keep their initial value: the frozen subspace. Returns (len(times), N)."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    t = torch.as_tensor(times, dtype=X.dtype, device=X.device).reshape(-1, 1)
    lam, V = torch.linalg.eigh(X.mT @ X)
    g = V.mT @ (X.mT @ (y - X @ w0))  # gradient at w0 in the eigenbasis (zero where lambda = 0)
    tiny = lam.abs().amax() * torch.finfo(X.dtype).eps * X.shape[-1]
    live = lam > tiny
    safe = torch.where(live, lam, torch.ones_like(lam))
    gain = torch.where(live, _gd_gain(eta * safe, t) / safe, eta * t)
    return w0 + (gain * g) @ V.mT


@dataclass
class AdvaniSaxeCurves:
    """Generalization error E_g(t) = ||w_t - w*||^2 / N + sigma^2 over GD time (mean over trials)."""

    alpha: float
    times: np.ndarray
    test_error: np.ndarray      # E_g(t), one value per time
    test_error_inf: float       # E_g at convergence (t -> infinity)
    test_error_inf_zero_init: float  # same data, w_0 = 0
    eigenvalues: np.ndarray     # spectrum of X^T X of all trials (for the MP histogram)

    @property
    def overtraining_ratio(self) -> float:
        """min_t E_g(t) / E_g(infinity): near 0 when early stopping helps a lot."""
        return float(min(self.test_error.min(), self.test_error_inf) / self.test_error_inf)

    @property
    def frozen_excess(self) -> float:
        """E_g(inf) minus the same run from w_0 = 0: the cost of the frozen initialization."""
        return self.test_error_inf - self.test_error_inf_zero_init


def advani_saxe_curves(N: int, alpha: float, sigma: float, sigma0: float, generator: torch.Generator,
                       times: Sequence[int], trials: int = 10, sigma_w: float = 1.0) -> AdvaniSaxeCurves:
    """Linear teacher-student regression (Advani & Saxe 2017, Sec. 2): teacher w* ~ N(0, sigma_w^2 I),
    P = alpha N inputs x ~ N(0, I/N), labels y = w*.x + N(0, sigma^2), student w_0 ~ N(0, sigma0^2 I),
    full-batch GD with eta = 1 / lambda_+ (stable for the whole MP support)."""
    N = check_int("N", N, min=2)
    alpha = check_float("alpha", alpha, min=0.0, open_min=True)
    sigma, sigma0 = check_float("sigma", sigma, min=0.0), check_float("sigma0", sigma0, min=0.0)
    trials = check_int("trials", trials, min=1)
    P = max(1, round(alpha * N))
    eta = 1.0 / marchenko_pastur_edges(alpha)[1]
    curves, inf, inf0, eigs = [], [], [], []
    for _ in range(trials):
        X = torch.randn(P, N, generator=generator, dtype=torch.float64) / math.sqrt(N)
        w_star = sigma_w * torch.randn(N, generator=generator, dtype=torch.float64)
        y = X @ w_star + sigma * torch.randn(P, generator=generator, dtype=torch.float64)
        w0 = sigma0 * torch.randn(N, generator=generator, dtype=torch.float64)
        err = lambda w: ((w - w_star) ** 2).sum(-1) / N + sigma**2  # noqa: E731
        curves.append(err(spectral_gd_solution(X, y, w0, eta, times)))
        # t -> infinity: w_0 projected on the null space plus the min-norm solution
        w_inf = min_norm_solution(X, y)
        frozen = w0 - torch.linalg.pinv(X) @ (X @ w0)
        inf.append(err(w_inf + frozen))
        inf0.append(err(w_inf))
        eigs.append(torch.linalg.eigvalsh(X.mT @ X))
    return AdvaniSaxeCurves(alpha, np.asarray(times, dtype=float), torch.stack(curves).mean(0).numpy(),
                            float(torch.stack(inf).mean()), float(torch.stack(inf0).mean()),
                            torch.cat(eigs).numpy())


# ---------------------------------------------------------------- random-features experiment
@dataclass
class RandomFeatureCurves:
    """Test and train MSE of random-feature regression over the number of features N (mean over
    trials). ``test`` is the excess risk, measured against the noiseless target."""

    n: int
    num_features: np.ndarray                     # N grid
    min_norm_test: np.ndarray
    min_norm_train: np.ndarray
    ridge_test: np.ndarray                       # oracle-tuned ridge (best lambda per N and trial)
    condition: np.ndarray                        # cond(F), mean over trials
    gd_test: dict[int, np.ndarray]               # GD budget T -> test MSE
    gd_train: dict[int, np.ndarray]

    @property
    def ratio(self) -> np.ndarray:
        return self.num_features / self.n

    def at(self, values: np.ndarray, ratio: float) -> float:
        """Value at the grid point whose N/n is closest to ``ratio``."""
        return float(values[int(np.argmin(np.abs(np.log(self.ratio / ratio))))])


def random_feature_curves(n: int, d: int, ratios: Sequence[float], sigma: float, generator: torch.Generator,
                          trials: int = 5, kind: str = "relu", n_test: int = 2000,
                          ridge_lambdas: Sequence[float] = tuple(np.logspace(-6, 1, 15)),
                          gd_budgets: Sequence[int] = (), device: str | torch.device = "cpu") -> RandomFeatureCurves:
    """Min-norm, oracle-ridge and budgeted-GD random-feature regression of a linear teacher
    y = x.beta + N(0, sigma^2), x ~ N(0, I_d), ||beta|| = 1, for N = ratio * n features
    (Belkin et al. 2019, Fig. 2; Liu & Flanigan 2023, Fig. 1). GD uses eta = n / s_max^2."""
    n, d = check_int("n", n, min=2), check_int("d", d, min=1)
    ratios = check_sequence("ratios", ratios, lambda k, v: check_float(k, v, min=0.0, open_min=True))
    sigma = check_float("sigma", sigma, min=0.0)
    trials = check_int("trials", trials, min=1)
    gd_budgets = check_sequence("gd_budgets", gd_budgets, lambda k, v: check_int(k, v, min=1), min_len=0)
    Ns = np.array(sorted({max(1, round(r * n)) for r in ratios}))
    out = {k: np.zeros((trials, len(Ns))) for k in ("mn", "mn_tr", "ridge", "cond")}
    gd_te = {T: np.zeros((trials, len(Ns))) for T in gd_budgets}
    gd_tr = {T: np.zeros((trials, len(Ns))) for T in gd_budgets}
    opts = dict(dtype=torch.float64, device=device)
    for trial in range(trials):
        beta = torch.randn(d, generator=generator, **opts)
        beta = beta / beta.norm()
        x, x_te = torch.randn(n, d, generator=generator, **opts), torch.randn(n_test, d, generator=generator, **opts)
        y = x @ beta + sigma * torch.randn(n, generator=generator, **opts)
        f_te = x_te @ beta
        phi = random_features(d, int(Ns[-1]), generator, kind, dtype=torch.float64, device=device)
        for j, N in enumerate(Ns):
            F = phi(x, int(N))
            U, s, Vh = torch.linalg.svd(F, full_matrices=False)
            keep = _rank_cutoff(s, None)
            U, s, Vh = U[:, keep], s[keep], Vh[keep]
            uy = U.mT @ y
            A = phi(x_te, int(N)) @ Vh.mT  # test features in the right-singular basis

            def mse(filt):  # test (excess) and train MSE of beta = V diag(filt) U^T y
                c = filt * uy
                return float(((A @ c - f_te) ** 2).mean()), float(((U @ (s * c) - y) ** 2).mean())

            out["mn"][trial, j], out["mn_tr"][trial, j] = mse(1 / s)
            out["ridge"][trial, j] = min(mse(s / (s**2 + n * lam))[0] for lam in ridge_lambdas)
            out["cond"][trial, j] = float(s[0] / s[-1])
            eta = n / float(s[0]) ** 2  # the largest stable-and-monotone step, 1 / lambda_max
            for T in gd_budgets:
                gd_te[T][trial, j], gd_tr[T][trial, j] = mse(_gd_gain(eta * s**2 / n, T) / s)
    mean = lambda a: a.mean(0)  # noqa: E731
    return RandomFeatureCurves(n, Ns, mean(out["mn"]), mean(out["mn_tr"]), mean(out["ridge"]), mean(out["cond"]),
                               {T: mean(v) for T, v in gd_te.items()}, {T: mean(v) for T, v in gd_tr.items()})


def isotropic_ridgeless_risk(n: int, gammas: Sequence[float], sigma: float, generator: torch.Generator,
                             trials: int = 20, r: float = 1.0) -> np.ndarray:
    """Empirical excess risk E||beta_hat - beta||^2 of min-norm least squares with isotropic
    Gaussian features x ~ N(0, I_p), p = gamma n, ||beta|| = r, mean over trials of X and beta
    (the label noise is averaged exactly: sigma^2 tr((X^T X)^+)): the finite-n counterpart of
    :func:`ridgeless_risk` (Hastie et al. 2019, Fig. 2)."""
    n = check_int("n", n, min=2)
    gammas = check_sequence("gammas", gammas, lambda k, v: check_float(k, v, min=0.0, open_min=True))
    sigma, r = check_float("sigma", sigma, min=0.0), check_float("r", r, min=0.0)
    trials = check_int("trials", trials, min=1)
    risks = np.zeros((trials, len(gammas)))
    for trial in range(trials):
        for j, g in enumerate(gammas):
            p = max(1, round(g * n))
            beta = torch.randn(p, generator=generator, dtype=torch.float64)
            beta = r * beta / beta.norm()
            X = torch.randn(n, p, generator=generator, dtype=torch.float64)
            _, sv, Vh = torch.linalg.svd(X, full_matrices=False)
            keep = _rank_cutoff(sv, None)
            sv, Vh = sv[keep], Vh[keep]
            # beta_hat = X^+ (X beta + eps): bias ||(I - P) beta||^2 plus noise sigma^2 ||X^+||_F^2
            bias = float((beta - Vh.mT @ (Vh @ beta)).pow(2).sum())
            risks[trial, j] = bias + sigma**2 * float((1 / sv**2).sum())
    return risks.mean(0)


# ---------------------------------------------------------------- deep double descent summaries
def width_curves(results, metric: str = "test_error") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final ``metric`` of sweep results (``gdlab.sweep.PointResult``) per width: (widths, mean, std)
    over the seeds of each width."""
    check_choice("metric", metric, ("test_error", "train_error", "test_loss", "train_loss"))
    by_width: dict[int, list[float]] = {}
    for r in results:
        by_width.setdefault(r.point.width, []).append(getattr(r, metric)[-1])
    widths = np.array(sorted(by_width))
    values = [np.array(by_width[w]) for w in widths]
    return widths, np.array([v.mean() for v in values]), np.array([v.std() for v in values])


def model_wise_peak(widths, train_error, test_error, interpolated: float = 0.02, near: float = 1.5) -> dict:
    """The deep-double-descent peak at the interpolation threshold (Nakkiran et al. 2019, Sec. 5).

    The interpolation width h* is read off the *train* curve alone: the smallest width whose train
    error is <= ``interpolated`` ("train error about 0"). The ``peak`` is the test error at h*; it
    is compared with the best test error of the narrow widths (below h* / ``near``) and with the
    widest model. For information, ``highest_width`` is where the test curve is largest beyond the
    best narrow width (the top of the second ascent; over all widths if there is no narrow one),
    ``highest`` that test error and ``train_error_at_highest`` its train error. Without an
    interpolating width, or without a narrow one, the margins are NaN (a claim on them then fails
    instead of crashing)."""
    widths, train_error, test_error = (np.asarray(v, dtype=float) for v in (widths, train_error, test_error))
    if not (widths.shape == train_error.shape == test_error.shape) or widths.ndim != 1 or len(widths) == 0:
        raise ValueError(f"parameters 'widths', 'train_error', 'test_error': got shapes {widths.shape}, "
                         f"{train_error.shape}, {test_error.shape}; expected three 1-D arrays of one length")
    if np.any(np.diff(widths) <= 0):
        raise ValueError(f"parameter 'widths': got {widths.tolist()}; expected strictly increasing widths")
    interpolated = check_float("interpolated", interpolated, min=0.0, max=1.0)
    near = check_float("near", near, min=1.0)
    fitted = np.nonzero(train_error <= interpolated)[0]
    j_star = int(fitted[0]) if len(fitted) else None
    narrow = widths < widths[j_star] / near if j_star is not None else np.zeros(len(widths), dtype=bool)
    j_narrow = int(np.argmin(np.where(narrow, test_error, np.inf))) if narrow.any() else -1
    j_top = j_narrow + 1 + int(np.argmax(test_error[j_narrow + 1:]))
    out = {"interpolation_width": None, "peak": float("nan"), "narrow_best": float("nan"),
           "widest": float(test_error[-1]), "peak_minus_narrow": float("nan"), "peak_minus_widest": float("nan"),
           "train_error_at_peak": float("nan"), "highest_width": int(widths[j_top]),
           "highest": float(test_error[j_top]), "train_error_at_highest": float(train_error[j_top])}
    if j_star is None:
        return out
    peak = float(test_error[j_star])
    out.update(interpolation_width=int(widths[j_star]), peak=peak, train_error_at_peak=float(train_error[j_star]),
               peak_minus_widest=peak - float(test_error[-1]))
    if narrow.any():
        best = float(test_error[j_narrow])
        out.update(narrow_best=best, peak_minus_narrow=peak - best)
    return out


def epoch_wise_bump(test_error, smooth: int = 5) -> dict:
    """Largest fall-rise-fall of a test-error curve over training (Nakkiran et al. 2019, Sec. 6):
    after a moving average over ``smooth`` evaluations, the epochs t1 < t2 < t3 maximizing
    min(rise, fall) with rise = e(t2) - e(t1), fall = e(t2) - e(t3). Indices refer to the
    smoothed curve (evaluation k of the raw curve is the window ending at k + smooth - 1)."""
    smooth = check_int("smooth", smooth, min=1)
    e = np.convolve(np.asarray(test_error, dtype=float), np.ones(smooth) / smooth, mode="valid")
    best_before = np.minimum.accumulate(e)        # min over t1 <= t
    best_after = np.minimum.accumulate(e[::-1])[::-1]  # min over t3 >= t
    score = np.minimum(e - best_before, e - best_after)
    t2 = int(np.argmax(score))
    t1 = int(np.argmin(e[:t2 + 1]))
    t3 = t2 + int(np.argmin(e[t2:]))
    return {"rise": float(e[t2] - e[t1]), "fall": float(e[t2] - e[t3]), "t1": t1, "t2": t2, "t3": t3,
            "smoothed": e}
