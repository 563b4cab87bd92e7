import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.implicit import sensing as S


def problem(seed=0, d=5, m=40, symmetric=True):
    return S.sensing_problem(d, (1.0, 0.5), m, torch.Generator().manual_seed(seed), symmetric=symmetric)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 6), m=st.integers(1, 30))
def test_adjoint_is_the_adjoint_of_measure(seed, d, m):
    g = torch.Generator().manual_seed(seed)
    A = S.gaussian_measurements(m, d, g)
    X, r = torch.randn(d, d, generator=g, dtype=A.dtype), torch.randn(m, generator=g, dtype=A.dtype)
    assert torch.allclose((S.adjoint(A, r) * X).sum(), r @ S.measure(A, X))


def test_measurements_are_isotropic_on_symmetric_matrices():
    g = torch.Generator().manual_seed(0)
    A = S.gaussian_measurements(40_000, 3, g)
    M = torch.tensor([[1.0, 0.5, 0.0], [0.5, -1.0, 0.2], [0.0, 0.2, 0.3]], dtype=A.dtype)
    est = S.adjoint(A, S.measure(A, M)) / A.shape[0]  # E[<A, M> A] = M
    assert torch.allclose(est, M, atol=0.03)


def test_target_has_the_requested_spectrum():
    p = problem(d=6)
    eig = torch.linalg.eigvalsh(p.X_star).flip(0)
    assert torch.allclose(eig[:2], torch.tensor([1.0, 0.5], dtype=eig.dtype))
    assert eig[2:].abs().max() < 1e-12
    assert math.isclose(p.best_rank_error(1), 0.5)


def sym_loss(p, U):
    r = S.measure(p.A, U @ U.T) - p.y
    return (r * r).sum() / (4 * p.m)


def test_symmetric_step_is_a_gradient_step():
    p, eta, g = problem(), 0.03, torch.Generator().manual_seed(1)
    run = S.symmetric_gd(p, [0.5], 3, eta, 1, g)
    U0 = 0.5 * torch.randn(p.d, 3, generator=torch.Generator().manual_seed(1), dtype=p.A.dtype) / math.sqrt(p.d)
    U0.requires_grad_(True)
    (grad,) = torch.autograd.grad(sym_loss(p, U0), U0)
    assert torch.allclose(run.factors[0][0], (U0 - eta * grad).detach(), atol=1e-12)


