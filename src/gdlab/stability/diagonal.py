"""Wu & Su's stability selection on diagonal linear networks (the network is
:mod:`gdlab.implicit.diagonal`, shared with Chapter 2).

Wu & Su 2023 (Sec. 3 and 4): a minimum that is linearly stable for SGD at step ``eta`` and batch
size 1 has ``Tr H <= 2 / eta``; on a diagonal network ``Tr H`` is about ``4 ||beta||_1``, so SGD's
stable minima are sparse. The prediction has teeth only inside the *window* of steps where GD's
minimum no longer holds SGD but still holds GD (below ``2 / lambda_max`` there): SGD must then
end at another minimum, one that holds it. Whether a minimum holds SGD is decided by the sign of
the almost-sure growth rate of SGD linearized there (Chemnitz & Engel 2024); the mean-square
critical step ``eta*_SGD`` (Wu & Su's notion) is a little below that edge, so the window starts a
little above ``eta*_SGD(GD's minimum)``. Below the window both are stable there, and SGD's
remaining preference for sparse solutions is the bias of its gradient noise (Pesme,
Pillaud-Vivien & Flammarion 2021).

:func:`selection` trains GD and several SGD runs at one step size and measures the critical
step ``eta*`` (the exact mean-square threshold, :func:`gdlab.stability.sgd_operator.critical_step`)
at every endpoint; :func:`almost_sure_rates` measures there whether SGD can stay, which mean-square
stability decides only in one direction (Chemnitz & Engel 2024): SGD may settle at a minimum just
past its mean-square threshold.
"""
from __future__ import annotations

import math

import torch

from gdlab.implicit import diagonal as net
from gdlab.runtime import check_float, check_int
from gdlab.stability import sgd_operator

__all__ = ["critical_steps", "almost_sure_rates", "selection"]


def _at_minima(run: net.DiagonalRun, x: torch.Tensor, y: torch.Tensor, max_loss: float, measure, missing):
    """``measure(per-sample Hessians)`` at each run's endpoint; ``missing`` where the run did not
    reach a training loss below ``max_loss`` (it diverged, or its endpoint is not a minimum)."""
    losses = net.train_loss(run.u, run.v, x, y)
    return [measure(net.per_sample_hessians(run.u[r], run.v[r], x))
            if bool(torch.isfinite(run.u[r]).all()) and float(losses[r]) < max_loss else missing
            for r in range(run.u.shape[0])]


def critical_steps(run: net.DiagonalRun, x: torch.Tensor, y: torch.Tensor, *, B: int = 1,
                   max_loss: float = 1e-4) -> list[float]:
    """SGD's exact critical step at batch size ``B`` at each run's endpoint (NaN where the run did
    not reach a training loss below ``max_loss``, so that the endpoint is not a minimum)."""
    return _at_minima(run, x, y, max_loss, lambda H: sgd_operator.critical_step(H, B), math.nan)


def almost_sure_rates(run: net.DiagonalRun, x: torch.Tensor, y: torch.Tensor, eta: float, *, steps: int,
                      runs: int, generator: torch.Generator, B: int = 1,
                      max_loss: float = 1e-4) -> list[tuple[float, float]]:
    """At each run's endpoint, the almost-sure growth rate of SGD linearized there, at step ``eta``
    and batch size ``B``, with its standard error
    (:func:`gdlab.stability.sgd_operator.lyapunov_exponent`, a quarter of the steps as burn-in):
    negative where SGD can stay, even if it is unstable in mean square. (NaN, NaN) where the run
    did not reach a training loss below ``max_loss`` (it diverged, or its endpoint is not a
    minimum), as in :func:`critical_steps`."""
    return _at_minima(run, x, y, max_loss,
                      lambda H: sgd_operator.lyapunov_exponent(H, B, eta, steps=steps, runs=runs,
                                                               generator=generator, burn_in=steps // 4),
                      (math.nan, math.nan))


def selection(task: net.SparseRegression, *, alpha: float, eta: float, steps: int, sgd_runs: int,
              generator: torch.Generator) -> dict:
    """GD and ``sgd_runs`` SGD runs (B = 1) from ``u = v = alpha`` at step ``eta``.

    Returns ``eta``, ``gd_critical`` (eta* at GD's minimum), ``gd_sharpness_limit``
    (2 / lambda_max there), ``sgd_critical`` (list), ``gain`` (SGD's eta* over GD's, per run) and,
    for GD then each SGD run, ``trace``, ``l1`` and ``test_error`` as lists, and ``run`` (the
    :class:`~gdlab.implicit.diagonal.DiagonalRun`, GD first)."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    sgd_runs = check_int("sgd_runs", sgd_runs, min=1)
    n = task.x.shape[0]
    run = net.train(task.x, task.y, alpha=alpha, eta=eta, steps=steps, batch_sizes=[n] + [1] * sgd_runs,
                    generator=generator)
    crit = critical_steps(run, task.x, task.y)
    H_gd = net.per_sample_hessians(run.u[0], run.v[0], task.x)
    s = run.summary(task)
    as_list = lambda t: [float(v) for v in t.detach().cpu()]  # noqa: E731
    return {"eta": eta, "gd_critical": crit[0],
            "gd_sharpness_limit": sgd_operator.stability_bounds(H_gd, n)["sharpness"],
            "sgd_critical": crit[1:], "gain": [c / crit[0] for c in crit[1:]],
            "trace": as_list(s["trace"]), "l1": as_list(s["l1"]), "test_error": as_list(s["test_error"]),
            "run": run}
