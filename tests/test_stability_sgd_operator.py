"""Tests for gdlab.stability.sgd_operator: the exact mean-square operator of linearized SGD."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import sgd_operator as so


def hessians(seed, n=6, d=3):
    return so.regression_hessians(n, d, torch.Generator().manual_seed(seed))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 5))
def test_operator_is_the_exact_expectation_over_batches(seed, B):
    """Exact identity: T(Sigma) = mean over all C(n, B) batches of (I - eta H_S) Sigma (I - eta H_S)."""
    H = hessians(seed, n=5).numpy()
    n, d, _ = H.shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, d))
    Sigma = X @ X.T
    eta = 0.3
    expected = np.zeros((d, d))
    subsets = list(itertools.combinations(range(n), B))
    for S in subsets:
        M = np.eye(d) - eta * H[list(S)].mean(axis=0)
        expected += M @ Sigma @ M / len(subsets)
    c1, c2 = so.batch_coefficients(n, B)
    Hbar = H.mean(axis=0)
    got = Sigma - eta * (Hbar @ Sigma + Sigma @ Hbar) + eta ** 2 * (
        c1 * np.einsum("nab,bc,ncd->ad", H, Sigma, H) / n + c2 * Hbar @ Sigma @ Hbar)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B", [1, 2, 4])
def test_bernoulli_operator_is_the_exact_expectation_over_subsets(B):
    """Exact identity: with each sample kept with probability p = B/n and H_S = (1/B) sum_S H_i,
    T(Sigma) = sum over all 2^n subsets S of p^|S| (1-p)^(n-|S|) (I - eta H_S) Sigma (I - eta H_S)."""
    H = hessians(7, n=5).numpy()
    n, d, _ = H.shape
    X = np.random.default_rng(B).standard_normal((d, d))
    Sigma, eta, p = X @ X.T, 0.3, B / n
    expected = np.zeros((d, d))
    for r in range(n + 1):
        for S in itertools.combinations(range(n), r):
            M = np.eye(d) - eta * H[list(S)].sum(axis=0) / B
            expected += p ** r * (1 - p) ** (n - r) * M @ Sigma @ M
    c1, c2 = so.batch_coefficients(n, B, "bernoulli")
    Hbar = H.mean(axis=0)
    got = Sigma - eta * (Hbar @ Sigma + Sigma @ Hbar) + eta ** 2 * (
        c1 * np.einsum("nab,bc,ncd->ad", H, Sigma, H) / n + c2 * Hbar @ Sigma @ Hbar)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampling", ["without", "bernoulli"])
def test_diagonal_closed_form_matches_the_general_operator(sampling):
    """Diagonal Hessians take a closed form; rotating them by a random orthogonal Q forces the
    general generalized-eigenvalue path, which must give the same step and spectral radius."""
    g = torch.Generator().manual_seed(11)
    D = torch.rand(7, 4, generator=g, dtype=torch.float64) ** 3
    D[:, 3] = 0                                        # a flat coordinate
    H = torch.diag_embed(D)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    R = Q @ H @ Q.T
    assert so._diagonal_moments(H.numpy()) is not None and so._diagonal_moments(R.numpy()) is None
    for B in (1, 3, 7):
        e = so.critical_step(H, B, sampling=sampling)
        assert e == pytest.approx(so.critical_step(R, B, sampling=sampling), rel=1e-9)
        for eta in (0.5 * e, e, 1.5 * e):
            assert so.spectral_radius(H, B, eta, sampling=sampling) == pytest.approx(
                so.spectral_radius(R, B, eta, sampling=sampling), rel=1e-9)


def test_bernoulli_simulation_agrees_with_its_operator():
    H = hessians(8, n=8, d=3)
    g = torch.Generator().manual_seed(1)
    for B in (1, 4):
        e = so.critical_step(H, B, sampling="bernoulli")
        assert e != pytest.approx(so.critical_step(H, B), rel=1e-3)   # the two models differ
        growth = so.simulate_sgd(H, B, [0.7 * e, 1.4 * e], steps=200, runs=32, generator=g,
                                 burn_in=50, sampling="bernoulli")
        assert growth[0] < 0 < growth[1]
    with pytest.raises(ValueError, match="'sampling'"):
        so.simulate_sgd(H, 2, [0.1], steps=3, runs=1, generator=g, sampling="with")
    with pytest.raises(ValueError, match="'sampling'"):
        so.critical_step(H, 2, sampling="poisson")


def test_critical_step_is_where_the_spectral_radius_crosses_one():
    H = hessians(0, n=8, d=3)
    for B in (1, 2, 4, 8):
        e = so.critical_step(H, B)
        assert so.spectral_radius(H, B, 0.99 * e) < 1 < so.spectral_radius(H, B, 1.01 * e)


def test_full_batch_is_gd():
    H = hessians(1, n=8, d=3)
    lam = float(torch.linalg.eigvalsh(H.mean(0))[-1])
    assert so.critical_step(H, 8) == pytest.approx(2 / lam, rel=1e-10)
    assert so.batch_coefficients(8, 8) == (0.0, 1.0)
    assert so.batch_coefficients(8, 1) == (1.0, 0.0)


def test_one_dimensional_closed_form():
    """d = 1, B = 1: stable iff E(1 - eta a)^2 <= 1, i.e. eta <= 2 E a / E a^2."""
    a = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    H = a[:, None, None]
    assert so.critical_step(H, 1) == pytest.approx(2 * a.mean().item() / (a ** 2).mean().item(), rel=1e-12)


def test_simulation_agrees_with_operator_far_from_threshold():
    H = hessians(2, n=8, d=3)
    e = so.critical_step(H, 2)
    growth = so.simulate_sgd(H, 2, [0.5 * e, 2.0 * e], steps=100, runs=16, generator=torch.Generator().manual_seed(0))
    assert growth[0] < 0 < growth[1]


def test_null_space_is_ignored():
    H = torch.zeros(4, 3, 3, dtype=torch.float64)
    H[:, :2, :2] = hessians(3, n=4, d=2)
    assert math.isfinite(so.critical_step(H, 2))


def test_validation():
    with pytest.raises(ValueError, match="per_sample_hessians"):
        so.critical_step(torch.zeros(3, 2, 4), 1)
    with pytest.raises(ValueError, match="'B'"):
        so.batch_coefficients(4, 5)
    with pytest.raises(ValueError, match="per_sample_hessians"):
        so.critical_step(-hessians(0), 1)
    with pytest.raises(ValueError, match="finite"):
        so.lyapunov_exponent(torch.full((2, 3, 3), math.nan), 1, 0.1, steps=10, runs=2,
                             generator=torch.Generator())


def test_simulate_sgd_burn_in_full_batch_threshold():
    H = hessians(3, n=8)
    lam = float(torch.linalg.eigvalsh(H.mean(0))[-1])
    growth = so.simulate_sgd(H, 8, [0.97 * 2 / lam, 1.03 * 2 / lam], steps=120, runs=4,
                             generator=torch.Generator().manual_seed(0), burn_in=60)
    assert growth[0] < 0 < growth[1]
    with pytest.raises(ValueError, match="burn_in"):
        so.simulate_sgd(H, 8, [0.1], steps=10, runs=2, generator=torch.Generator(), burn_in=10)


@pytest.mark.parametrize("B", [1, 2, 3, 6])
def test_simulate_sgd_matches_direct_batch_hessians(B):
    """Both code paths (gathered H_i for small B, gathered H_i delta for large B) are the map
    delta <- (I - eta H_S) delta with H_S the mean of the drawn batch's Hessians."""
    H = hessians(4, n=6, d=3)
    etas = torch.tensor([0.05, 0.2], dtype=torch.float64)
    got = so.simulate_sgd(H, B, etas, steps=7, runs=3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(6, 3, generator=g, dtype=torch.float64)
    delta = delta / delta.norm(dim=1, keepdim=True)
    eta = etas.repeat_interleave(3)[:, None]
    log_sq = torch.zeros(6, dtype=torch.float64)
    for _ in range(7):
        idx = torch.rand(6, 6, generator=g).argsort(dim=1)[:, :B]
        delta = delta - eta * torch.stack([H[i].mean(0) @ dv for i, dv in zip(idx, delta)])
        log_sq += 2 * delta.norm(dim=1).log()
        delta = delta / delta.norm(dim=1, keepdim=True)
    expected = torch.logsumexp(log_sq.view(2, 3), dim=1) - math.log(3)
    torch.testing.assert_close(got, expected / 7, rtol=1e-10, atol=1e-12)


def test_frobenius_ratio_is_the_constant_the_instance_needs():
    H = hessians(5, n=8, d=3)
    e = so.critical_step(H, 2)
    expected = e * float(torch.linalg.matrix_norm(H.mean(0))) / math.sqrt(2)
    assert so.frobenius_ratio(H, 2) == pytest.approx(expected, rel=1e-12)
    assert so.stability_bounds(H, 2)["frobenius"] * so.frobenius_ratio(H, 2) == pytest.approx(e, rel=1e-12)


def test_trace_bound_holds_at_batch_size_one():
    """Wu & Su 2023: a minimum stable for SGD with B = 1 has eta* Tr H <= 2."""
    for seed in range(5):
        H = hessians(seed, n=10, d=4)
        assert so.critical_step(H, 1) <= so.stability_bounds(H, 1)["trace"] * (1 + 1e-12)


def test_lyapunov_exponent_of_a_scalar_product_is_the_mean_log():
    """h in {0.9, 2.8} at eta = 1: the factors 0.1 and -1.8 give E log f^2 < 0 < log E f^2, so the
    iterates converge almost surely while the mean square grows (Ziyin et al. 2023)."""
    H = torch.tensor([[[0.9]], [[2.8]]], dtype=torch.float64)
    exact = 0.5 * (math.log(0.1 ** 2) + math.log(1.8 ** 2))
    rate, se = so.lyapunov_exponent(H, 1, 1.0, steps=2000, runs=400, generator=torch.Generator().manual_seed(0))
    assert exact < 0 < math.log(0.5 * (0.1 ** 2 + 1.8 ** 2)) and so.spectral_radius(H.numpy(), 1, 1.0) > 1
    assert abs(rate - exact) < 4 * se and se < 0.02


def test_lyapunov_exponent_is_deterministic_for_full_batches_and_ignores_the_null_space():
    """B = n: the map is I - eta H, so the rate is log (1 - eta lambda)^2 of the slowest direction in
    the range of H; a flat direction (the null space) would hold the norm at 1 and give 0."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 6)) @ np.diag([1, 1, 1, 0, 0, 0.0])          # rank 3 in 6 dimensions
    H = torch.as_tensor(X[:, :, None] * X[:, None, :])
    lam = np.linalg.eigvalsh(H.mean(0).numpy())
    lam = lam[lam > 1e-9]
    eta = 0.5 / lam.max()
    want = max(math.log((1 - eta * v) ** 2) for v in lam)
    rate, se = so.lyapunov_exponent(H, 4, eta, steps=400, runs=8, burn_in=200,
                                    generator=torch.Generator().manual_seed(1))
    assert rate == pytest.approx(want, rel=1e-6) and se < 1e-6 and rate < 0


def test_lyapunov_exponent_is_below_the_mean_square_rate():
    """Jensen: the almost-sure rate never exceeds the mean-square one, here on random rank-one
    Hessians at a step where both are negative and at one where both are positive."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(8, 5, generator=g, dtype=torch.float64)
    H = X[:, :, None] * X[:, None, :]
    crit = so.critical_step(H.numpy(), 1)
    for eta, sign in ((0.5 * crit, -1), (2.0 * crit, 1)):
        rate, se = so.lyapunov_exponent(H, 1, eta, steps=3000, runs=200, burn_in=500, generator=g)
        ms = math.log(so.spectral_radius(H.numpy(), 1, eta))
        assert rate < ms + 3 * se
        if sign < 0:
            assert rate < 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_draws_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    H = so.regression_hessians(8, 3, g)
    assert H.device.type == "cuda"
    growth = so.simulate_sgd(H, 2, [0.01, 10.0], steps=30, runs=4, generator=g)
    assert growth.device.type == "cuda" and growth[0] < 0 < growth[1]
    rate, _ = so.lyapunov_exponent(H, 2, 0.5 * so.critical_step(H.cpu().numpy(), 2), steps=200, runs=8,
                                   generator=g)
    assert rate < 0
    assert math.isfinite(so.critical_step(H, 2))