def test_asymmetric_step_is_a_gradient_step():
    p, eta = problem(symmetric=False), 0.03
    run = S.asymmetric_gd(p, [0.5], 3, eta, 1, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    F0 = 0.5 * torch.randn(p.d, 3, generator=g, dtype=p.A.dtype) / math.sqrt(p.d)
    G0 = 0.5 / 3 * torch.randn(p.d, 3, generator=g, dtype=p.A.dtype) / math.sqrt(p.d)
    F0.requires_grad_(True)
    G0.requires_grad_(True)
    r = S.measure(p.A, F0 @ G0.T) - p.y
    gF, gG = torch.autograd.grad((r * r).sum() / (2 * p.m), (F0, G0))
    assert torch.allclose(run.factors[0][0], (F0 - eta * gF).detach(), atol=1e-12)
    assert torch.allclose(run.factors[1][0], (G0 - eta * gG).detach(), atol=1e-12)


def test_batched_alphas_equal_separate_runs():
    p = problem()
    both = S.symmetric_gd(p, [0.1, 0.01], 4, 0.05, 30, torch.Generator().manual_seed(2), log_every=10)
    one = S.symmetric_gd(p, [0.01], 4, 0.05, 30, torch.Generator().manual_seed(2), log_every=10)
    assert torch.allclose(both.error[1], one.error[0])
    assert torch.allclose(both.eigenvalues[1], one.eigenvalues[0])


def test_stage_time_formula_solves_the_linearized_growth():
    alpha, sigma, eta = 1e-4, 0.5, 0.05
    t = S.stage_time_formula(alpha, sigma, eta)
    assert math.isclose(alpha ** 2 * (1 + eta * sigma) ** (2 * t), sigma / 2, rel_tol=1e-12)


def test_stage_times_find_first_crossing():
    run = S.SensingRun([1.0], torch.arange(4), torch.zeros(1, 4),
                       torch.tensor([[[0.0, 0.0], [0.6, 0.0], [1.0, 0.3], [1.0, 0.6]]]), ())
    times = S.stage_times(run, [1.0, 0.5])
    assert times.tolist() == [[1.0, 2.0]]
    assert torch.isnan(S.stage_times(run, [1.0, 5.0])[0, 1])


def test_slopes_of_exact_power_and_exponential():
    t = torch.arange(1, 1001)
    vals = torch.stack([3.0 / t.double(), torch.exp(-0.01 * t.double())])
    assert torch.allclose(S.loglog_slope(t, vals[:1], 10), torch.tensor([-1.0], dtype=torch.float64))
    assert torch.allclose(S.linear_rate(t, vals[1:], 10), torch.tensor([-0.01], dtype=torch.float64))


def test_small_init_learns_the_largest_mode_first():
    p = S.sensing_problem(8, (1.0, 0.25), 200, torch.Generator().manual_seed(3))
    run = S.symmetric_gd(p, [1e-4], 8, 0.1, 800, torch.Generator().manual_seed(3))
    t = S.stage_times(run, p.sigma)[0]
    assert t[0] < t[1]


@pytest.mark.parametrize("kwargs, name", [(dict(eta=-1.0), "eta"), (dict(k=0), "k"), (dict(alphas=[0.0]), "alphas[0]")])
def test_bad_parameters_are_named(kwargs, name):
    args = dict(alphas=[0.1], k=2, eta=0.1, steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(name)):
        S.symmetric_gd(problem(), generator=torch.Generator(), **args)


def test_late_rate_ratio_tells_linear_from_polynomial():
    t = torch.arange(0, 4001, 10)
    vals = torch.stack([torch.exp(-0.01 * t.double()), 1.0 / (1.0 + t.double())])
    ratio = S.late_rate_ratio(t, vals)
    assert abs(float(ratio[0]) - 1) < 1e-6  # linear; its window ends where exp(-0.01 t) reaches 1e-10
    assert 0.6 < float(ratio[1]) < 0.8


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_describe_scores_the_target_and_zero():
    p = problem(d=6, m=30)
    s = S.describe(p, torch.stack([p.X_star, torch.zeros_like(p.X_star)]))
    assert float(s.residual[0]) < 1e-12 and float(s.error[0]) < 1e-12 and int(s.rank[0]) == 2
    assert math.isclose(float(s.residual[1]), 1.0) and math.isclose(float(s.error[1]), 1.0)
    assert math.isclose(float(s.nuclear[0]), 1.5, rel_tol=1e-12)


def test_min_nuclear_norm_interpolates_is_psd_and_beats_the_target():
    p = problem(seed=4, d=6, m=12)                       # 12 < 21 unknowns: many interpolants
    X = S.min_nuclear_norm_psd(p)
    assert torch.allclose(S.measure(p.A, X), p.y, atol=1e-6)
    assert float(torch.linalg.eigvalsh(X).min()) > -1e-7
    assert float(torch.trace(X)) <= float(torch.trace(p.X_star)) + 1e-6


def test_min_nuclear_norm_recovers_the_target_with_enough_measurements():
    p = problem(seed=5, d=5, m=60)
    assert float(S.describe(p, S.min_nuclear_norm_psd(p)).error) < 1e-5


def test_best_rank_s_fit_is_a_stationary_rank_s_matrix():
    p = problem(seed=6, d=6, m=80)
    X = S.best_rank_s_fit(p, 1, steps=3000)
    assert int(S.describe(p, X, rtol=1e-8).rank) == 1
    W = torch.linalg.eigh(X)
    w = W.eigenvectors[:, -1:] * W.eigenvalues[-1:].sqrt()
    grad = S.adjoint(p.A, S.measure(p.A, w @ w.T) - p.y) / p.m @ w
    assert float(grad.norm()) < 1e-9
    assert float((X - p.V[:, :1] * p.sigma[0] @ p.V[:, :1].T).norm()) < 0.3   # near X*_1


def test_logged_distances_and_final_matrix():
    p = problem(seed=7)
    R = torch.eye(p.d, dtype=p.A.dtype)
    run = S.symmetric_gd(p, [0.1, 0.3], 3, 0.05, 7, torch.Generator().manual_seed(1), log_every=7,
                         references=[R, p.X_star])
    assert run.distances.shape == (2, 2, 2)
    assert torch.allclose(run.distances[:, -1, 0], torch.linalg.matrix_norm(run.final - R))
    assert torch.allclose(run.distances[:, -1, 1], run.error[:, -1])


def test_late_loglog_slope_tells_polynomial_from_linear():
    t = torch.arange(0, 5001, 10)
    vals = torch.stack([2.0 / (1.0 + t.double()), torch.exp(-0.01 * t.double()).clamp(min=1e-16)])
    slope = S.late_loglog_slope(t, vals)
    assert abs(float(slope[0]) + 1) < 0.01 and float(slope[1]) < -5


@cuda
def test_sensing_runs_on_the_generator_device():
    p = S.sensing_problem(6, (1.0, 0.5), 30, torch.Generator("cuda").manual_seed(0))
    assert p.A.is_cuda and p.X_star.is_cuda
    run = S.symmetric_gd(p, [0.1], 6, 0.05, 5, torch.Generator("cuda").manual_seed(1), references=[p.X_star])
    assert run.final.is_cuda and run.distances.is_cuda
    assert S.min_nuclear_norm_psd(p).is_cuda and S.best_rank_s_fit(p, 1, steps=5).is_cuda
    assert S.describe(p, run.final).error.is_cuda
