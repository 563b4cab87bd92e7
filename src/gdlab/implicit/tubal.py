"""Tubal tensors: the t-product, tubal rank, and GD on over-parameterized tubal factorizations.

A tensor ``A`` of shape (n1, n2, k) is a matrix of "tubes" (length-k vectors). The t-product
``A * B`` convolves tubes circularly; after an FFT along the third mode it is one matrix product per
frequency: ``fft(A * B)[:, :, j] = fft(A)[:, :, j] @ fft(B)[:, :, j]`` (Kilmer & Martin 2011).
The tubal rank is the largest rank of the Fourier slices. The transpose ``A^T`` transposes every
frontal slice and reverses slices 2..k, which is the conjugate transpose of each Fourier slice.

GD on ``U * U^T`` from a small random start recovers a low-tubal-rank tensor from Gaussian
measurements (Karnik, Veselovska, Iwen & Krahmer 2024, "Implicit regularization for tubal tensor
factorizations via gradient descent").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdlab.implicit._threads import single_threaded
from gdlab.runtime import check_float, check_int, check_sequence, progress

__all__ = [
    "t_product", "t_transpose", "fourier_singular_values", "tubal_rank", "TubalProblem",
    "tubal_problem", "TubalRun", "residual", "tubal_gd",
]


def t_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A * B`` for A (..., n1, n2, k) and B (..., n2, n3, k), by FFT along the last (third) mode."""
    if A.shape[-1] != B.shape[-1] or A.shape[-2] != B.shape[-3]:
        raise ValueError(f"parameters 'A', 'B': shapes {tuple(A.shape)} and {tuple(B.shape)} do not chain")
    Af, Bf = torch.fft.fft(A, dim=-1), torch.fft.fft(B, dim=-1)
    Cf = torch.einsum("...ijf,...jlf->...ilf", Af, Bf)
    return torch.fft.ifft(Cf, dim=-1).real


def t_transpose(A: torch.Tensor) -> torch.Tensor:
    """``A^T``: transpose each frontal slice, then reverse the order of slices 2..k."""
    At = A.transpose(-3, -2)
    return torch.cat([At[..., :1], At[..., 1:].flip(-1)], dim=-1)


def fourier_singular_values(X: torch.Tensor) -> torch.Tensor:
    """Singular values of each Fourier slice of X (..., n1, n2, k): shape (..., k, min(n1, n2)), descending."""
    Xf = torch.fft.fft(X, dim=-1).movedim(-1, -3)
    return torch.linalg.svdvals(Xf)


def tubal_rank(X: torch.Tensor, rtol: float = 1e-3, threshold: float | None = None) -> torch.Tensor:
    """Largest number of Fourier-slice singular values above ``threshold`` if given, else above ``rtol``
    times the largest one."""
    s = fourier_singular_values(X)
    cut = rtol * s.amax(dim=(-2, -1), keepdim=True) if threshold is None else check_float(
        "threshold", threshold, min=0.0, open_min=True)
    return (s > cut).sum(-1).amax(-1)


@dataclass
class TubalProblem:
    """Gaussian measurement tensors ``A`` (m, n, n, k), target ``X_star`` (n, n, k), ``y`` (m,)."""

    A: torch.Tensor
    X_star: torch.Tensor
    y: torch.Tensor

    @property
    def m(self) -> int:
        return self.A.shape[-4]


def tubal_problem(n: int, k: int, rank: int, m: int, generator: torch.Generator, *, trials: int = 1,
                  dtype=torch.float64, device=None) -> TubalProblem:
    """``trials`` independent problems (leading dimension): ``X* = W * W^T`` with W (n, rank, k) Gaussian,
    scaled so the largest Fourier-slice eigenvalue is 1, and ``m`` measurement tensors with i.i.d. N(0, 1)
    entries, ``y_i = <A_i, X*>``."""
    n, k, m = check_int("n", n, min=1), check_int("k", k, min=1), check_int("m", m, min=1)
    rank, trials = check_int("rank", rank, min=1, max=n), check_int("trials", trials, min=1)
    W = torch.randn(trials, n, rank, k, generator=generator, dtype=dtype, device=generator.device).to(device)
    X = t_product(W, t_transpose(W))
    X = X / fourier_singular_values(X).amax(dim=(-2, -1)).view(-1, 1, 1, 1)
    A = torch.randn(trials, m, n, n, k, generator=generator, dtype=dtype, device=generator.device).to(device)
    return TubalProblem(A=A, X_star=X, y=torch.einsum("tmijf,tijf->tm", A, X))


