"""Linear self-attention (LSA) on regression tokens, and the weights that make it run gradient descent.

Tokens are e_j = (x_j, y_j) in R^(d+1), the query token is (x_q, 0) (von Oswald et al. 2022).
A layer adds to *every* token (context and query) a linear-attention update whose keys and
values come from the N context tokens only:

    e_j <- e_j + V C Q e_j,     C = (1/N) sum_{i<=N} e_i e_i^T,

where V = P W_V (projection times values) and Q = W_K^T W_Q (keys times queries). Only these
two products matter, so the model is parameterized by them; the paper's P = (eta/N) I becomes
V = eta [[0, 0], [W0, -I]] here because C already carries the 1/N. The prediction is read
from the query's y-slot, negated: y_hat = -e_q[d].

Parameters are tensors ``value`` and ``key_query`` of shape ``(*models, K, d+1, d+1)``: any leading
"models" dimensions train many LSAs (seeds, depths padded to K) as one batched computation.
"""
from __future__ import annotations

from typing import Sequence

import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["lsa_forward", "lsa_predict", "recurrent", "init_lsa", "gd_construction", "gd_plus_plus_construction",
           "effective_preconditioner", "effective_step_size", "align_scale", "train_lsa", "task_predictor"]


def lsa_forward(tokens: torch.Tensor, value: torch.Tensor, key_query: torch.Tensor) -> torch.Tensor:
    """Run the K layers; tokens ``(*models, B, N+1, d+1)`` (batch dim required) with the query last -> same shape.

    Each layer: e_j <- e_j + V_l C_l Q_l e_j with C_l the second moment of the current context tokens
    (von Oswald et al. 2022, Eq. 7 without softmax).
    """
    n = tokens.shape[-2] - 1
    z = tokens
    for layer in range(value.shape[-3]):
        v = value[..., layer, :, :].unsqueeze(-3)
        q = key_query[..., layer, :, :].unsqueeze(-3)
        context = z[..., :n, :]
        second_moment = context.transpose(-1, -2) @ context / n  # C = (1/N) sum_i e_i e_i^T
        z = z + z @ (v @ second_moment @ q).transpose(-1, -2)
    return z


def lsa_predict(tokens: torch.Tensor, value: torch.Tensor, key_query: torch.Tensor) -> torch.Tensor:
    """y_hat = -(query's y-slot after the last layer); shape ``(*models, B)``.

    Same as ``-lsa_forward(...)[..., -1, -1]``, but the last layer updates only the query token.
    """
    z = lsa_forward(tokens, value[..., :-1, :, :], key_query[..., :-1, :, :])
    context, query = z[..., :-1, :], z[..., -1, :]
    v, q = value[..., -1, -1, :].unsqueeze(-2), key_query[..., -1, :, :].unsqueeze(-3)  # last row of V: the y-slot
    attended = (context @ (q @ query.unsqueeze(-1))).squeeze(-1)  # e_i^T Q e_q for each context token i
    update = (attended.unsqueeze(-2) @ context).squeeze(-2) @ v.transpose(-1, -2) / context.shape[-2]
    return -(query[..., -1] + update.squeeze(-1))


