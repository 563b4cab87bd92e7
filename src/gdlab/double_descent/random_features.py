"""Random-features regression across the interpolation threshold N = n: feature maps, the
test and train error of any spectral filter (min-norm, validation-tuned ridge, budgeted GD), the
ridgeless closed forms of Hastie et al. and the peak statistics the chapter's claims use.

Belkin, Hsu, Ma & Mandal 2019 fit random-feature models with the minimum-norm solution
and see the test error peak at N = n; Hastie, Montanari, Rosset & Tibshirani 2019
give the risk in closed form for isotropic features; Nakkiran, Venkat, Kakade & Ma 2020 show
that optimally tuned ridge removes the peak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from gdlab.double_descent.spectral import rank_cutoff
from gdlab.runtime import check_choice, check_float, check_int, check_sequence

__all__ = ["FEATURE_KINDS", "RandomFeatures", "random_feature_map", "standardize", "FeatureCurves",
           "feature_curves", "min_norm_filter", "ridgeless_risk", "optimal_ridge_lambda",
           "isotropic_risk", "peak_prominence", "max_relative_rise"]

FEATURE_KINDS = ("relu", "fourier")


# ---------------------------------------------------------------- feature maps
@dataclass(frozen=True)
class RandomFeatures:
    """A random-feature map x -> phi(x W + b) with fixed W (d, N) ~ N(0, 1/d) (Rahimi & Recht
    2007; Belkin et al. 2019). ``relu``: max(0, x W + b) with b ~ N(0, bias_scale^2)
    (no bias by default); ``fourier``: sqrt(2) cos(x W + b) with phases b ~ U(0, 2 pi)."""

    weights: torch.Tensor
    bias: torch.Tensor
    kind: str = "relu"

    def __call__(self, x: torch.Tensor, num_features: int | None = None) -> torch.Tensor:
        """Features of x (n, d); ``num_features`` uses only the first N features (nested maps)."""
        w, b = self.weights, self.bias
        if num_features is not None:
            w, b = w[:, :num_features], b[:num_features]
        z = x @ w + b
        return torch.relu(z) if self.kind == "relu" else math.sqrt(2.0) * torch.cos(z)


def random_feature_map(d: int, N: int, generator: torch.Generator, kind: str = "relu", scale: float = 1.0,
                    bias_scale: float = 0.0, dtype: torch.dtype = torch.float64) -> RandomFeatures:
    """Draw a random-feature map with ``N`` features of ``d``-dimensional inputs, on the
    generator's device: W ~ N(0, scale^2 / d). ``bias_scale`` sets the spread of the ReLU biases
    (ignored for Fourier, whose phases are uniform)."""
    d, N = check_int("d", d, min=1), check_int("N", N, min=1)
    check_choice("kind", kind, FEATURE_KINDS)
    scale = check_float("scale", scale, min=0.0, open_min=True)
    bias_scale = check_float("bias_scale", bias_scale, min=0.0)
    opts = dict(generator=generator, dtype=dtype, device=generator.device)
    w = scale * torch.randn(d, N, **opts) / math.sqrt(d)
    if kind == "fourier":
        b = torch.rand(N, **opts) * 2 * math.pi
    else:
        b = bias_scale * torch.randn(N, **opts)
    return RandomFeatures(w, b, kind)


def standardize(F: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Center and scale every feature (column) by its training mean and standard deviation, and
    apply the same map to ``others`` (validation and test features): feature normalization,
    one of the factors of Liu & Flanigan 2023 that acts on the condition number of F."""
    mu, sd = F.mean(0), F.std(0).clamp_min(torch.finfo(F.dtype).tiny ** 0.5)
    return tuple((G - mu) / sd for G in (F, *others))


# ---------------------------------------------------------------- curves of spectral filters
Filter = Callable[[torch.Tensor, int], torch.Tensor]  # (singular values s, n) -> f(s)


@dataclass
class FeatureCurves:
    """Test and train MSE of spectral-filter solutions over the number of features N, one row
    per trial. ``test`` is the excess risk, measured against the noiseless target."""

    n: int
    num_features: np.ndarray                         # N grid
    test: dict[str, np.ndarray] = field(default_factory=dict)    # name -> (trials, len(N))
    train: dict[str, np.ndarray] = field(default_factory=dict)
    condition: np.ndarray | None = None               # cond(F) (trials, len(N))
    ridge_lambda: np.ndarray | None = None            # validation-chosen lambda (trials, len(N))

    @property
    def ratio(self) -> np.ndarray:
        return self.num_features / self.n

    def index(self, ratio: float) -> int:
        """Grid index whose N/n is closest to ``ratio`` (in log scale)."""
        return int(np.argmin(np.abs(np.log(self.ratio / ratio))))

    def mean(self, name: str, which: str = "test") -> np.ndarray:
        return getattr(self, which)[name].mean(0)


