"""Logistic regression on separable data: max-margin bias at small steps, the perceptron at large ones.

Notation follows Tyurin 2024: samples ``a_i`` with labels ``y_i in {-1, +1}``, the loss
``f(theta) = (1/n) sum_i log(1 + exp(-y_i a_i^T theta))`` and GD ``theta_{t+1} = theta_t - gamma grad f``.

- Soudry et al. 2018 (Thm. 3): with a small step, ``theta_t / ||theta_t||`` tends to the hard-margin
  SVM direction at rate ``O(1 / ln t)``, and the loss falls like ``O(1 / t)``.
- Tyurin 2024 (Thm. 3.2): as ``gamma -> inf``, ``theta_t / gamma`` tends to the Batch Perceptron iterate.
  Normalized LR+GD (Sec. 6) rescales the step by ``beta_t = 1 / mean_i sigmoid(-y_i a_i^T theta_t)``.

Everything runs in float64: at ``gamma = 1e6`` the margins are of order 1e6.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gdlab.implicit._threads import single_threaded
from gdlab.runtime import check_float, check_int, check_sequence, progress

__all__ = [
    "logistic_loss", "logistic_grad", "accuracy", "Trajectory", "logistic_gd",
    "batch_perceptron", "iterations_to_separate", "svm_direction", "SoudryAsymptotics",
    "fit_scale", "soudry_asymptotics", "normalized_margin", "direction_gap",
    "tyurin_theorem_41_data", "tyurin_theorem_51_data", "generic_separable_data",
    "soudry_figure1_data",
]


def _signed(a: torch.Tensor, y: torch.Tensor, *, batched: bool = False) -> torch.Tensor:
    """Rows ``y_i a_i`` in float64 (the only form the algorithms need); ``batched`` also allows (B, n, d)."""
    if not (a.ndim == 2 or (batched and a.ndim == 3)) or y.shape != a.shape[:-1]:
        expected = "(n, d) and (n,), or (B, n, d) and (B, n)" if batched else "(n, d) and (n,)"
        raise ValueError(f"parameters 'a', 'y': got shapes {tuple(a.shape)} and {tuple(y.shape)}; expected {expected}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("parameter 'y': labels must be -1 or +1")
    return y.double().unsqueeze(-1) * a.double()


def logistic_loss(a: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``f(theta) = (1/n) sum_i log(1 + exp(-y_i a_i^T theta))`` for theta (..., d), computed stably."""
    return torch.nn.functional.softplus(-(theta.double() @ _signed(a, y).T)).mean(-1)