@dataclass
class TubalRun:
    """Final factors ``U`` (trials, B, n, R, k), final ``X`` = U * U^T, and ``test_error``
    ``||X - X*||_F / ||X*||_F`` logged at ``steps``: (trials, B, T)."""

    alphas: list
    steps: torch.Tensor
    test_error: torch.Tensor
    U: torch.Tensor
    X: torch.Tensor


def residual(problem: TubalProblem, X: torch.Tensor) -> torch.Tensor:
    """Relative measurement residual ``||<A_i, X> - y|| / ||y||`` for X (trials, ..., n, n, k): (trials, ...)."""
    extra = X.dim() - 4
    Xf = X.flatten(-3).flatten(1, extra) if extra > 0 else X.flatten(-3).unsqueeze(1)
    r = torch.einsum("tmp,tbp->tbm", problem.A.flatten(-3), Xf) - problem.y.unsqueeze(1)
    out = r.norm(dim=-1) / problem.y.norm(dim=-1, keepdim=True)
    return out.view(X.shape[:-3])

def _parseval_weights(k: int, dtype, device) -> torch.Tensor:
    """Weights w_f with ``<a, b> = (1/k) sum_f w_f Re(rfft(a)_f conj(rfft(b)_f))`` for real tubes of length k."""
    w = torch.full((k // 2 + 1,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if k % 2 == 0:
        w[-1] = 1.0
    return w / k


def tubal_gd(problem: TubalProblem, alphas, R: int, eta: float, steps: int, generator: torch.Generator, *,
             log_every: int = 50) -> TubalRun:
    """GD on ``f(U) = (1/4m) sum_i (<A_i, U * U^T> - y_i)^2`` with U (n, R, k) from
    ``U_0 = alpha N(0, 1/R)``, for every trial and alpha at once. The gradient is
    ``(1/2m) (S + S^T) * U`` with ``S = sum_i r_i A_i`` (Karnik et al. 2024, Sec. 2).
    Every alpha of a trial starts from the same draw, scaled.

    The iteration runs in the Fourier domain (real FFT along the third mode), where every t-product is
    one matrix product per frequency and ``<A_i, X>`` follows from Parseval's identity; it is the same
    GD step, without an FFT per step.
    """
    alphas = check_sequence("alphas", alphas, lambda nm, v: check_float(nm, v, min=0.0, open_min=True))
    R, steps, log_every = check_int("R", R, min=1), check_int("steps", steps, min=1), check_int("log_every", log_every, min=1)
    eta = check_float("eta", eta, min=0.0, open_min=True)
    T, m, n, _, k = problem.A.shape
    dtype, device = problem.A.dtype, problem.A.device
    Z = torch.randn(T, 1, n, R, k, generator=generator, dtype=dtype, device=generator.device).to(device) / math.sqrt(R)
    U0 = torch.tensor(alphas, dtype=dtype, device=device).view(1, -1, 1, 1, 1) * Z
    w = _parseval_weights(k, dtype, device)  # (kf,)
    four = lambda X: torch.fft.rfft(X, dim=-1).movedim(-1, -3)  # noqa: E731  (..., kf, rows, cols)
    Af = four(problem.A)  # (T, m, kf, n, n)
    A_meas = torch.cat([Af.real * w.view(-1, 1, 1), Af.imag * w.view(-1, 1, 1)], -1).flatten(2)  # (T, m, 2 kf n n)
    Uf, Xf_star = four(U0), four(problem.X_star).unsqueeze(1)
    norm = problem.X_star.flatten(1).norm(dim=1).view(-1, 1)
    logged, errors = [], []
    with single_threaded(device):
        for t in progress(range(steps + 1), desc="tubal GD"):
            Xf = Uf @ Uf.mH  # (T, B, kf, n, n)
            if t % log_every == 0 or t == steps:
                logged.append(t)
                diff = (Xf - Xf_star).abs().pow(2).sum((-2, -1))
                errors.append((diff * w).sum(-1).sqrt() / norm)
            if t == steps:
                break
            r = torch.einsum("tmp,tbp->tbm", A_meas, torch.cat([Xf.real, Xf.imag], -1).flatten(2)) - problem.y.unsqueeze(1)
            Sf = torch.complex(*torch.einsum("tbm,tmp->tbp", r, A_meas).view(T, -1, len(w), n, 2 * n).split(n, -1))
            Sf = Sf / w.view(-1, 1, 1) / m
            Uf = Uf - eta * ((Sf + Sf.mH) / 2) @ Uf
        U = torch.fft.irfft(Uf.movedim(-3, -1), n=k, dim=-1)
    return TubalRun(alphas, torch.tensor(logged), torch.stack(errors, -1), U, t_product(U, t_transpose(U)))