def feature_curves(n: int, d: int, ratios: Sequence[float], sigma: float, generator: torch.Generator,
                   filters: Mapping[str, Filter] | None = None, trials: int = 5, kind: str = "relu",
                   scale: float = 1.0, bias_scale: float = 0.0, normalize: bool = False, n_test: int = 1000,
                   ridge_lambdas: Sequence[float] | None = None, n_val: int | None = None,
                   dtype: torch.dtype = torch.float64) -> FeatureCurves:
    """Random-feature regression of a linear teacher y = x.beta + N(0, sigma^2), x ~ N(0, I_d),
    ||beta|| = 1, with N = ratio * n nested features (Belkin et al. 2019).

    ``filters``: name -> f(s, n), each giving beta = V diag(f(s)) U^T y; their test and train MSE
    are recorded. ``ridge_lambdas``: also fit ridge (1/n)||y - F beta||^2 + lambda ||beta||^2
    with lambda chosen per N and trial on a *validation* set of ``n_val`` fresh samples (never
    the test set), recorded as "ridge" (Nakkiran, Venkat, Kakade & Ma 2020). ``scale``, ``bias_scale``: the
    initialization of the random weights (:func:`random_feature_map`). ``normalize``:
    standardize the features with training statistics (:func:`standardize`). Draws on the
    generator's device."""
    n, d = check_int("n", n, min=2), check_int("d", d, min=1)
    ratios = check_sequence("ratios", ratios, lambda k, v: check_float(k, v, min=0.0, open_min=True))
    sigma = check_float("sigma", sigma, min=0.0)
    trials, n_test = check_int("trials", trials, min=1), check_int("n_test", n_test, min=1)
    filters = dict(filters or {})
    if ridge_lambdas is not None:
        ridge_lambdas = check_sequence("ridge_lambdas", ridge_lambdas,
                                       lambda k, v: check_float(k, v, min=0.0, open_min=True))
        n_val = check_int("n_val", n if n_val is None else n_val, min=1)
    Ns = np.array(sorted({max(1, round(r * n)) for r in ratios}))
    shape = (trials, len(Ns))
    test = {k: np.zeros(shape) for k in filters}
    train = {k: np.zeros(shape) for k in filters}
    if ridge_lambdas is not None:
        test["ridge"], train["ridge"], lam_chosen = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    cond = np.zeros(shape)
    opts = dict(generator=generator, dtype=dtype, device=generator.device)
    for trial in range(trials):
        beta = torch.randn(d, **opts)
        beta = beta / beta.norm()
        x, x_te = torch.randn(n, d, **opts), torch.randn(n_test, d, **opts)
        y = x @ beta + sigma * torch.randn(n, **opts)
        f_te = x_te @ beta
        if ridge_lambdas is not None:
            x_val = torch.randn(n_val, d, **opts)
            y_val = x_val @ beta + sigma * torch.randn(n_val, **opts)
        phi = random_feature_map(d, int(Ns[-1]), generator, kind, scale, bias_scale, dtype)
        for j, N in enumerate(Ns):
            F, F_te = phi(x, int(N)), phi(x_te, int(N))
            F_val = phi(x_val, int(N)) if ridge_lambdas is not None else F_te[:0]
            if normalize:
                F, F_te, F_val = standardize(F, F_te, F_val)
            U, s, Vh = torch.linalg.svd(F, full_matrices=False)
            keep = rank_cutoff(s)
            U, s, Vh = U[:, keep], s[keep], Vh[keep]
            uy = U.mT @ y
            A = F_te @ Vh.mT  # test features in the right-singular basis

            def mse(filt):  # test (excess) and train MSE of beta = V diag(filt) U^T y
                c = filt * uy
                return float(((A @ c - f_te) ** 2).mean()), float(((U @ (s * c) - y) ** 2).mean())

            for name, f in filters.items():
                test[name][trial, j], train[name][trial, j] = mse(f(s, n))
            cond[trial, j] = float(s[0] / s[-1])
            if ridge_lambdas is not None:
                B = F_val @ Vh.mT
                val = [float(((B @ (s / (s**2 + n * lam) * uy) - y_val) ** 2).mean()) for lam in ridge_lambdas]
                lam = ridge_lambdas[int(np.argmin(val))]
                lam_chosen[trial, j] = lam
                test["ridge"][trial, j], train["ridge"][trial, j] = mse(s / (s**2 + n * lam))
    out = FeatureCurves(n, Ns, test, train, cond)
    if ridge_lambdas is not None:
        out.ridge_lambda = lam_chosen
    return out


