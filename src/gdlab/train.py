"""Shared training loops: one optimizer loop with clipping, logging and progress.

The loop is generic over *what* a step computes: the caller passes ``loss_fn(step)``,
which draws its own batch (fresh tasks, a minibatch, the full batch) and returns a
scalar loss. Batched models (many networks as one tensor program) use the same loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from gdlab.runtime import check_choice, check_float, check_int, progress


__all__ = ["History", "make_optimizer", "fit"]


@dataclass
class History:
    """Logged values: ``steps[i]`` is the step at which ``loss[i]`` was recorded."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def last(self, k: int = 1) -> float:
        """Mean of the last ``k`` logged losses."""
        tail = self.loss[-k:]
        return sum(tail) / len(tail)


def make_optimizer(params: Iterable[torch.Tensor], name: str, lr: float, **kw) -> torch.optim.Optimizer:
    """``"adam"``, ``"sgd"`` (optionally ``momentum=``) or ``"adamw"``."""
    check_choice("optimizer", name, ("adam", "sgd", "adamw"))
    lr = check_float("lr", lr, min=0.0, open_min=True)
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]
    return cls(list(params), lr=lr, **kw)


def fit(params: Iterable[torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int, *,
        optimizer: str = "adam", lr: float = 1e-3, clip_norm: float | None = None, log_every: int = 10,
        desc: str | None = None, schedule: Callable[[int], float] | None = None, **opt_kw) -> History:
    """Minimize ``loss_fn(step)`` over ``params`` for ``steps`` steps.

    ``clip_norm`` clips the global gradient norm (von Oswald et al. 2022 train with it).
    ``schedule(step)``, if given, is the learning-rate factor at each step (the step's rate is
    ``lr * schedule(step)``), e.g. a warm-up and a decay.
    Returns the loss logged every ``log_every`` steps (and at the last step).
    """
    params = [p for p in params]
    steps = check_int("steps", steps, min=1)
    opt = make_optimizer(params, optimizer, lr, **opt_kw)
    hist = History()
    for step in progress(range(steps), desc=desc):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr * schedule(step)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            hist.steps.append(step)
            hist.loss.append(float(loss.detach()))
    return hist