def recurrent(value: torch.Tensor, key_query: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (value, key_query), shape ``(*models, 1, d+1, d+1)``, applied ``layers`` times: a recurrent LSA.

    The result is a view, so gradients flow back into the one shared layer. Von Oswald et al. 2022 compare
    K-layer models with K steps of GD++ in this weight-tied form (their reference code's default ``deq=True``).
    """
    layers = check_int("layers", layers, min=1)
    if value.shape[-3] != 1 or key_query.shape[-3] != 1:
        raise ValueError(f"parameter 'value': got {value.shape[-3]} layers; a recurrent LSA stores exactly 1")
    shape = (*value.shape[:-3], layers, *value.shape[-2:])
    return value.expand(shape), key_query.expand(shape)


def init_lsa(models: Sequence[int], layers: int, d: int, *, generator: torch.Generator, scale: float = 1e-2,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random (value, key_query) of shape ``(*models, layers, d+1, d+1)``, requiring grad."""
    layers = check_int("layers", layers, min=1)
    d = check_int("d", d, min=1)
    scale = check_float("scale", scale, min=0.0)
    shape = (*models, layers, d + 1, d + 1)
    kw = dict(generator=generator, device=generator.device, dtype=dtype)
    return (scale * torch.randn(shape, **kw)).requires_grad_(), (scale * torch.randn(shape, **kw)).requires_grad_()


def _blocks(d: int, xx: torch.Tensor, yx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """The (d+1) x (d+1) matrix [[xx, 0], [yx, yy]]."""
    m = torch.zeros(d + 1, d + 1, dtype=xx.dtype, device=xx.device)
    m[:d, :d] = xx
    m[d, :d] = yx
    m[d, d] = yy
    return m


def gd_construction(d: int, eta: float, *, layers: int = 1, w0: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights under which each layer is one GD step on L(W) = 1/(2N) sum_i (W x_i - y_i)^2.

    W_K = W_Q = [[I, 0], [0, 0]] and P W_V = eta [[0, 0], [W0, -I]] (von Oswald et al. 2022, Prop. 1):
    every token's y-slot becomes y_j - (W_K - W0) x_j after K layers, where W_K is K GD steps from W0.
    Returns (value, key_query), each (layers, d+1, d+1).
    """
    d = check_int("d", d, min=1)
    layers = check_int("layers", layers, min=1)
    eta = check_float("eta", eta)
    kw = dict(dtype=dtype, device=device)
    w0 = torch.zeros(d, **kw) if w0 is None else w0.to(**kw).reshape(d)
    eye = torch.eye(d, **kw)
    value = eta * _blocks(d, torch.zeros(d, d, **kw), w0, torch.tensor(-1.0, **kw))
    key_query = _blocks(d, eye, torch.zeros(d, **kw), torch.tensor(0.0, **kw))
    return value.expand(layers, -1, -1).clone(), key_query.expand(layers, -1, -1).clone()


def gd_plus_plus_construction(d: int, etas: Sequence[float], gammas: Sequence[float], *,
                              dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """GD++ layers: layer l also moves every input, x_j <- (I - gamma_l A) x_j, A = (1/N) sum_i x_i x_i^T.

    P W_V = [[-gamma_l I, 0], [0, -eta_l]] and W_K^T W_Q = [[I, 0], [0, 0]] (von Oswald et al. 2022, Sec. 4).
    """
    if len(etas) != len(gammas) or not len(etas):
        raise ValueError(f"parameters 'etas', 'gammas': got lengths {len(etas)}, {len(gammas)}; expected equal, >= 1")
    kw = dict(dtype=dtype, device=device)
    eye, zero = torch.eye(d, **kw), torch.zeros(d, **kw)
    value = torch.stack([_blocks(d, -float(g) * eye, zero, torch.tensor(-float(e), **kw))
                         for e, g in zip(etas, gammas)])
    key_query = _blocks(d, eye, zero, torch.tensor(0.0, **kw)).expand(len(etas), -1, -1).clone()
    return value, key_query


def effective_preconditioner(value: torch.Tensor, key_query: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The matrix Gamma with y_hat = b^T Gamma x_q + (terms without y), b = (1/N) sum_i y_i x_i.

    For one layer, -[V C Q e_q]_y contains b^T Gamma x_q with Gamma = -(v_y Q_xx + v_x q_yx^T);
    the construction gives Gamma = eta I (Mahankali et al. 2023; Ahn et al. 2023). Shape ``(*models, d, d)``.
    """
    v = value[..., layer, -1, :]  # last row of P W_V: (v_x, v_y)
    q = key_query[..., layer, :, :-1]  # columns acting on x_q: [Q_xx; q_yx]
    v_x, v_y = v[..., :-1], v[..., -1]
    q_xx, q_yx = q[..., :-1, :], q[..., -1, :]
    return -(v_y[..., None, None] * q_xx + v_x.unsqueeze(-1) * q_yx.unsqueeze(-2))


def effective_step_size(value: torch.Tensor, key_query: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """eta_eff = tr(Gamma) / d, the GD step size that the learned weights implement."""
    gamma = effective_preconditioner(value, key_query, layer)
    return gamma.diagonal(dim1=-2, dim2=-1).mean(-1)


def align_scale(value: torch.Tensor, key_query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Use the symmetry (V, Q) -> (c V, Q / c) of each layer to make mean diag(Q_xx) = 1, as in the construction.

    Needed before interpolating between trained and constructed weights (von Oswald et al. 2022, Fig. 2).
    """
    c = key_query[..., :-1, :-1].diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return value * c, key_query / c


def train_lsa(value: torch.Tensor, key_query: torch.Tensor, sample, steps: int, *, lr: float = 1e-3,
              schedule: str = "cosine", log_every: int = 10, clip_norm: float | None = None,
              repeat: int | None = None):
    """Adam on the query loss 1/2 (y_hat - y_q)^2 with fresh tasks each step (von Oswald et al. 2022, Sec. 3).

    ``sample(step)`` returns RegressionTasks of shape ``(*models, B, …)`` matching the parameters' leading
    dimensions. The per-model mean losses are summed, so every model follows its own gradient (and no
    gradient clipping couples them); the logged loss is the mean over models. ``schedule="cosine"`` warms
    the learning rate up over the first 5 % of steps and decays it to zero on a cosine, which leaves far less
    gradient noise in the final weights than a constant rate; ``"cooldown"`` runs the last quarter at lr / 10.
    ``clip_norm`` clips the global gradient norm, which couples the models, so use it for one model at a time
    (deep LSAs need it). ``repeat=K`` trains a recurrent LSA: the one stored layer is applied K times
    (:func:`recurrent`). Returns the :class:`gdlab.train.History`.
    """
    from gdlab.icl.training import fit_warmup_cosine, fit_with_cooldown

    check_choice("schedule", schedule, ("cosine", "cooldown"))
    models = value.shape[:-3].numel()

    def loss_fn(step):
        tasks = sample(step)
        layers = (value, key_query) if repeat is None else recurrent(value, key_query, repeat)
        pred = lsa_predict(tasks.tokens(), *layers)
        return 0.5 * (pred - tasks.y_query).pow(2).mean(-1).sum()

    train = fit_warmup_cosine if schedule == "cosine" else fit_with_cooldown
    history = train([value, key_query], loss_fn, steps, lr=lr, log_every=log_every, clip_norm=clip_norm)
    history.loss = [loss / models for loss in history.loss]
    return history


def task_predictor(value: torch.Tensor, key_query: torch.Tensor):
    """``f(x, y, x_query) -> y_hat`` for one unbatched task (for :func:`gdlab.icl.metrics.model_cosine`).

    ``value`` and ``key_query`` are one model's (K, d+1, d+1) weights.
    """
    from gdlab.icl.tasks import RegressionTasks

    def predict(x, y, x_query):
        tokens = RegressionTasks(x, y, x_query, torch.zeros_like(y[0]), x_query).tokens()
        return lsa_predict(tokens.unsqueeze(0), value, key_query)[0]

    return predict