def min_norm_filter(s: torch.Tensor, n: int) -> torch.Tensor:
    """f(s) = 1/s: the minimum-norm least-squares solution (on the numerical rank)."""
    return 1 / s


# ---------------------------------------------------------------- closed forms (isotropic features)
def ridgeless_risk(gamma, r2: float = 1.0, sigma2: float = 1.0):
    """Asymptotic excess test risk of min-norm least squares with isotropic features,
    gamma = p/n (Hastie, Montanari, Rosset & Tibshirani 2019, isotropic features):
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
    """lambda* = sigma^2 gamma / r^2, the risk-minimizing ridge penalty of
    (1/n)||y - X beta||^2 + lambda ||beta||^2 for isotropic features (Dobriban & Wager 2018;
    Hastie et al. 2019): a value from theory, tuned on no data."""
    gamma = check_float("gamma", gamma, min=0.0, open_min=True)
    r2 = check_float("r2", r2, min=0.0, open_min=True)
    return check_float("sigma2", sigma2, min=0.0) * gamma / r2


def isotropic_risk(n: int, gammas: Sequence[float], sigma: float, generator: torch.Generator,
                   trials: int = 20, r: float = 1.0, lams: Sequence[float | str] = (0.0,)) -> np.ndarray:
    """Excess risk E_eps ||beta_hat - beta||^2 of least squares with isotropic Gaussian features
    x ~ N(0, I_p), p = gamma n, ||beta|| = r, for each penalty in ``lams``: an array
    (len(lams), trials, len(gammas)). The label noise is averaged exactly: with
    X = U diag(s) V^T and shrinkage h = s^2 / (s^2 + n lambda), the bias is
    ||beta - V diag(h) V^T beta||^2 and the variance sigma^2 sum h^2 / s^2. A penalty 0 is
    min-norm (the finite-n counterpart of :func:`ridgeless_risk`); "optimal" uses
    :func:`optimal_ridge_lambda` at each gamma. All penalties share each draw of (X, beta).
    Draws on the generator's device."""
    n = check_int("n", n, min=2)
    gammas = check_sequence("gammas", gammas, lambda k, v: check_float(k, v, min=0.0, open_min=True))
    sigma, r = check_float("sigma", sigma, min=0.0), check_float("r", r, min=0.0)
    trials = check_int("trials", trials, min=1)
    lams = [lam if lam == "optimal" else check_float(f"lams[{i}]", lam, min=0.0) for i, lam in enumerate(lams)]
    opts = dict(generator=generator, dtype=torch.float64, device=generator.device)
    risks = np.zeros((len(lams), trials, len(gammas)))
    for trial in range(trials):
        for j, g in enumerate(gammas):
            p = max(1, round(g * n))
            beta = torch.randn(p, **opts)
            beta = r * beta / beta.norm()
            X = torch.randn(n, p, **opts)
            _, s, Vh = torch.linalg.svd(X, full_matrices=False)
            keep = rank_cutoff(s)
            s, Vh = s[keep], Vh[keep]
            vb = Vh @ beta
            for i, lam in enumerate(lams):
                penalty = optimal_ridge_lambda(p / n, r**2, sigma**2) if lam == "optimal" else lam
                h = s**2 / (s**2 + n * penalty)
                bias = float((beta - Vh.mT @ (h * vb)).pow(2).sum())
                risks[i, trial, j] = bias + sigma**2 * float((h**2 / s**2).sum())
    return risks


# ---------------------------------------------------------------- peak statistics
def peak_prominence(ratio: Sequence[float], curve: Sequence[float], at: float = 1.0) -> float:
    """curve(N = at * n) over the larger of the best value on each side of it:
    ``curve[k] / max(min(curve[:k]), min(curve[k+1:]))``. Above 1 only for a peak (a value
    above the best of both sides); a monotone curve gives at most 1 (below 1 when strictly
    monotone), so a bound above 1 cannot pass without a peak."""
    ratio, curve = np.asarray(ratio, dtype=float), np.asarray(curve, dtype=float)
    k = int(np.argmin(np.abs(np.log(ratio / at))))
    if k == 0 or k == len(curve) - 1:
        raise ValueError(f"parameter 'at': got {at!r}; it must have grid points on both sides")
    return float(curve[k] / max(curve[:k].min(), curve[k + 1:].min()))


def max_relative_rise(curve: Sequence[float]) -> float:
    """Largest rise of a curve over its best earlier value, max_j curve[j] / min(curve[:j]) - 1
    (0 for a non-increasing curve): how far a curve is from monotone descent."""
    c = np.asarray(curve, dtype=float)
    best = np.minimum.accumulate(c)
    return float(max(0.0, (c[1:] / best[:-1] - 1).max())) if len(c) > 1 else 0.0
