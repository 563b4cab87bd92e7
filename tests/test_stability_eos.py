"""Tests for gdlab.stability.eos: GD with sharpness tracking, gradient flow and the summaries."""
import copy

import pytest
import torch

from gdlab import hessian
from gdlab.stability import eos

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small(generator=None):
    g = generator or torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, device=g.device)
    y = torch.randint(0, 3, (30,), generator=g, device=g.device)
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
        opt.zero_grad()
        eos.cohen_mse(ref(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    assert traj.sharpness_steps == [0, 2, 3] and len(traj.loss) == 4
    assert traj.times == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_warm_started_sharpness_matches_a_dense_eigendecomposition():
    model, x, y = small()
    model = model.double()
    x = x.double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    def loss_of(w):
        pieces = torch.split(w, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return eos.cohen_mse(torch.func.functional_call(model, params, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat)
    top = float(torch.linalg.eigvalsh(dense)[-1])
    sharp = eos._Sharpness(model, x, y, torch.Generator().manual_seed(1), tol=1e-8)
    assert sharp() == pytest.approx(top, rel=1e-6)
    assert sharp() == pytest.approx(top, rel=1e-6)       # warm start from its own vector


def test_gradient_flow_decreases_loss_and_tracks_small_step_gd():
    model, x, y = small()
    gd = copy.deepcopy(model)
    flow = eos.gradient_flow(model, x, y, time=1.0, dt=0.1, sharpness_every=100)
    eos.train_gd(gd, x, y, eta=0.001, steps=1000, sharpness_every=10_000)
    assert flow.loss[-1] < flow.loss[0]
    for a, b in zip(model.parameters(), gd.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)


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


def test_edge_of_stability_summary():
    t = eos.Trajectory(eta=1.0, sharpness_steps=[0, 1, 2, 3, 4], sharpness=[1.0, 1.5, 2.0, 1.9, 2.2],
                       sharpness_times=[0.0, 1.0, 2.0, 3.0, 4.0])
    s = eos.edge_of_stability_summary(t)
    assert s["reached_time"] == 2.0 and s["median"] == pytest.approx(1.0)
    assert s["sharpening"] == pytest.approx(2.0) and s["count"] == 3
    assert s["fraction_in_band"] == pytest.approx(1.0)
    # against another step size, and cut at a time
    s2 = eos.edge_of_stability_summary(t, 1.2, until=3.0)     # ratios 0.6, 0.9, 1.2, 1.14 up to t = 3
    assert s2["reached_time"] == 2.0 and s2["count"] == 2 and s2["median"] == pytest.approx(1.17)
    never = eos.edge_of_stability_summary(t, 0.1)
    assert never["count"] == 0 and never["median"] != never["median"]


def test_loss_summary_counts_increases_after_a_time():
    t = eos.Trajectory(eta=1.0, loss=[5.0, 4.0, 4.5, 3.0, 3.5, 2.0], times=[0, 1, 2, 3, 4, 5])
    s = eos.loss_summary(t, since=1.0)
    assert s["increase_fraction"] == pytest.approx(2 / 4) and s["decrease"] == pytest.approx(0.5)
    assert eos.loss_summary(t, since=1.0, until=3.0)["decrease"] == pytest.approx(0.75)


def test_compare_step_sizes_runs_every_eta_for_the_same_time():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    runs, flow = eos.compare_step_sizes([4, 6, 3], x, y, [0.1, 0.2], time=1.0, flow_dt=0.1,
                                        sharpness_every=5, generator=torch.Generator().manual_seed(1))
    assert [len(r.loss) for r in runs] == [11, 6]
    assert runs[0].times[-1] == pytest.approx(1.0) and runs[1].times[-1] == pytest.approx(1.0)
    assert runs[0].sharpness_times[:2] == pytest.approx([0.0, 0.5]) and flow.times[-1] == pytest.approx(1.0)


@needs_cuda
def test_cuda_generator_builds_the_network_on_cuda_and_matches_cpu():
    g = torch.Generator(device="cuda").manual_seed(3)
    model, x, y = small(g)
    assert next(model.parameters()).device.type == "cuda" and x.device.type == "cuda"
    traj = eos.train_gd(model, x, y, eta=0.1, steps=5, sharpness_every=2, generator=g)
    assert len(traj.sharpness) == 4
    runs, flow = eos.compare_step_sizes([4, 6, 3], x, y, [0.1, 0.2], time=0.4, flow_dt=0.1,
                                        sharpness_every=2, generator=torch.Generator(device="cuda").manual_seed(1))
    assert len(runs) == 2 and flow.times[-1] == pytest.approx(0.4)
    top, _ = hessian.top_eigenpairs(model, eos.cohen_mse, (x, y), k=1, generator=g)
    assert top.device.type == "cuda"
