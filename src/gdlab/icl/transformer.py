"""A small causal GPT-2-like transformer that learns linear regression in context.

Layout of Garg et al. 2022 and Akyürek et al. 2022: the prompt (x_1, y_1, ..., x_n, y_n) becomes
2n tokens, x~_i = [0, x_i] and y~_i = [y_i, 0_d], and the model reads its prediction of y_i off
the output at x~_i, so one forward pass gives the prediction for every prefix length k = 0..n-1.

Every parameter carries a leading "models" dimension: ``models=M`` trains M independent
transformers (seeds, or noiseless and noisy data) as one batched computation.
Pre-LayerNorm blocks, GELU MLP, learned positions, softmax attention (nanoGPT-style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gdlab.icl.tasks import RegressionTasks
from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["LAYOUTS", "TransformerConfig", "interleave", "CausalTransformer", "prompt_loss", "train_transformer"]

LAYOUTS = ("akyurek", "paired")


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the model. ``n_points`` is the longest prompt (in (x, y) pairs) it will see.

    ``qk_std`` is the init scale of the query and key weights (every other weight starts at GPT-2's 0.02).
    The attention logits are bilinear in them, q.k = h^T W_Q^T W_K h, so at a small init both gradients
    are small and training sits on a plateau where attention is nearly uniform and the model averages
    like one GD step; the escape time grows like log(1/init), as for any product of small factors. With
    width 32-64, ``qk_std`` of about 0.2-0.3 starts the logits at order one and shortens that plateau
    from thousands of steps to about two hundred.
    """

    d: int
    n_points: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    models: int = 1
    layout: str = "akyurek"
    qk_std: float = 0.02

    def __post_init__(self):
        check_choice("layout", self.layout, LAYOUTS)
        check_float("qk_std", self.qk_std, min=0.0, open_min=True)
        for name in ("d", "n_points", "width", "depth", "heads", "mlp_ratio", "models"):
            check_int(name, getattr(self, name), min=1)
        if self.width % self.heads:
            raise ValueError(f"parameter 'heads': got {self.heads}; it must divide width={self.width}")


