"""Dai et al. 2022: linear attention over demonstrations as an implicit ("meta-gradient") weight update.

For a query token q = W_Q x_q, attention over the demonstrations X' and the query's own context X is

    F(q) = W_V [X', X] (W_K [X', X])^T q = W_ZSL q + Delta W_ICL q,
    W_ZSL = sum_{x in X} (W_V x) (W_K x)^T,    Delta W_ICL = sum_i (W_V x'_i) (W_K x'_i)^T,

the same outer-product form as a GD update of a linear layer (Dai et al. 2022, Eqs. 5-7).
"""
from __future__ import annotations

import torch

__all__ = ["linear_attention", "dual_form", "dual_form_error", "momentum_attention", "momentum_buffer"]


def linear_attention(values: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Unnormalized attention without softmax: out_t = sum_i v_i (k_i . q_t); (…, T, d) inputs, all i attended."""
    return (queries @ keys.transpose(-1, -2)) @ values


def dual_form(w_v: torch.Tensor, w_k: torch.Tensor, demonstrations: torch.Tensor,
              context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_ZSL, Delta W_ICL) of Dai et al. 2022, Eq. 7, for demonstration tokens X' (M, h) and context X (T, h)."""
    def outer_sum(tokens):
        return (tokens @ w_v.T).transpose(-1, -2) @ (tokens @ w_k.T)  # sum_i (W_V x_i)(W_K x_i)^T
    return outer_sum(context), outer_sum(demonstrations)


def dual_form_error(w_v: torch.Tensor, w_k: torch.Tensor, w_q: torch.Tensor, demonstrations: torch.Tensor,
                    context: torch.Tensor, x_query: torch.Tensor) -> float:
    """``|attention - dual form| / (sum_i |v_i| |k_i . q|)``: the dual form's error relative to the size of the
    summed terms (the scale of floating-point rounding, which cancellation in the sum cannot hide)."""
    tokens = torch.cat([demonstrations, context])
    values, keys, query = tokens @ w_v.T, tokens @ w_k.T, w_q @ x_query
    direct = linear_attention(values, keys, query.unsqueeze(0)).squeeze(0)
    w_zsl, delta_w = dual_form(w_v, w_k, demonstrations, context)
    scale = (values.abs().T @ (keys @ query).abs()).norm()
    return float((direct - (w_zsl + delta_w) @ query).norm() / scale)


def momentum_attention(values: torch.Tensor, keys: torch.Tensor, queries: torch.Tensor, eta: float) -> torch.Tensor:
    """Causal linear attention plus an exponential moving average of past values (Dai et al. 2022, Eq. 11):

    out_t = sum_{i<=t} v_i (k_i . q_t) + sum_{i<t} eta^(t-i) v_i.
    """
    t = values.shape[-2]
    idx = torch.arange(t, device=values.device)
    lag = (idx[:, None] - idx[None, :]).to(values.dtype)
    causal = lag >= 0
    scores = (queries @ keys.transpose(-1, -2)).masked_fill(~causal, 0.0)
    decay = torch.where(lag > 0, torch.as_tensor(eta, dtype=values.dtype) ** lag.clamp(min=0), torch.zeros_like(lag))
    return (scores + decay) @ values


def momentum_buffer(values: torch.Tensor, eta: float) -> torch.Tensor:
    """The momentum term as SGD-momentum's recursion m_t = eta (m_{t-1} + v_{t-1}), m_1 = 0."""
    out = [torch.zeros_like(values[..., 0, :])]
    for t in range(1, values.shape[-2]):
        out.append(eta * (out[-1] + values[..., t - 1, :]))
    return torch.stack(out, dim=-2)
