"""In-context linear-regression tasks: a context of (x_i, y_i) pairs and a query x_q.

Every task draws its own weight vector w ~ N(0, tau^2 I) and labels y = w.x + sigma*eps.
Three input distributions cover the chapter's papers:

* ``"uniform"``: x ~ U(-0.5, 0.5)^d, the distribution of von Oswald et al.'s reference
  code (the paper's text says U(-1, 1), but its GD loss of ~0.2 only holds for this one);
* ``"gaussian"``: x ~ N(0, I_d) (Garg et al. 2022; Mahankali et al. 2023; Akyürek et al. 2022);
* ``"gaussian"`` with ``covariance=Sigma``: x ~ N(0, Sigma) (Mahankali et al. 2023; Ahn et al. 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["X_DISTRIBUTIONS", "RegressionTasks", "sample_tasks", "von_oswald_tasks", "random_covariance",
           "skewed_covariance", "orthogonal_query_tasks", "Curriculum"]

X_DISTRIBUTIONS = ("uniform", "gaussian")


@dataclass(frozen=True)
class RegressionTasks:
    """A batch of tasks. Shapes: x (..., N, d), y (..., N), x_query (..., d), y_query (...), w (..., d)."""

    x: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    w: torch.Tensor

    @property
    def n(self) -> int:
        """Number of context points N."""
        return self.x.shape[-2]

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    def tokens(self) -> torch.Tensor:
        """von Oswald et al. 2022 layout: e_i = (x_i, y_i) for the context, then (x_q, 0); shape (..., N+1, d+1)."""
        context = torch.cat([self.x, self.y.unsqueeze(-1)], dim=-1)
        query = torch.cat([self.x_query, torch.zeros_like(self.y_query).unsqueeze(-1)], dim=-1)
        return torch.cat([context, query.unsqueeze(-2)], dim=-2)

    def prefix(self, k: int) -> "RegressionTasks":
        """The same tasks with only the first ``k`` context points."""
        return RegressionTasks(self.x[..., :k, :], self.y[..., :k], self.x_query, self.y_query, self.w)

    def permuted(self, perm: torch.Tensor) -> "RegressionTasks":
        """The same tasks with the context points reordered by ``perm`` (a permutation of range(N))."""
        return RegressionTasks(self.x[..., perm, :], self.y[..., perm], self.x_query, self.y_query, self.w)

    def head(self, m: int) -> "RegressionTasks":
        """The first ``m`` tasks along the first batch dimension."""
        return RegressionTasks(*(t[:m] for t in (self.x, self.y, self.x_query, self.y_query, self.w)))

    def repeat(self, m: int) -> "RegressionTasks":
        """The same tasks for each of ``m`` models: a new leading dimension of size ``m`` (a view)."""
        return RegressionTasks(*(t.expand(m, *t.shape) for t in (self.x, self.y, self.x_query, self.y_query,
                                                                 self.w)))

    def to(self, dtype: torch.dtype) -> "RegressionTasks":
        return RegressionTasks(*(t.to(dtype) for t in (self.x, self.y, self.x_query, self.y_query, self.w)))


def sample_tasks(batch: int | tuple[int, ...], n: int, d: int, *, generator: torch.Generator,
                 x_dist: str = "gaussian", covariance: torch.Tensor | None = None, sigma: float | torch.Tensor = 0.0,
                 tau: float = 1.0, dtype: torch.dtype = torch.float32) -> RegressionTasks:
    """Draw ``batch`` tasks with ``n`` context points in dimension ``d`` on the generator's device.

    w ~ N(0, tau^2 I_d); y = w.x + sigma * eps for context and query alike. ``sigma`` may be a tensor
    that broadcasts against ``batch`` (e.g. one noise level per model: shape (M, 1) for batch (M, B)).
    ``covariance`` (d x d, SPD) turns "gaussian" inputs into N(0, Sigma).
    """
    shape = (batch,) if isinstance(batch, int) else tuple(batch)
    for i, b in enumerate(shape):
        check_int(f"batch[{i}]", b, min=1)
    n = check_int("n", n, min=1)
    d = check_int("d", d, min=1)
    check_choice("x_dist", x_dist, X_DISTRIBUTIONS)
    if isinstance(sigma, torch.Tensor):
        if (sigma < 0).any() or torch.broadcast_shapes(sigma.shape, shape) != shape:
            raise ValueError(f"parameter 'sigma': got a tensor of shape {tuple(sigma.shape)}; expected values >= 0 "
                             f"broadcastable to the batch shape {shape}")
        sigma = sigma.unsqueeze(-1)
    else:
        sigma = check_float("sigma", sigma, min=0.0)
    tau = check_float("tau", tau, min=0.0, open_min=True)
    if covariance is not None and (x_dist != "gaussian" or tuple(covariance.shape) != (d, d)):
        raise ValueError(f"parameter 'covariance': got shape {tuple(covariance.shape)} with x_dist={x_dist!r}; "
                         f"expected a ({d}, {d}) matrix with x_dist='gaussian'")
    kw = dict(generator=generator, device=generator.device, dtype=dtype)
    if x_dist == "uniform":
        x = torch.rand(*shape, n + 1, d, **kw) - 0.5
    else:
        x = torch.randn(*shape, n + 1, d, **kw)
        if covariance is not None:
            x = x @ torch.linalg.cholesky(covariance.to(x)).T
    w = tau * torch.randn(*shape, d, **kw)
    y = (x @ w.unsqueeze(-1)).squeeze(-1) + sigma * torch.randn(*shape, n + 1, **kw)
    return RegressionTasks(x[..., :n, :], y[..., :n], x[..., n, :], y[..., n], w)


def von_oswald_tasks(batch: int | tuple[int, ...], *, generator: torch.Generator, n: int = 10, d: int = 10,
                     dtype: torch.dtype = torch.float32) -> RegressionTasks:
    """The data of von Oswald et al. 2022 (reference code): x ~ U(-0.5, 0.5)^d, w ~ N(0, I), no noise."""
    return sample_tasks(batch, n, d, generator=generator, x_dist="uniform", dtype=dtype)


def random_covariance(d: int, *, generator: torch.Generator, condition: float = 10.0,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random SPD matrix Sigma = U diag(lambda) U^T, eigenvalues log-spaced with ratio ``condition``, tr Sigma = d."""
    d = check_int("d", d, min=1)
    condition = check_float("condition", condition, min=1.0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, device=generator.device, dtype=torch.float64))
    lam = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), d, dtype=torch.float64, device=q.device)
    lam = lam * d / lam.sum()
    return ((q * lam) @ q.T).to(dtype)


