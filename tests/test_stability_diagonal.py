"""Tests for gdlab.stability.diagonal: Wu & Su's stability selection on diagonal linear networks."""
import math

import pytest
import torch

from gdlab.implicit import diagonal as net
from gdlab.stability import diagonal, sgd_operator


def _task(seed=0, device="cpu"):
    return net.sparse_regression(10, 20, 2, torch.Generator(device=device).manual_seed(seed), signs="positive")


def test_critical_steps_match_the_operator_at_each_endpoint_and_skip_non_minima():
    task = _task()
    run = net.train(task.x, task.y, alpha=0.1, eta=0.05, steps=3000)
    crit = diagonal.critical_steps(run, task.x, task.y)
    direct = sgd_operator.critical_step(net.per_sample_hessians(run.u[0], run.v[0], task.x), 1)
    assert crit[0] == pytest.approx(direct, rel=1e-12)
    early = net.train(task.x, task.y, alpha=0.1, eta=0.05, steps=2)
    assert math.isnan(diagonal.critical_steps(early, task.x, task.y)[0])
    assert math.isfinite(diagonal.critical_steps(early, task.x, task.y, max_loss=math.inf)[0])


def test_selection_returns_gd_then_sgd_and_gains():
    task = _task(1)
    out = diagonal.selection(task, alpha=0.1, eta=0.03, steps=3000, sgd_runs=2,
                             generator=torch.Generator().manual_seed(2))
    assert len(out["trace"]) == 3 and len(out["gain"]) == 2 and len(out["sgd_critical"]) == 2
    assert out["gain"][0] == pytest.approx(out["sgd_critical"][0] / out["gd_critical"])
    assert out["gd_critical"] < out["gd_sharpness_limit"]       # SGD's threshold lies below GD's


def test_almost_sure_rates_separate_a_minimum_sgd_leaves_from_one_it_keeps():
    """At 1.5 times SGD's mean-square critical step at GD's minimum, SGD cannot stay there (positive
    rate) and stays where it converged (negative rate): the runs SGD itself ends at."""
    task = net.sparse_regression(25, 50, 3, torch.Generator().manual_seed(1), signs="positive")
    gd = net.train(task.x, task.y, alpha=0.3, eta=0.005, steps=3000)
    eta = 1.5 * diagonal.critical_steps(gd, task.x, task.y, max_loss=math.inf)[0]
    out = diagonal.selection(task, alpha=0.3, eta=eta, steps=4000, sgd_runs=2,
                             generator=torch.Generator().manual_seed(2))
    assert isinstance(out["run"], net.DiagonalRun)
    rates = diagonal.almost_sure_rates(out["run"], task.x, task.y, eta, steps=1000, runs=50,
                                       generator=torch.Generator().manual_seed(3))
    (gd_rate, gd_se), sgd = rates[0], rates[1:]
    assert gd_rate - 3 * gd_se > 0
    assert all(r + 3 * se < 0 for r, se in sgd)
    diverged = net.DiagonalRun(*[t[:1] for t in (out["run"].alpha, out["run"].eta, out["run"].batch_size)],
                               out["run"].u[:1] * math.nan, out["run"].v[:1], out["run"].beta[:1],
                               out["run"].steps, out["run"].loss[:1], out["run"].path[:1])
    assert all(math.isnan(v) for v in diagonal.almost_sure_rates(diverged, task.x, task.y, eta, steps=10, runs=2,
                                                                 generator=torch.Generator().manual_seed(3))[0])
    early = net.train(task.x, task.y, alpha=0.3, eta=0.005, steps=2)             # finite, not a minimum
    assert all(math.isnan(v) for v in diagonal.almost_sure_rates(early, task.x, task.y, eta, steps=10, runs=2,
                                                                 generator=torch.Generator().manual_seed(3))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_runs_on_cuda():
    task = _task(0, "cuda")
    assert task.x.device.type == "cuda"
    out = diagonal.selection(task, alpha=0.1, eta=0.03, steps=500, sgd_runs=2,
                             generator=torch.Generator(device="cuda").manual_seed(2))
    assert len(out["trace"]) == 3
    rates = diagonal.almost_sure_rates(out["run"], task.x, task.y, 0.03, steps=50, runs=4, max_loss=math.inf,
                                       generator=torch.Generator(device="cuda").manual_seed(3))
    assert len(rates) == 3 and all(math.isfinite(r) for r, _ in rates)
