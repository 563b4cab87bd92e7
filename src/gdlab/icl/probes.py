"""Probing a trained transformer for the quantities a learning algorithm would compute (Akyürek et al. 2022, Sec. 5).

If the model runs least squares, the solution w_OLS of the examples seen so far should be readable from its
hidden states; if it runs one GD step, the moment (1/k) X^T Y should be. A linear probe is fitted on the residual
stream at the token of the k-th label (after k examples), one probe per layer and per k, and scored by R^2 on
held-out prompts. The controls are the same probes on an untrained copy of the model and on the embedding layer.
"""
from __future__ import annotations

import torch

from gdlab.icl import learners
from gdlab.icl.tasks import RegressionTasks
from gdlab.icl.transformer import CausalTransformer, interleave

__all__ = ["targets", "label_states", "linear_probe_r2", "probe_layers", "implicit_weights"]


def targets(tasks: RegressionTasks, name: str) -> torch.Tensor:
    """Probe targets after k = 1..n examples, shape (..., n, d): "moment" (1/k) X_k^T y_k or "ols" w_OLS(k)."""
    out = []
    for k in range(1, tasks.n + 1):
        x, y = tasks.x[..., :k, :], tasks.y[..., :k]
        out.append(learners.averaging_weights(x, y) if name == "moment" else learners.ols_weights(x, y))
    return torch.stack(out, dim=-2)


def label_states(model: CausalTransformer, tasks: RegressionTasks) -> torch.Tensor:
    """Residual stream at every label token y~_k (k = 1..n): (depth + 1, M, B, n, width)."""
    states = model.hidden_states(interleave(tasks.x, tasks.y, model.config.layout))
    return torch.stack([h[..., 1::2, :] for h in states])


def linear_probe_r2(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                    ridge: float = 1e-3) -> torch.Tensor:
    """R^2 on (test_x, test_y) of the affine map fitted by ridge regression on (train_x, train_y).

    Inputs (..., B, features) and (..., B, targets), batched over any leading dimensions (layers, positions);
    ``R^2 = 1 - sum |y - y_hat|^2 / sum |y - mean y|^2``, pooled over the target dimensions.
    """
    def affine(x):
        return torch.cat([x, torch.ones_like(x[..., :1])], -1)
    a, b = affine(train_x).double(), train_y.double()
    gram = a.transpose(-1, -2) @ a + ridge * a.shape[-2] * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    coef = torch.linalg.solve(gram, a.transpose(-1, -2) @ b)
    pred = affine(test_x).double() @ coef
    resid = (test_y.double() - pred).pow(2).sum((-2, -1))
    total = (test_y.double() - test_y.double().mean(-2, keepdim=True)).pow(2).sum((-2, -1))
    return (1 - resid / total).to(test_y.dtype)


def probe_layers(model: CausalTransformer, train: RegressionTasks, test: RegressionTasks, name: str,
                 model_index: int = 0) -> torch.Tensor:
    """R^2 of the "moment" or "ols" probe at every layer and every k = 1..n: (depth + 1, n).

    ``train`` and ``test`` are prompts (B, ...) shown to every model; ``model_index`` picks the model probed."""
    with torch.no_grad():
        h_train, h_test = (label_states(model, t.repeat(model.config.models))[:, model_index]
                           for t in (train, test))                                           # (L+1, B, n, W)
        y_train, y_test = (targets(t, name) for t in (train, test))                         # (B, n, d)
    move = lambda t: t.transpose(-3, -2)                                                     # (…, n, B, ·)
    return linear_probe_r2(move(h_train), move(y_train), move(h_test), move(y_test))


def implicit_weights(model: CausalTransformer, tasks: RegressionTasks, *, probes: int,
                     generator: torch.Generator, model_index: int = 0) -> torch.Tensor:
    """The linear weights a transformer implicitly applies to each context (B, ...): (B, d).

    The model predicts at ``probes`` Gaussian queries per context and w_hat is their least-squares fit
    (Akyürek et al. 2022, Sec. 4.1, "implicit linear weights"; compared with :func:`gdlab.icl.metrics.ilwd`).
    """
    b, n, d = tasks.x.shape
    xq = torch.randn(b, probes, d, generator=generator, device=generator.device, dtype=tasks.x.dtype)
    expand = lambda t: t.unsqueeze(1).expand(b, probes, *t.shape[1:]).reshape(b * probes, *t.shape[1:])
    probe = RegressionTasks(expand(tasks.x), expand(tasks.y), xq.reshape(b * probes, d),
                            torch.zeros(b * probes, dtype=xq.dtype, device=xq.device), expand(tasks.w))
    with torch.no_grad():
        y_hat = model.predict_query_each(probe)[model_index].reshape(b, probes, 1)
    gram = xq.transpose(-1, -2) @ xq   # normal equations: a batched d x d solve (no batched lstsq)
    return torch.linalg.solve(gram, xq.transpose(-1, -2) @ y_hat).squeeze(-1)
