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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_runs_on_cuda():
    task = _task(0, "cuda")
    assert task.x.device.type == "cuda"
    out = diagonal.selection(task, alpha=0.1, eta=0.03, steps=500, sgd_runs=2,
                             generator=torch.Generator(device="cuda").manual_seed(2))
    assert len(out["trace"]) == 3
