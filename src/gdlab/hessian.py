"""Hessian of a training loss through Hessian-vector products (HVPs).

Works on any ``nn.Module`` + ``loss_fn(outputs, targets)`` (a *mean* over the batch) + data,
on CPU or GPU, in float32 or float64. ``data`` is one batch ``(inputs, targets)`` or a
re-iterable collection of such batches (a list, a ``DataLoader``); over several batches the
loss is the sample-weighted mean, so a ragged last batch gives the full-batch answer.

Vectors are flat tensors over the model's trainable parameters in ``model.parameters()``
order, on the model's device and dtype. The model is used as it is: call ``model.eval()``
first if it has dropout or batch norm.

Pieces:

- :func:`hvp` is double backward: ``H v = d/dθ <∇L(θ), v>`` (Pearlmutter 1994). With one
  batch the gradient graph is built once and reused by every product of a Lanczos run.
- :func:`top_eigenpairs` is Lanczos with full reorthogonalization on the device
  (``method="lanczos"``) or scipy's ARPACK ``eigsh`` on a ``LinearOperator``
  (``method="arpack"``). The default is our Lanczos, chosen by measurement: on fc-tanh
  [40, 200, 200, 10] with 1000 MNIST-1D examples it needed 25 HVPs for the top eigenvalue
  (ARPACK: 31) and 50 for the top 10 (ARPACK: 54) at tol 1e-6, and it stays on the device,
  while ARPACK copies every vector to the host (``benchmarks/bench_hessian.py`` times both).
- :func:`hutchinson_trace`: ``Tr H = E[v^T H v]`` for Rademacher ``v`` (Hutchinson 1989).
- :func:`spectral_density`: stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al.
  2019, Sec. 3; Papyan 2018).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["trainable_parameters", "num_params", "flat_grad", "hvp", "lanczos", "top_eigenpairs",
           "hutchinson_trace", "lanczos_quadrature", "spectral_density"]


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- plumbing
def trainable_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters the flat vectors run over, in ``model.parameters()`` order."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"parameter 'model': got {type(model).__name__}; expected a torch.nn.Module")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("parameter 'model': it has no trainable parameters")
    return params


def num_params(model: torch.nn.Module) -> int:
    """Number of trainable scalars (the length of every flat vector)."""
    return sum(p.numel() for p in trainable_parameters(model))


def _batches(data) -> list | Iterable:
    """``(inputs, targets)`` -> [that batch]; a re-iterable of batches is returned as is."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [tuple(data)]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"parameter 'data': got {type(data).__name__}; expected (inputs, targets) or an iterable "
                        "of (inputs, targets) batches")
    if iter(data) is data:
        raise TypeError("parameter 'data': got a one-shot iterator; pass a re-iterable (a list or a DataLoader), "
                        "because the Hessian tools pass over the data many times")
    return data


def _to_model(batch, device):
    x, y = batch
    return x.to(device), y.to(device)