def interleave(x: torch.Tensor, y: torch.Tensor, layout: str = "akyurek") -> torch.Tensor:
    """(…, n, d), (…, n) -> (…, 2n, d+1) tokens [0, x_1], [y_1, 0], [0, x_2], … (Akyürek et al. 2022).

    ``layout="paired"`` writes y~_i = [y_i, x_i] instead: the y-token repeats its x, which spares a
    small model the first layer's job of copying x_i next to y_i (it learns in far fewer steps).
    """
    check_choice("layout", layout, LAYOUTS)
    x_tok = F.pad(x, (1, 0))
    y_tok = F.pad(y.unsqueeze(-1), (0, x.shape[-1])) if layout == "akyurek" else torch.cat([y.unsqueeze(-1), x], -1)
    return torch.stack([x_tok, y_tok], dim=-2).flatten(-3, -2)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-model affine map: x (M, ..., i), weight (M, i, o), bias (M, o) -> (M, ..., o)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.baddbmm(bias.unsqueeze(1), flat, weight).reshape(*x.shape[:-1], weight.shape[-1])


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h) + causal mask) v over (..., T, d_h); one batched matmul per product.

    Same result as ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``; written out because on CPU,
    with head sizes this small, that call spends about a tenth of a training step checking for fully masked rows.
    """
    t, d_h = q.shape[-2], q.shape[-1]
    mask = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    flat = (-1, t, d_h)
    scores = torch.baddbmm(mask.expand(q.shape[:-2].numel(), t, t), q.reshape(flat), k.reshape(flat).transpose(-1, -2),
                           alpha=d_h**-0.5)
    return (scores.softmax(-1) @ v.reshape(flat)).reshape(v.shape)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * weight.view(shape) + bias.view(shape)


class CausalTransformer(nn.Module):
    """M independent GPT-2-like transformers evaluated together; see the module docstring."""

    def __init__(self, config: TransformerConfig, *, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = c = config
        M, W, L = c.models, c.width, c.depth
        kw = dict(device=generator.device, dtype=dtype)

        def normal(*shape, std=0.02):
            return nn.Parameter(std * torch.randn(M, *shape, generator=generator, **kw))

        def zeros(*shape):
            return nn.Parameter(torch.zeros(M, *shape, **kw))

        def ones(*shape):
            return nn.Parameter(torch.ones(M, *shape, **kw))

        self.read_in_w, self.read_in_b = normal(c.d + 1, W), zeros(W)
        self.positions = normal(2 * c.n_points, W)
        resid_std = 0.02 / math.sqrt(2 * L)  # GPT-2 scaling of residual projections
        qkv_std = torch.full((3 * W,), 0.02, **kw)
        qkv_std[: 2 * W] = c.qk_std
        self.blocks = nn.ModuleList()
        for _ in range(L):
            block = nn.ParameterDict(dict(
                ln1_w=ones(W), ln1_b=zeros(W), qkv_w=normal(W, 3 * W, std=qkv_std), qkv_b=zeros(3 * W),
                proj_w=normal(W, W, std=resid_std), proj_b=zeros(W),
                ln2_w=ones(W), ln2_b=zeros(W), fc_w=normal(W, c.mlp_ratio * W), fc_b=zeros(c.mlp_ratio * W),
                out_w=normal(c.mlp_ratio * W, W, std=resid_std), out_b=zeros(W)))
            self.blocks.append(block)
        self.ln_f_w, self.ln_f_b = ones(W), zeros(W)
        self.read_out_w, self.read_out_b = normal(W, 1), zeros(1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (M, B, T, d+1) -> outputs (M, B, T)."""
        h = self.hidden_states(tokens)[-1]
        h = _layer_norm(h, self.ln_f_w, self.ln_f_b)
        return _linear(h, self.read_out_w, self.read_out_b).squeeze(-1)

    def hidden_states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after each block: depth + 1 tensors (M, B, T, width)
        (what Akyürek et al. 2022, Sec. 5, probe)."""
        c = self.config
        M, B, T, _ = tokens.shape
        h = _linear(tokens, self.read_in_w, self.read_in_b) + self.positions[:, None, :T]
        out = [h]
        for p in self.blocks:
            a = _linear(_layer_norm(h, p["ln1_w"], p["ln1_b"]), p["qkv_w"], p["qkv_b"])
            q, k, v = (t.reshape(M, B, T, c.heads, -1).transpose(-3, -2) for t in a.chunk(3, dim=-1))
            att = _causal_attention(q, k, v)
            h = h + _linear(att.transpose(-3, -2).reshape(M, B, T, c.width), p["proj_w"], p["proj_b"])
            m = F.gelu(_linear(_layer_norm(h, p["ln2_w"], p["ln2_b"]), p["fc_w"], p["fc_b"]))
            h = h + _linear(m, p["out_w"], p["out_b"])
            out.append(h)
        return out

    def predict_all(self, tasks: RegressionTasks) -> torch.Tensor:
        """Prediction of y_k from the first k points and x_k, for k = 0..n-1: tasks (M, B, ...) -> (M, B, n)."""
        return self(interleave(tasks.x, tasks.y, self.config.layout))[..., 0::2]

    def predict_each(self, tasks: RegressionTasks) -> torch.Tensor:
        """:meth:`predict_all` of every model on the same prompts: tasks (B, ...) -> (M, B, n)."""
        return self.predict_all(tasks.repeat(self.config.models))

    def predict_query_each(self, tasks: RegressionTasks) -> torch.Tensor:
        """:meth:`predict` of every model on the same prompts: tasks (B, ...) -> (M, B)."""
        return self.predict(tasks.repeat(self.config.models))

    def predict(self, tasks: RegressionTasks) -> torch.Tensor:
        """Prediction at the query after all N context points: (M, B, ...) -> (M, B); needs N < n_points."""
        if tasks.n >= self.config.n_points:
            raise ValueError(f"parameter 'tasks': got N={tasks.n} context points; this model takes at most "
                             f"{self.config.n_points - 1} before a query")
        x = torch.cat([tasks.x, tasks.x_query.unsqueeze(-2)], dim=-2)
        y = torch.cat([tasks.y, torch.zeros_like(tasks.y_query).unsqueeze(-1)], dim=-1)
        return self(interleave(x, y, self.config.layout)[..., :-1, :])[..., -1]


def prompt_loss(model: CausalTransformer, tasks: RegressionTasks) -> torch.Tensor:
    """Squared error averaged over every prefix length and summed over the M models (Garg et al. 2022).

    Summing keeps the models independent: each one's gradient is that of its own mean loss.
    """
    return (model.predict_all(tasks) - tasks.y).pow(2).mean(dim=(-2, -1)).sum()


def train_transformer(model: CausalTransformer, sample, steps: int, *, lr: float = 1e-3, warmup: float = 0.05,
                      schedule: str = "cosine", log_every: int = 10):
    """Adam on :func:`prompt_loss` with fresh prompts ``sample(step)`` (shape (M, B, …)) every step.

    ``schedule="cosine"``: the learning rate warms up linearly over the first ``warmup`` fraction of steps and
    then decays to zero on a cosine (:func:`gdlab.icl.training.fit_warmup_cosine`); ``"constant"``: Adam at
    ``lr`` throughout, as Garg et al. 2022 train (reference code ``train.py``). The logged loss is per model
    and per dimension, E (y_hat - y)^2 / d, the normalized error of Garg et al. 2022.
    """
    from gdlab.icl.training import fit_warmup_cosine
    from gdlab.train import fit

    check_choice("schedule", schedule, ("cosine", "constant"))
    c = model.config
    loss_fn = lambda step: prompt_loss(model, sample(step))
    if schedule == "cosine":
        history = fit_warmup_cosine(model.parameters(), loss_fn, steps, lr=lr, warmup=warmup, log_every=log_every)
    else:
        history = fit(list(model.parameters()), loss_fn, steps, lr=lr, log_every=log_every)
    history.loss = [loss / (c.models * c.d) for loss in history.loss]
    return history
