import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.implicit import diagonal as D

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def data(seed=0, n=8, d=20, s=2, device="cpu", signs="random"):
    return D.sparse_regression(n, d, s, torch.Generator(device).manual_seed(seed), n_test=10, signs=signs)


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ data
def test_sparse_regression_has_k_signed_entries_and_noiseless_labels():
    t = data(0, n=12, d=30, s=4)
    assert int((t.beta_star != 0).sum()) == 4 and set(t.beta_star[t.beta_star != 0].tolist()) <= {-1.0, 1.0}
    assert torch.allclose(t.y, t.x @ t.beta_star) and torch.allclose(t.y_test, t.x_test @ t.beta_star)
    p = data(0, n=12, d=30, s=4, signs="positive")
    assert set(p.beta_star[p.beta_star != 0].tolist()) == {1.0}
    with pytest.raises(ValueError, match="signs"):
        data(signs="negative")
    with pytest.raises(ValueError, match="'k'"):
        data(s=21)


def test_sparse_regression_is_deterministic_given_the_generator():
    a, b = data(5), data(5)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("x", "y", "x_test", "beta_star"))


# ------------------------------------------------------------------------------ curvature
def test_trace_and_per_sample_hessians_match_the_autograd_hessian_at_interpolation():
    g = torch.Generator().manual_seed(0)
    n, d = 6, 4
    u, v = torch.rand(d, generator=g, dtype=torch.float64), torch.rand(d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ (u * u - v * v)                                       # (u, v) interpolates
    w = torch.cat([u, v])
    H = torch.autograd.functional.hessian(
        lambda w: 0.5 * ((x @ (w[:d] ** 2 - w[d:] ** 2) - y) ** 2).mean(), w)
    Hi = D.per_sample_hessians(u, v, x)
    assert Hi.shape == (n, 2 * d, 2 * d)
    assert torch.allclose(Hi.mean(0), H, atol=1e-12)
    assert float(D.trace_hessian(u, v, x)) == pytest.approx(float(torch.trace(H)), rel=1e-12)


# ------------------------------------------------------------------------------ (S)GD
def test_batch_weights_pick_B_samples_without_replacement():
    g = torch.Generator().manual_seed(1)
    w = D.batch_weights(torch.tensor([10, 3, 1]), 10, g)
    assert torch.allclose(w.sum(1), torch.ones(3, dtype=w.dtype))
    assert [(row > 0).sum().item() for row in w] == [10, 3, 1]
    assert torch.allclose(D.batch_weights(torch.tensor([4]), 4, None), torch.full((1, 4), 0.25, dtype=w.dtype))
    with pytest.raises(ValueError, match="generator"):
        D.batch_weights(torch.tensor([2]), 4, None)


def test_gd_step_is_a_gradient_step_in_u_and_v():
    t = data(3)
    x, y = t.x, t.y
    eta = float(D.flow_step_sizes(x, y, [0.5], 0.1)[0])
    run = D.diagonal_gd(x, y, [0.5], 1, step_scale=0.1, log_every=1)
    n = x.shape[0]
    u = torch.full((x.shape[1],), 0.5, dtype=x.dtype, requires_grad=True)
    v = torch.full((x.shape[1],), 0.5, dtype=x.dtype, requires_grad=True)
    loss = ((x @ (u ** 2 - v ** 2) - y) ** 2).sum() / (2 * n)
    gu, gv = torch.autograd.grad(loss, (u, v))
    L = float(torch.linalg.eigvalsh(x.T @ x / n)[-1])
    assert eta == pytest.approx(0.1 / (4 * L * max(0.25, float(D.min_l1_solution(x, y).abs().max()))))
    beta1 = (u - eta * gu) ** 2 - (v - eta * gv) ** 2
    assert torch.allclose(run.beta[0], beta1.detach(), atol=1e-12)
    assert run.steps.tolist() == [0, 1] and run.loss.shape == (1, 2) and run.path.shape == (1, 2, x.shape[1])


def test_sgd_step_with_a_batch_is_a_gradient_step_on_the_batch_loss():
    t = data(4, n=10)
    R, d = 1, t.x.shape[1]
    u = torch.full((R, d), 0.3, dtype=t.x.dtype, requires_grad=True)
    v = torch.full((R, d), 0.2, dtype=t.x.dtype, requires_grad=True)
    batch = torch.tensor([1, 4, 7])
    w = torch.zeros(R, 10, dtype=t.x.dtype)
    w[0, batch] = 1 / 3
    loss = 0.5 * ((t.x[batch] @ (u[0] ** 2 - v[0] ** 2) - t.y[batch]) ** 2).mean()
    gu, gv = torch.autograd.grad(loss, (u, v))
    u1, v1 = D.sgd_step(u.detach(), v.detach(), t.x, t.y, 0.1, w)
    assert torch.allclose(u1, u.detach() - 0.1 * gu) and torch.allclose(v1, v.detach() - 0.1 * gv)


def test_train_is_deterministic_and_gd_interpolates():
    t = data(1, n=10, d=20, signs="positive")
    kw = dict(alpha=0.1, eta=0.05, batch_sizes=[10, 1], steps=1500)
    a = D.train(t.x, t.y, generator=torch.Generator().manual_seed(2), **kw)
    b = D.train(t.x, t.y, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.beta, b.beta)
    s = a.summary(t)
    assert float(s["train_loss"][0]) < 1e-4
    assert set(s) == {"beta", "l1", "trace", "train_loss", "test_error"}


def test_train_takes_per_run_alpha_and_eta_and_names_bad_values():
    t = data(2)
    run = D.train(t.x, t.y, alpha=[0.1, 1.0], eta=[0.01, 0.002], steps=5)
    assert run.beta.shape == (2, t.x.shape[1]) and run.alphas == [0.1, 1.0]
    with pytest.raises(ValueError, match="'eta'"):
        D.train(t.x, t.y, alpha=0.1, eta=-1.0, steps=1)
    with pytest.raises(ValueError, match="batch_sizes"):
        D.train(t.x, t.y, alpha=0.1, eta=0.1, steps=1, batch_sizes=[9])
    with pytest.raises(ValueError, match="'eta'.*one per run"):
        D.train(t.x, t.y, alpha=[0.1, 0.2, 0.3], eta=[0.1, 0.2], steps=1)


def test_gd_reaches_the_q_alpha_interpolant():
    t = data(4)
    run = D.diagonal_gd(t.x, t.y, [1.0], 3000, step_scale=0.3, log_every=3000)
    assert rel(run.beta[0], D.q_alpha_minimizer(t.x, t.y, 1.0)) < 1e-3


# ------------------------------------------------------------------------------ reference interpolants
@settings(max_examples=20, deadline=None)
@given(z=st.floats(-50, 50))
def test_q_is_the_antiderivative_of_arcsinh_half(z):
    t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(D.q(t), t)
    assert float(D.q(torch.tensor(0.0))) == 0.0
    assert abs(float(grad) - float(torch.asinh(t.detach() / 2))) < 1e-9


@pytest.mark.parametrize("alpha", [1e-2, 0.3, 3.0])
def test_q_alpha_minimizer_interpolates_and_is_stationary(alpha):
    t = data()
    beta = D.q_alpha_minimizer(t.x, t.y, alpha)
    assert torch.allclose(t.x @ beta, t.y, atol=1e-8)
    # KKT: grad Q_alpha = arcsinh(beta / 2 alpha^2) lies in the row space of X
    g = torch.asinh(beta / (2 * alpha ** 2))
    proj = t.x.T @ torch.linalg.lstsq(t.x.T, g.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(proj, g, atol=1e-7)


def test_q_alpha_minimizer_tends_to_l1_and_to_l2():
    t = data(1)
    assert rel(D.q_alpha_minimizer(t.x, t.y, 1e-6), D.min_l1_solution(t.x, t.y)) < 1e-3
    assert rel(D.q_alpha_minimizer(t.x, t.y, 1e3), D.min_norm_solution(t.x, t.y)) < 1e-6


def test_lp_and_pinv_interpolate():
    t = data(2)
    l1, l2 = D.min_l1_solution(t.x, t.y), D.min_norm_solution(t.x, t.y)
    assert torch.allclose(t.x @ l1, t.y, atol=1e-8) and torch.allclose(t.x @ l2, t.y, atol=1e-10)
    assert l1.abs().sum() <= l2.abs().sum() + 1e-9 and l2.norm() <= l1.norm() + 1e-9


def test_bad_alpha_is_named():
    t = data()
    with pytest.raises(ValueError, match="alpha"):
        D.q_alpha_minimizer(t.x, t.y, -1.0)


# ------------------------------------------------------------------------------ devices
@cuda
def test_everything_stays_on_the_generator_device():
    t = data(0, device="cuda")
    assert all(getattr(t, f).is_cuda for f in ("x", "y", "x_test", "y_test", "beta_star"))
    run = D.train(t.x, t.y, alpha=[0.1, 0.1], eta=0.01, batch_sizes=[8, 2], steps=20,
                  generator=torch.Generator("cuda").manual_seed(0), log_every=5)
    assert run.beta.is_cuda and run.loss.is_cuda and all(v.is_cuda for v in run.summary(t).values())
    assert D.min_l1_solution(t.x, t.y).is_cuda and D.q_alpha_minimizer(t.x, t.y, 0.5).is_cuda
    assert D.diagonal_gd(t.x, t.y, [0.1, 1.0], 10).beta.is_cuda
    assert D.per_sample_hessians(run.u[0], run.v[0], t.x).is_cuda


# ------------------------------------------------------------------------------ saddle to saddle
def test_saddle_path_starts_at_the_first_activation_and_ends_at_the_l1_interpolant():
    t = data(6, n=15, d=30, s=3)
    path = D.saddle_to_saddle(t.x, t.y)
    g0 = t.x.T @ t.y / t.x.shape[0]                        # -grad L(0)
    assert float(path.times[0]) == 0.0 and float(path.saddles[0].abs().max()) == 0.0
    assert math.isclose(float(path.times[1]), 0.5 / float(g0.abs().max()), rel_tol=1e-9)
    assert rel(path.saddles[-1], D.min_l1_solution(t.x, t.y)) < 1e-6
    assert bool((path.times.diff() > 0).all())


def test_every_saddle_is_the_sign_constrained_least_squares_fit_of_its_support():
    t = data(7, n=15, d=30, s=3)
    path = D.saddle_to_saddle(t.x, t.y)
    n = t.x.shape[0]
    for beta, s in zip(path.saddles[1:], path.signs[1:]):
        g = t.x.T @ (t.x @ beta - t.y) / n
        active = beta != 0
        assert torch.allclose(g[active], torch.zeros_like(g[active]), atol=1e-9)  # stationary on the support
        assert bool((beta[active] * s[active] > 0).all())                       # signs of s
        assert bool((s.abs() <= 0.5 + 1e-12).all())


def test_saddle_path_lookup_and_tracking_of_a_small_init_run():
    t = data(8, n=20, d=40, s=2)
    path = D.saddle_to_saddle(t.x, t.y)
    assert torch.equal(path.at(path.times[1:2] + 1e-9)[0], path.saddles[1])
    L = float(torch.linalg.eigvalsh(t.x.T @ t.x / 20)[-1])
    eta = 0.02 / (L * max(1.0, float(path.saddles[-1].abs().max())))
    steps = int(1.3 * float(path.times[-1]) * math.log(1e16) / eta)
    run = D.train(t.x, t.y, alpha=[1e-16, 0.3], eta=eta, steps=steps, log_every=max(1, steps // 2000))
    track = D.saddle_tracking(run, path)
    assert float(track["time_error"][0]) < 0.05 and float(track["saddle_error"][0]) < 0.05
    assert float(track["saddle_error"][1]) > 0.1


@cuda
def test_saddle_path_on_the_device():
    t = data(0, device="cuda")
    path = D.saddle_to_saddle(t.x, t.y)
    assert path.saddles.is_cuda and path.at(path.times).is_cuda
