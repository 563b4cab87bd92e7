"""Gradient descent happens in a tiny subspace (Gur-Ari, Roberts & Dyer 2018).

After a short warm-up, most of the gradient lies in the span of the top-k Hessian eigenvectors,
with k the number of classes, and that span changes slowly. The eigenvectors come from
:func:`gdlab.hessian.top_eigenpairs` (Lanczos on Hessian-vector products).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdlab import hessian
from gdlab.implicit._threads import single_threaded
from gdlab.runtime import check_choice, check_float, check_int, check_sequence
from gdlab.train import fit

__all__ = [
    "gradient_fraction", "subspace_overlap", "SubspaceRun", "track_gradient_subspace",
    "ProjectedRun", "projected_sgd",
]


def gradient_fraction(gradient: torch.Tensor, eigenvectors: torch.Tensor) -> float:
    """``||P_k g||^2 / ||g||^2`` for the span of orthonormal rows ``eigenvectors`` (k, P)
    (Gur-Ari et al. 2018, eq. 2)."""
    proj = eigenvectors @ gradient
    return float(proj.pow(2).sum() / gradient.pow(2).sum())


def subspace_overlap(V: torch.Tensor, W: torch.Tensor) -> float:
    """``||V W^T||_F^2 / k``: 1 when the two k-dimensional spans (orthonormal rows) agree, about k/P at random."""
    return float((V @ W.T).pow(2).sum() / W.shape[0])


@dataclass
class SubspaceRun:
    """At each checkpoint ``steps[i]``: the top-k ``eigenvalues``, the gradient ``fraction`` in their span,
    the ``overlap`` of that span with the previous checkpoint's (NaN at the first), the training ``loss``."""

    k: int
    num_params: int
    steps: list = field(default_factory=list)
    fraction: list = field(default_factory=list)
    overlap: list = field(default_factory=list)
    eigenvalues: list = field(default_factory=list)
    loss: list = field(default_factory=list)

    @property
    def chance(self) -> float:
        """``k / P``: the fraction a random direction would have."""
        return self.k / self.num_params


def track_gradient_subspace(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, *, k: int,
                            checkpoints, lr: float, batch_size: int, generator: torch.Generator,
                            probe_size: int = 1000) -> SubspaceRun:
    """Train ``model`` with minibatch SGD and, at every step in ``checkpoints``, measure the fraction of the
    gradient in the top-k Hessian eigenspace. Gradient and Hessian are taken on the same fixed probe set
    of ``probe_size`` training samples (Gur-Ari et al. 2018, Sec. 2 use the training loss)."""
    k = check_int("k", k, min=1)
    checkpoints = sorted(check_sequence("checkpoints", checkpoints, lambda n, v: check_int(n, v, min=0)))
    batch_size = check_int("batch_size", batch_size, min=1, max=len(x))
    probe_size = check_int("probe_size", probe_size, min=1)
    probe = (x[:probe_size], y[:probe_size])
    run = SubspaceRun(k=k, num_params=hessian.num_params(model))

    def minibatch_loss(step):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator, device=generator.device).to(x.device)
        return loss_fn(model(x[idx]), y[idx])

    with single_threaded(x.device):
        _track(run, model, loss_fn, k, checkpoints, lr, minibatch_loss, probe, generator)
    return run


def _track(run, model, loss_fn, k, checkpoints, lr, minibatch_loss, probe, generator):
    """The training loop of :func:`track_gradient_subspace`, recording into ``run``."""
    previous, done = None, 0
    for step in checkpoints:
        if step > done:
            fit(model.parameters(), minibatch_loss, step - done, optimizer="sgd", lr=lr, log_every=step - done)
            done = step
        values, vectors = hessian.top_eigenpairs(model, loss_fn, probe, k, tol=1e-4, generator=generator)
        g = hessian.flat_grad(model, loss_fn, probe)
        run.steps.append(step)
        run.fraction.append(gradient_fraction(g, vectors))
        run.overlap.append(float("nan") if previous is None else subspace_overlap(previous, vectors))
        run.eigenvalues.append(values.tolist())
        with torch.no_grad():
            run.loss.append(float(loss_fn(model(probe[0]), probe[1])))
        previous = vectors


