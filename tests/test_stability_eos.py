"""Tests for gdlab.stability.eos."""
import copy

import pytest
import torch

from gdlab.stability import eos


def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    return eos.tanh_mlp([4, 8, 3], g), x, y


def test_cohen_mse_is_half_sum_over_outputs():
    out = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    y = torch.tensor([0, 1])
    assert float(eos.cohen_mse(out, y)) == pytest.approx(0.5 * (0 + 0.25 + 0.25) / 2)


def test_gd_step_is_plain_gd_and_sharpness_logged():
    model, x, y = small()
    ref = copy.deepcopy(model)
    traj = eos.train_gd(model, x, y, eta=0.1, steps=3, sharpness_every=2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad(); eos.cohen_mse(ref(x), y).backward(); opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    assert traj.sharpness_steps == [0, 2, 3] and len(traj.loss) == 4


def test_gradient_flow_decreases_loss_and_tracks_small_step_gd():
    model, x, y = small()
    gd = copy.deepcopy(model)
    flow = eos.gradient_flow(model, x, y, time=1.0, dt=0.1, sharpness_every=100)
    eos.train_gd(gd, x, y, eta=0.001, steps=1000, sharpness_every=10_000)
    assert flow.loss[-1] < flow.loss[0]
    for a, b in zip(model.parameters(), gd.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)


def test_summary():
    t = eos.Trajectory(eta=1.0, sharpness_steps=[0, 1, 2, 3], sharpness=[1.0, 1.5, 2.0, 1.9])
    s = eos.edge_of_stability_summary(t)
    assert s["reached_step"] == 2 and s["after_min"] == pytest.approx(0.95) and s["sharpening"] == pytest.approx(2.0)


def test_gd_logs_sharpness_times():
    model, x, y = small()
    traj = eos.train_gd(model, x, y, eta=0.25, steps=4, sharpness_every=2)
    assert traj.sharpness_times == [0.0, 0.5, 1.0]


def test_gradient_flow_step_shrinks_with_sharpness():
    """Cohen et al.'s rule: RK4 step = min(dt, alpha / sharpness); the flow ends exactly at `time`."""
    model, x, y = small()
    flow = eos.gradient_flow(model, x, y, time=0.5, dt=10.0, alpha=1.0, sharpness_every=1)
    t = torch.tensor(flow.sharpness_times, dtype=torch.float64)
    s = torch.tensor(flow.sharpness, dtype=torch.float64)
    assert float(t[-1]) == pytest.approx(0.5) and bool((t[1:] > t[:-1]).all())
    assert bool(((t[1:] - t[:-1]) <= 1.0 / s[:-1] + 1e-9).all())
    assert flow.loss[-1] < flow.loss[0]
    with pytest.raises(ValueError, match="'alpha'"):
        eos.gradient_flow(model, x, y, time=0.5, dt=0.1, alpha=3.0)