def skewed_covariance(d: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Garg et al. 2022's "skewed" input covariance: x = z T with T = U diag(1/i) U^T (U a random rotation),
    scaled so that tr Sigma = d; so Sigma = T^T T has eigenvalues proportional to 1/i^2, i = 1..d
    (their reference code, ``eval.build_evals`` and ``samplers.sample_transformation``)."""
    d = check_int("d", d, min=1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, device=generator.device, dtype=torch.float64))
    lam = 1.0 / torch.arange(1, d + 1, dtype=torch.float64, device=q.device) ** 2
    return ((q * (lam * d / lam.sum())) @ q.T).to(dtype)


def orthogonal_query_tasks(tasks: RegressionTasks, k: int) -> RegressionTasks:
    """The first ``k`` context points of ``tasks`` with a query orthogonal to their span, of the original
    query's norm (Garg et al. 2022's "orthogonal train/test" prompts, ``eval.gen_orthogonal_train_test``).

    Needs k < d. Every learner whose weights lie in the span of the context (least squares, ridge, GD,
    averaging) then predicts exactly 0, the best prediction when w ~ N(0, I). Labels are recomputed from w
    without noise.
    """
    k = check_int("k", k, min=1, max=tasks.d - 1)
    x = tasks.x[..., :k, :]
    q, _ = torch.linalg.qr(x.transpose(-1, -2))  # (..., d, k): an orthonormal basis of the span
    xq = tasks.x_query - (q @ (q.transpose(-1, -2) @ tasks.x_query.unsqueeze(-1))).squeeze(-1)
    xq = xq * tasks.x_query.norm(dim=-1, keepdim=True) / xq.norm(dim=-1, keepdim=True)
    yq = (xq * tasks.w).sum(-1)
    return RegressionTasks(x, tasks.y[..., :k], xq, yq, tasks.w)


@dataclass(frozen=True)
class Curriculum:
    """Garg et al. 2022's training curriculum (reference code ``curriculum.py``, ``conf/base.yaml`` and
    ``conf/linear_regression.yaml``): the active input dimension and the number of points start small and grow
    by ``dims_inc`` / ``points_inc`` every ``interval`` steps up to ``d`` and ``n_points``. Their linear-regression
    run: dims 5 -> 20 (+1) and points 11 -> 41 (+2), every 2000 steps."""

    d: int
    n_points: int
    dims_start: int
    points_start: int
    interval: int
    dims_inc: int = 1
    points_inc: int = 2

    def __post_init__(self):
        check_int("dims_start", self.dims_start, min=1, max=self.d)
        check_int("points_start", self.points_start, min=1, max=self.n_points)
        check_int("interval", self.interval, min=1)

    def at(self, step: int) -> tuple[int, int]:
        """(active dimensions, points) used at training step ``step``."""
        grown = step // self.interval
        return (min(self.d, self.dims_start + grown * self.dims_inc),
                min(self.n_points, self.points_start + grown * self.points_inc))

    def sample(self, step: int, batch: int | tuple[int, ...], *, generator: torch.Generator,
               **kwargs) -> RegressionTasks:
        """Tasks for step ``step``: inputs beyond the active dimensions are zero (as in Garg et al.'s sampler)."""
        dims, points = self.at(step)
        t = sample_tasks(batch, points, self.d, generator=generator, **kwargs)
        if dims == self.d:
            return t
        mask = (torch.arange(self.d, device=t.x.device) < dims).to(t.x.dtype)
        x, xq = t.x * mask, t.x_query * mask
        # keep each label's noise, recompute its clean part from the masked inputs
        y = t.y + ((x - t.x) @ t.w.unsqueeze(-1)).squeeze(-1)
        yq = t.y_query + ((xq - t.x_query) * t.w).sum(-1)
        return RegressionTasks(x, y, xq, yq, t.w)