class _Hessian:
    """``v -> H v`` for a fixed model, loss and data (the operator Lanczos works with)."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, data):
        self.model, self.loss_fn = model, loss_fn
        self.params = trainable_parameters(model)
        self.batches = _batches(data)
        self.single = isinstance(self.batches, list) and len(self.batches) == 1
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.size = sum(p.numel() for p in self.params)
        self._cached_grad = None  # (grads with graph, weight) for a single batch

    def _grad_graph(self, batch):
        x, y = _to_model(batch, self.device)
        loss = self.loss_fn(self.model(x), y)
        if loss.dim() != 0:
            raise ValueError(f"parameter 'loss_fn': returned shape {tuple(loss.shape)}; expected a scalar mean loss")
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return grads, x.shape[0]

    def _graphs(self):
        if self.single:
            if self._cached_grad is None:
                self._cached_grad = self._grad_graph(self.batches[0])
            yield self._cached_grad
        else:
            for batch in self.batches:
                yield self._grad_graph(batch)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.device, self.dtype)
        pieces = _unflatten(v, self.params)
        total, count = torch.zeros_like(v), 0
        for grads, n in self._graphs():
            hv = torch.autograd.grad(grads, self.params, grad_outputs=pieces, retain_graph=self.single,
                                     allow_unused=True)
            total += n * _flatten(hv, self.params)
            count += n
        if count == 0:
            raise ValueError("parameter 'data': it holds no batches")
        return total / count


def _flatten(tensors, params) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def _unflatten(v: torch.Tensor, params) -> list[torch.Tensor]:
    out, i = [], 0
    for p in params:
        out.append(v[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


def _check_vector(v, size):
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() != size:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"parameter 'v': got {shape}; expected a flat tensor of length {size} (num_params(model))")


def _random_vector(size, generator, device, dtype, rademacher=False):
    gdev = generator.device if generator is not None else torch.device("cpu")
    if rademacher:
        v = torch.randint(0, 2, (size,), generator=generator, device=gdev).to(dtype) * 2 - 1
    else:
        v = torch.randn(size, generator=generator, device=gdev, dtype=dtype)
    return v.to(device, dtype)


def _default_generator(generator):
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"parameter 'generator': got {type(generator).__name__}; expected a torch.Generator")
    return generator


# ---------------------------------------------------------------- public API
def flat_grad(model: torch.nn.Module, loss_fn: LossFn, data) -> torch.Tensor:
    """Gradient of the (sample-weighted mean) loss as one flat vector."""
    params = trainable_parameters(model)
    device = params[0].device
    total, count = None, 0
    for batch in _batches(data):
        x, y = _to_model(batch, device)
        g = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
        g = _flatten(g, params) * x.shape[0]
        total = g if total is None else total + g
        count += x.shape[0]
    if count == 0:
        raise ValueError("parameter 'data': it holds no batches")
    return total / count


def hvp(model: torch.nn.Module, loss_fn: LossFn, data, v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``H v`` of the mean training loss (Pearlmutter 1994)."""
    op = _Hessian(model, loss_fn, data)
    _check_vector(v, op.size)
    return op(v).detach()


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, n_steps: int, *,
            stop: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool] | None = None):
    """Lanczos with full reorthogonalization for a symmetric operator.

    Returns ``(alpha, beta, Q)``: the tridiagonal matrix's diagonal (m,) and off-diagonal
    (m,) (``beta[-1]`` is the residual norm of the last step) and the orthonormal basis
    ``Q`` (m, P). ``stop(alpha, beta, Q)`` is asked every few steps whether to end early.
    Stops at an invariant subspace (``beta`` ~ 0). Golub & Van Loan, Alg. 10.1.1 + reorth.
    """
    q = v0 / v0.norm()
    Q = torch.empty(n_steps, q.numel(), device=q.device, dtype=q.dtype)
    alphas, betas = [], []
    for j in range(n_steps):
        Q[j] = q
        w = matvec(q)
        a = torch.dot(w, q)
        # full reorthogonalization, done twice ("twice is enough", Parlett)
        for _ in range(2):
            w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
        b = w.norm()
        alphas.append(a)
        betas.append(b)
        m = j + 1
        scale = max(float(torch.stack(alphas).abs().max()), 1e-30)
        if float(b) <= 1e-10 * scale or m == n_steps:
            break
        if stop is not None and (m % 5 == 0) and stop(torch.stack(alphas), torch.stack(betas), Q[:m]):
            break
        q = w / b
    m = len(alphas)
    return torch.stack(alphas), torch.stack(betas), Q[:m]


def _tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    T = torch.diag(alpha)
    if alpha.numel() > 1:
        off = beta[:-1]
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return T