def logistic_grad(a: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``grad f(theta) = -(1/n) sum_i sigmoid(-y_i a_i^T theta) y_i a_i`` for theta (..., d)."""
    Z = _signed(a, y)
    return -torch.sigmoid(-(theta.double() @ Z.T)) @ Z / Z.shape[0]


def accuracy(a: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Fraction of samples with ``y_i a_i^T theta > 0`` (a tie counts as an error)."""
    return (theta.double() @ _signed(a, y).T > 0).double().mean(-1)


@dataclass
class Trajectory:
    """Iterates ``theta`` (B, T, d) at the logged ``steps`` (T,), one row per step size ``gammas``."""

    gammas: list
    steps: torch.Tensor
    theta: torch.Tensor


def logistic_gd(a: torch.Tensor, y: torch.Tensor, gammas, steps: int, *, normalized: bool = False,
                log_steps=None) -> Trajectory:
    """LR+GD from ``theta_0 = 0`` for every step size in ``gammas`` at once (batched).

    ``a`` (n, d) with ``y`` (n,) is one dataset shared by all step sizes; ``a`` (B, n, d) with ``y`` (B, n)
    is one dataset per step size (B = len(gammas)), all run as one tensor computation.
    ``normalized=True`` is Normalized LR+GD (Tyurin 2024, Sec. 6):
    ``theta_{t+1} = theta_t - gamma beta_t grad f(theta_t)``, ``beta_t = (mean_i sigmoid(-y_i a_i^T theta_t))^-1``.
    ``log_steps`` (default: every step) lists the steps whose iterates are kept.
    """
    gammas = check_sequence("gammas", gammas, lambda n, v: check_float(n, v, min=0.0, open_min=True))
    steps = check_int("steps", steps, min=0)
    keep = set(range(steps + 1)) if log_steps is None else {int(s) for s in log_steps if 0 <= s <= steps}
    Z = _signed(a, y, batched=True)
    if Z.ndim == 3 and Z.shape[0] != len(gammas):
        raise ValueError(f"parameter 'gammas': got {len(gammas)} step sizes for {Z.shape[0]} datasets; expected one per dataset")
    Z = Z if Z.ndim == 3 else Z.unsqueeze(0)  # (B or 1, n, d)
    n = Z.shape[1]
    gamma = torch.tensor(gammas, dtype=torch.float64, device=Z.device).view(-1, 1, 1)
    theta = torch.zeros(len(gammas), 1, Z.shape[2], dtype=torch.float64, device=Z.device)
    ZT, step = -Z.transpose(1, 2), gamma / n
    logged, thetas = [], []
    with single_threaded(Z.device):
        for t in progress(range(steps + 1), desc="LR+GD"):
            if t in keep:
                logged.append(t)
                thetas.append(theta[:, 0])
            if t == steps:
                break
            # sigmoid(-y_i a_i^T theta), (B, 1, n); the clamp keeps it above 1e-304, out of the subnormal range
            # where CPU arithmetic slows down 100x (the change is below 1e-304 per sample)
            s = torch.sigmoid((theta @ ZT).clamp(min=-700.0))
            if normalized:
                theta = theta + (gamma / s.mean(2, keepdim=True)) * (s @ Z) / n
            else:
                theta = theta + step * (s @ Z)
    return Trajectory(gammas, torch.tensor(logged), torch.stack(thetas, 1))


def batch_perceptron(a: torch.Tensor, y: torch.Tensor, steps: int, *, normalized: bool = False) -> torch.Tensor:
    """Batch Perceptron iterates (T + 1, d) from ``theta_0 = 0`` (Tyurin 2024, Sec. 3).

    ``theta_1 = (1/2n) sum_i y_i a_i``; then ``theta_{t+1} = theta_t + (1/n) sum_{i in S_t} y_i a_i`` with
    ``S_t = {i : y_i a_i^T theta_t <= 0}``; ``normalized=True`` divides by ``|S_t|`` instead of n
    (Normalized Batch Perceptron, Thm. 5.3). Once ``S_t`` is empty the iterate stays put.
    """
    steps = check_int("steps", steps, min=0)
    Z = _signed(a, y)
    n = Z.shape[0]
    theta = torch.zeros(Z.shape[1], dtype=torch.float64, device=Z.device)
    out = [theta]
    with single_threaded(Z.device):
        for t in range(steps):
            if t == 0:
                theta = theta + Z.sum(0) / (2 * n)
            else:
                wrong = (Z @ theta <= 0).double()
                count = float(wrong.sum())
                if count > 0:
                    theta = theta + wrong @ Z / (count if normalized else n)
            out.append(theta)
    return torch.stack(out)


def iterations_to_separate(a: torch.Tensor, y: torch.Tensor, trajectory: torch.Tensor) -> list:
    """For iterates (..., T, d): the first index t with every ``y_i a_i^T theta_t > 0``, else None."""
    ok = (trajectory.double() @ _signed(a, y).T > 0).all(-1)
    flat = ok.reshape(-1, ok.shape[-1])
    out = [int(row.nonzero()[0]) if bool(row.any()) else None for row in flat]
    return out if ok.ndim > 1 else out[0]


def svm_direction(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The hard-margin SVM through the origin: ``argmin ||w||^2`` s.t. ``y_i a_i^T w >= 1``, by a QP (SLSQP).

    Its direction is the max-margin direction of Soudry et al. 2018 (Thm. 3); its norm is 1 / margin.
    """
    from scipy.optimize import minimize

    Z = _signed(a, y).cpu().numpy()
    w0 = np.linalg.lstsq(Z, np.ones(len(Z)), rcond=None)[0]
    w0 *= 1.0 / max(1e-12, (Z @ w0).min()) if (Z @ w0).min() > 0 else 1.0
    res = minimize(lambda w: w @ w, w0, jac=lambda w: 2 * w, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    if not res.success or (Z @ res.x).min() < 1 - 1e-6:
        raise RuntimeError(f"the SVM quadratic program failed (is the data separable?): {res.message}")
    return torch.as_tensor(res.x, dtype=torch.float64).to(a.device)


@dataclass
class SoudryAsymptotics:
    """The parameter-free large-t behaviour of LR+GD on separable data (Soudry et al. 2018, Thm. 3):
    ``w_t = w_hat ln t + w_tilde + o(1)``. ``w_hat`` is the hard-margin SVM, ``dual`` its support vectors'
    weights (``w_hat = sum_n dual_n y_n a_n``), ``support`` their indices, ``w_tilde`` the offset fixed by
    ``eta exp(-y_n a_n^T w_tilde) = dual_n`` on the support vectors (``eta = gamma / n``, the step on the
    summed loss), and ``loss_times_t`` the limit ``||w_hat||^2 / gamma`` of ``f(w_t) t`` for the mean loss."""

    w_hat: torch.Tensor
    w_tilde: torch.Tensor
    dual: torch.Tensor
    support: torch.Tensor
    loss_times_t: float

    def gap(self, t: torch.Tensor) -> torch.Tensor:
        """Predicted direction gap ``|| w/||w|| - w_hat/||w_hat|| ||`` of ``w = w_hat ln t + w_tilde`` at times t."""
        w = self.w_hat * torch.log(t.double()).unsqueeze(-1).to(self.w_hat) + self.w_tilde
        return direction_gap(w, self.w_hat)

    @property
    def perpendicular(self) -> float:
        """``||P_perp w_tilde|| / ||w_hat||``: the gap tends to this over ``ln t + ratio``, with
        ``ratio = w_hat . w_tilde / ||w_hat||^2``."""
        u = self.w_hat / self.w_hat.norm()
        return float((self.w_tilde - u * (u @ self.w_tilde)).norm() / self.w_hat.norm())


def fit_scale(values: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """The member ``c * shape`` of a one-parameter family closest to ``values`` in log scale
    (``log c = mean(log values - log shape)``): the best-fitting alternative curve, e.g. a gap decaying
    like ``t^-0.2`` or a constant."""
    c = torch.exp((torch.log(values) - torch.log(shape)).mean())
    return c * shape


def soudry_asymptotics(a: torch.Tensor, y: torch.Tensor, gamma: float, *, margin_tol: float = 1e-6) -> SoudryAsymptotics:
    """:class:`SoudryAsymptotics` for LR+GD with step ``gamma`` on the mean loss, from the SVM alone.

    Support vectors are the samples with margin ``y_n a_n^T w_hat <= 1 + margin_tol``; their dual weights solve
    ``sum_n dual_n y_n a_n = w_hat`` (least squares); ``w_tilde`` solves ``y_n a_n^T w_tilde = ln(eta / dual_n)``
    on them (least squares, minimum norm if the support vectors do not span the space). Since
    ``y_n a_n^T w_hat = 1`` on the support, ``sum_n dual_n = ||w_hat||^2`` and the summed loss times t tends to
    ``sum_n exp(-y_n a_n^T w_tilde) = ||w_hat||^2 / eta``, so the mean loss times t tends to ``||w_hat||^2 / gamma``."""
    gamma = check_float("gamma", gamma, min=0.0, open_min=True)
    Z = _signed(a, y)
    w = svm_direction(a, y).to(Z)
    support = torch.nonzero(Z @ w <= 1 + margin_tol).flatten()
    Zs = Z[support]
    dual = torch.linalg.lstsq(Zs.T.cpu(), w.cpu().unsqueeze(1)).solution.squeeze(1).to(Z)
    if bool((dual <= 0).any()):
        raise RuntimeError(f"soudry_asymptotics: non-positive dual weights {dual.tolist()} (degenerate support)")
    eta = gamma / Z.shape[0]
    w_tilde = torch.linalg.lstsq(Zs.cpu(), torch.log(eta / dual).cpu().unsqueeze(1)).solution.squeeze(1).to(Z)
    return SoudryAsymptotics(w, w_tilde, dual, support, float(w @ w) / gamma)


def normalized_margin(a: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``min_i y_i a_i^T theta / ||theta||`` for theta (..., d)."""
    theta = theta.double()
    return (theta @ _signed(a, y).T).min(-1).values / theta.norm(dim=-1)


def direction_gap(theta: torch.Tensor, w_svm: torch.Tensor) -> torch.Tensor:
    """``|| theta / ||theta|| - w / ||w|| ||`` for theta (..., d) (Soudry et al. 2018, Fig. 1)."""
    theta = theta.double()
    return (theta / theta.norm(dim=-1, keepdim=True) - w_svm / w_svm.norm()).norm(dim=-1)


def tyurin_theorem_41_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Tyurin 2024, Thm. 4.1: ``(1, -1)`` labelled +1 and ``(-1, -4)`` labelled -1."""
    return torch.tensor([[1.0, -1.0], [-1.0, -4.0]], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)


def tyurin_theorem_51_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tyurin 2024, Thm. 5.1 (worst case for Batch Perceptron): one sample ``(0.5, -1)`` labelled +1 and
    ``n - 1`` samples ``(-0.5, -1)`` labelled -1."""
    n = check_int("n", n, min=2)
    a = torch.tensor([[0.5, -1.0]] + [[-0.5, -1.0]] * (n - 1), dtype=torch.float64)
    y = torch.tensor([1.0] + [-1.0] * (n - 1), dtype=torch.float64)
    return a, y


def generic_separable_data(generator: torch.Generator, n_random: int = 6,
                           asymmetry: tuple[float, float] = (0.1, 0.2)) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable 2-d dataset in general position, with a known max-margin direction (Soudry et al. 2018, Thm. 3).

    A random unit direction ``u`` (the SVM direction, margin 1) and ``v`` orthogonal to it. Two support vectors
    ``u + (1 + e) v`` and ``u - (1 - e) v`` (in signed form ``y_i a_i``) with a random asymmetry ``|e|`` drawn
    from ``asymmetry``: their dual weights differ, so the bounded offset ``w_tilde`` of ``w_t = w_hat ln t + w_tilde
    + o(1)`` has a component orthogonal to ``w_hat`` and the direction gap is ``Theta(1 / ln t)``. Plus
    ``n_random`` points at margins ``u^T z`` in [2, 4] (their pull on ``w_t`` decays like ``t^-(margin-1)``) and
    offsets along ``v`` in [-3, 3]. Labels alternate +1, -1; ``a_i = y_i z_i``.
    """
    n_random = check_int("n_random", n_random, min=0)
    asymmetry = check_sequence("asymmetry", asymmetry, lambda n, v: check_float(n, v, min=0.0, max=0.5), min_len=2)
    if len(asymmetry) != 2 or asymmetry[0] > asymmetry[1]:
        raise ValueError(f"parameter 'asymmetry': got {asymmetry}; expected (low, high) with low <= high")

    dev = generator.device

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64, device=dev)

    angle = 2 * np.pi * uniform(1)
    u = torch.cat([angle.cos(), angle.sin()])
    v = torch.stack([-u[1], u[0]])
    sign = torch.where(uniform(1) < 0.5, 1.0, -1.0).double()
    e = (asymmetry[0] + (asymmetry[1] - asymmetry[0]) * uniform(1)) * sign
    along = torch.cat([torch.ones(2, dtype=torch.float64, device=dev), 2 + 2 * uniform(n_random)])
    across = torch.cat([1 + e, e - 1, 3 * (2 * uniform(n_random) - 1)])
    z = along[:, None] * u + across[:, None] * v
    y = torch.where(torch.arange(2 + n_random, device=dev) % 2 == 0, 1.0, -1.0).double()
    return y[:, None] * z, y


def soudry_figure1_data(generator: torch.Generator, n_random: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset of Soudry et al. 2018, Fig. 1: support vectors ``(0.5, 1.5)``, ``(1.5, 0.5)`` (label +1)
    and their negatives (label -1), so the max-margin direction is ``(1, 1)/sqrt(2)`` with margin
    ``sqrt(2)``; plus ``n_random`` random points (half per class) strictly off the margin."""
    n_random = check_int("n_random", n_random, min=0)
    dev = generator.device
    f64 = dict(dtype=torch.float64, device=dev)
    sv = torch.tensor([[0.5, 1.5], [1.5, 0.5]], **f64)
    u = torch.tensor([1.0, 1.0], **f64) / 2 ** 0.5
    v = torch.tensor([1.0, -1.0], **f64) / 2 ** 0.5
    along = 2 ** 0.5 + 0.5 + 2 * torch.rand(n_random, generator=generator, **f64)
    across = 3 * (2 * torch.rand(n_random, generator=generator, **f64) - 1)
    pts = along[:, None] * u + across[:, None] * v
    y_rand = torch.where(torch.arange(n_random, device=dev) % 2 == 0, 1.0, -1.0).double()
    a = torch.cat([sv, -sv, y_rand[:, None] * pts])
    y = torch.cat([torch.tensor([1.0, 1.0, -1.0, -1.0], **f64), y_rand])
    return a, y
