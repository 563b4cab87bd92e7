"""Training schedules for the chapter's models.

* :func:`fit_with_cooldown` (linear self-attention): Adam at ``lr``, then a short cool-down at ``lr / 10``.
  The cool-down removes most of the gradient noise of training on fresh random tasks each step, so a
  short CPU run ends close to the minimum it is heading for. It calls :func:`gdlab.train.fit` twice.
* :func:`fit_warmup_cosine` (softmax transformers): Adam with a linear warm-up and a cosine decay to zero,
  the usual schedule for GPT-2-like models; it lets a small transformer train at a high learning rate
  on large batches, which on a CPU learns far more per second than small batches at a low rate.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from gdlab.runtime import check_float, check_int
from gdlab.train import History, fit

__all__ = ["fit_with_cooldown", "warmup_cosine", "fit_warmup_cosine"]


def fit_with_cooldown(params: Iterable[torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int, *,
                      lr: float, cooldown: float = 0.25, log_every: int = 10, clip_norm: float | None = None) -> History:
    """``steps`` Adam steps in all: the first (1 - cooldown) at ``lr``, the rest at ``lr / 10``.

    ``clip_norm`` clips the global gradient norm (von Oswald et al. 2022 train their LSAs with it)."""
    params = list(params)
    steps = check_int("steps", steps, min=2)
    cooldown = check_float("cooldown", cooldown, min=0.0, max=0.9)
    main = max(1, round(steps * (1 - cooldown)))
    history = fit(params, loss_fn, main, lr=lr, log_every=log_every, clip_norm=clip_norm)
    if steps > main:
        tail = fit(params, lambda s: loss_fn(main + s), steps - main, lr=lr / 10, log_every=log_every,
                   clip_norm=clip_norm)
        history.steps += [main + s for s in tail.steps]
        history.loss += tail.loss
    return history


def warmup_cosine(step: int, steps: int, warmup: float) -> float:
    """Learning-rate factor at ``step`` of ``steps``: linear from 1/w to 1 over the first w = warmup*steps
    steps, then a half cosine from 1 down to 0 at the last step."""
    w = max(1, round(warmup * steps))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def fit_warmup_cosine(params: Iterable[torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int, *,
                      lr: float, warmup: float = 0.05, log_every: int = 10, clip_norm: float | None = None,
                      desc: str | None = None) -> History:
    """Adam on ``loss_fn(step)`` for ``steps`` steps at ``lr * warmup_cosine(step)``; returns the logged losses.

    ``clip_norm`` clips the global gradient norm (it couples models batched into one loss: use it per model)."""
    steps = check_int("steps", steps, min=1)
    lr = check_float("lr", lr, min=0.0, open_min=True)
    warmup = check_float("warmup", warmup, min=0.0, max=0.5)
    return fit(params, loss_fn, steps, lr=lr, log_every=log_every, clip_norm=clip_norm, desc=desc,
               schedule=lambda step: warmup_cosine(step, steps, warmup))