def top_eigenpairs(model: torch.nn.Module, loss_fn: LossFn, data, k: int = 1, *, tol: float = 1e-6,
                   max_iter: int | None = None, generator: torch.Generator | None = None,
                   method: str = "lanczos") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` algebraically largest Hessian eigenvalues (descending) and eigenvectors (k, P).

    ``tol`` is the relative residual ``||H u - theta u|| <= tol * |theta|`` every returned
    pair must meet (checked from the Lanczos recurrence). ``max_iter`` caps the Krylov
    dimension (default ``max(20 k + 40, 100)``, at most P). Lanczos: Golub & Van Loan 10.1.
    """
    op = _Hessian(model, loss_fn, data)
    k = check_int("k", k, min=1, max=op.size)
    tol = check_float("tol", tol, min=0.0, open_min=True)
    check_choice("method", method, ("lanczos", "arpack"))
    max_iter = min(op.size, max(20 * k + 40, 100) if max_iter is None else check_int("max_iter", max_iter, min=k))
    generator = _default_generator(generator)
    v0 = _random_vector(op.size, generator, op.device, op.dtype)
    if method == "arpack":
        return _arpack_top(op, v0, k, tol, max_iter)
    return _lanczos_top(op, v0, k, tol, max_iter)


def _ritz(alpha, beta, k):
    """Top-k Ritz values, their vectors in the Krylov basis, and residual norms."""
    T = _tridiagonal(alpha, beta).double()
    theta, S = torch.linalg.eigh(T)
    idx = torch.argsort(theta, descending=True)[:k]
    theta, S = theta[idx], S[:, idx]
    resid = (beta[-1].double() * S[-1, :]).abs()
    return theta, S, resid


def _lanczos_top(op, v0, k, tol, max_iter):
    def converged(alpha, beta, Q):
        if alpha.numel() < k + 1:
            return False
        theta, _, resid = _ritz(alpha, beta, k)
        return bool((resid <= tol * theta.abs().clamp_min(1e-30)).all())

    alpha, beta, Q = lanczos(lambda v: op(v).detach(), v0, max_iter, stop=converged)
    theta, S, _ = _ritz(alpha, beta, min(k, alpha.numel()))
    vecs = (S.T.to(Q.dtype) @ Q)
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    return theta.to(op.dtype), vecs


def _arpack_top(op, v0, k, tol, max_iter):
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(x):
        v = torch.as_tensor(np.asarray(x).reshape(-1), device=op.device, dtype=op.dtype)
        return op(v).detach().cpu().double().numpy()

    A = LinearOperator((op.size, op.size), matvec=mv, dtype=np.float64)
    ncv = min(op.size, max(2 * k + 1, 20))
    vals, vecs = eigsh(A, k=k, which="LA", tol=tol, maxiter=max_iter, ncv=ncv, v0=v0.cpu().double().numpy())
    order = np.argsort(-vals)
    vals = torch.as_tensor(vals[order].copy(), device=op.device, dtype=op.dtype)
    vecs = torch.as_tensor(vecs[:, order].T.copy(), device=op.device, dtype=op.dtype)
    return vals, vecs


def hutchinson_trace(model: torch.nn.Module, loss_fn: LossFn, data, *, n_samples: int = 100,
                     generator: torch.Generator | None = None) -> float:
    """Hutchinson's estimate of ``Tr H`` from ``n_samples`` Rademacher probes (Hutchinson 1989)."""
    op = _Hessian(model, loss_fn, data)
    n_samples = check_int("n_samples", n_samples, min=1)
    generator = _default_generator(generator)
    total = 0.0
    for _ in range(n_samples):
        v = _random_vector(op.size, generator, op.device, op.dtype, rademacher=True)
        total += float(torch.dot(v, op(v).detach()))
    return total / n_samples


def lanczos_quadrature(model: torch.nn.Module, loss_fn: LossFn, data, *, n_vectors: int = 5, n_steps: int = 80,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of stochastic Lanczos quadrature, shape (n_vectors, m) each.

    For a unit probe ``v``, ``v^T f(H) v ~ sum_j w_j f(theta_j)`` with Ritz values
    ``theta_j`` and weights ``w_j = (e_1^T s_j)^2`` (Golub & Meurant 1997; Ghorbani et al.
    2019, Sec. 3). Each row of weights sums to 1. ``m = min(n_steps, P)``.
    """
    op = _Hessian(model, loss_fn, data)
    n_vectors = check_int("n_vectors", n_vectors, min=1)
    n_steps = min(check_int("n_steps", n_steps, min=1), op.size)
    generator = _default_generator(generator)
    nodes = torch.zeros(n_vectors, n_steps, dtype=torch.float64)
    weights = torch.zeros(n_vectors, n_steps, dtype=torch.float64)
    for i in range(n_vectors):
        v0 = _random_vector(op.size, generator, op.device, op.dtype, rademacher=True)
        alpha, beta, _ = lanczos(lambda v: op(v).detach(), v0, n_steps)
        theta, S = torch.linalg.eigh(_tridiagonal(alpha, beta).double().cpu())
        m = theta.numel()  # may stop early at an invariant subspace: pad with zero weight
        nodes[i, :m], weights[i, :m] = theta, S[0, :] ** 2
        nodes[i, m:] = theta[-1]
    return nodes, weights


def spectral_density(model: torch.nn.Module, loss_fn: LossFn, data, *, n_vectors: int = 5, n_steps: int = 80,
                     generator: torch.Generator | None = None, grid: torch.Tensor | None = None,
                     sigma: float | None = None, grid_size: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Hessian eigenvalue density by SLQ, smoothed with a Gaussian of width ``sigma``.

    Returns ``(grid, density)`` (CPU float64); the density is normalized so that its
    trapezoidal integral over the grid is 1. Default ``grid``: ``grid_size`` points over
    the Ritz-value range padded by 5 sigma; default ``sigma``: 1% of that range.
    Ghorbani et al. 2019, Sec. 3, Eq. (6).
    """
    nodes, weights = lanczos_quadrature(model, loss_fn, data, n_vectors=n_vectors, n_steps=n_steps,
                                        generator=generator)
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sigma = 0.01 * width if sigma is None else check_float("sigma", sigma, min=0.0, open_min=True)
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, check_int("grid_size", grid_size, min=10),
                              dtype=torch.float64)
    else:
        grid = torch.as_tensor(grid, dtype=torch.float64).cpu().reshape(-1)
        if grid.numel() < 2:
            raise ValueError(f"parameter 'grid': got {grid.numel()} points; expected at least 2")
    kernel = torch.exp(-0.5 * ((grid[None, None, :] - nodes[:, :, None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = (weights[:, :, None] * kernel).sum(dim=1).mean(dim=0)
    mass = torch.trapezoid(density, grid)
    if mass <= 0:
        raise ValueError("parameter 'grid': it holds none of the spectrum's mass; widen it")
    return grid, density / mass