def _copy_generator(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


@dataclass
class ProjectedRun:
    """One SGD variant (``mode``) from a common start: full-data ``loss`` at ``steps``; at every subspace
    refresh, the full-batch gradient ``fraction`` in the current top-k eigenspace and, for the SGD run,
    ``fraction_next`` in the span of eigenvectors k+1..2k; the top-k spaces at the first and last refresh
    (``first``, ``last``), the next-k spaces (``first_next``, ``last_next``; SGD run only) and the
    unit full-batch gradients there (``first_grad``, ``last_grad``)."""

    mode: str
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    fraction: list = field(default_factory=list)
    fraction_next: list = field(default_factory=list)
    first: torch.Tensor | None = None
    last: torch.Tensor | None = None
    first_next: torch.Tensor | None = None
    last_next: torch.Tensor | None = None
    first_grad: torch.Tensor | None = None
    last_grad: torch.Tensor | None = None


def projected_sgd(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, *, modes=("sgd", "dom", "bulk"),
                  k: int, steps: int, lr: float, batch_size: int, refresh: int, generator: torch.Generator,
                  tol: float = 1e-3) -> dict[str, ProjectedRun]:
    """Dom-SGD and Bulk-SGD (Song, Ahn & Yun 2025, Sec. 3): from the current ``model``, run ``steps`` minibatch
    steps of each variant on copies of the model, with the same minibatches:

    - ``"sgd"``: plain SGD, ``theta -= lr g_B``;
    - ``"dom"``: the update projected onto the top-k Hessian eigenspace, ``theta -= lr P_k g_B``;
    - ``"bulk"``: the update with that eigenspace projected out, ``theta -= lr (I - P_k) g_B``.

    The Hessian is the full-data one (``x``, ``y``), its top-k (and for SGD top-2k) eigenvectors recomputed every
    ``refresh`` steps by Lanczos. The model itself is left unchanged. Returns ``{mode: ProjectedRun}``."""
    import copy

    k, steps = check_int("k", k, min=1), check_int("steps", steps, min=1)
    refresh, batch_size = check_int("refresh", refresh, min=1), check_int("batch_size", batch_size, min=1, max=len(x))
    lr = check_float("lr", lr, min=0.0, open_min=True)
    data = (x, y)
    out = {}
    with single_threaded(x.device):
        for mode in check_sequence("modes", modes, lambda n, v: check_choice(n, v, ("sgd", "dom", "bulk"))):
            net, g_batch = copy.deepcopy(model), _copy_generator(generator)
            g_lanczos = _copy_generator(generator)
            params = [p for p in net.parameters() if p.requires_grad]
            run = ProjectedRun(mode)
            for t in range(steps + 1):
                if t % refresh == 0 or t == steps:
                    width = 2 * k if mode == "sgd" else k
                    _, V = hessian.top_eigenpairs(net, loss_fn, data, width, tol=tol, generator=g_lanczos)
                    grad = hessian.flat_grad(net, loss_fn, data)
                    run.steps.append(t)
                    run.fraction.append(gradient_fraction(grad, V[:k]))
                    with torch.no_grad():
                        run.loss.append(float(loss_fn(net(x), y)))
                    if mode == "sgd":
                        run.fraction_next.append(gradient_fraction(grad, V[k:]))
                        run.first_next = V[k:] if run.first_next is None else run.first_next
                        run.last_next = V[k:]
                    run.first = V[:k] if run.first is None else run.first
                    run.last = V[:k]
                    unit = (grad / grad.norm()).unsqueeze(0)
                    run.first_grad = unit if run.first_grad is None else run.first_grad
                    run.last_grad = unit
                    V = V[:k]
                if t == steps:
                    break
                idx = torch.randint(0, len(x), (batch_size,), generator=g_batch, device=g_batch.device).to(x.device)
                g = torch.cat([gi.reshape(-1) for gi in torch.autograd.grad(loss_fn(net(x[idx]), y[idx]), params)])
                if mode == "dom":
                    g = V.T @ (V @ g)
                elif mode == "bulk":
                    g = g - V.T @ (V @ g)
                with torch.no_grad():
                    offset = 0
                    for p in params:
                        p -= lr * g[offset:offset + p.numel()].view_as(p)
                        offset += p.numel()
            out[mode] = run
    return out
