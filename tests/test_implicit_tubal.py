import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.implicit import tubal as Tb


def circular_t_product(A, B):
    """The definition: tube (i, l) of A * B is sum_j circconv(A[i, j, :], B[j, l, :])."""
    n1, n2, k = A.shape
    n3 = B.shape[1]
    C = torch.zeros(n1, n3, k, dtype=A.dtype)
    for s in range(k):
        for u in range(k):
            C[:, :, (s + u) % k] += A[:, :, s] @ B[:, :, u]
    return C


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n1=st.integers(1, 4), n2=st.integers(1, 4), n3=st.integers(1, 4), k=st.integers(1, 5))
def test_t_product_is_circular_convolution_of_tubes(seed, n1, n2, n3, k):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n1, n2, k, generator=g, dtype=torch.float64)
    B = torch.randn(n2, n3, k, generator=g, dtype=torch.float64)
    assert torch.allclose(Tb.t_product(A, B), circular_t_product(A, B), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5))
def test_transpose_reverses_products_and_is_the_adjoint(seed, k):
    g = torch.Generator().manual_seed(seed)
    A, B, C = (torch.randn(3, 3, k, generator=g, dtype=torch.float64) for _ in range(3))
    T = Tb.t_transpose
    assert torch.allclose(T(Tb.t_product(A, B)), Tb.t_product(T(B), T(A)), atol=1e-10)
    assert math.isclose(float((Tb.t_product(A, B) * C).sum()), float((B * Tb.t_product(T(A), C)).sum()),
                        rel_tol=1e-9, abs_tol=1e-9)


def test_tubal_rank_of_a_factored_tensor():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    X = Tb.t_product(W, Tb.t_transpose(W))
    assert int(Tb.tubal_rank(X)) == 2
    assert Tb.fourier_singular_values(X).shape == (4, 6)


def test_problem_is_normalized_and_measured():
    p = Tb.tubal_problem(5, 3, 2, 7, torch.Generator().manual_seed(1), trials=2)
    assert p.A.shape == (2, 7, 5, 5, 3) and p.y.shape == (2, 7)
    assert torch.allclose(Tb.fourier_singular_values(p.X_star).amax(dim=(-2, -1)), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(p.y[1, 3], (p.A[1, 3] * p.X_star[1]).sum())


def test_fourier_domain_step_is_the_spatial_gradient_step():
    p = Tb.tubal_problem(4, 3, 1, 9, torch.Generator().manual_seed(2))
    eta, R = 0.1, 3
    run = Tb.tubal_gd(p, [0.7], R, eta, 1, torch.Generator().manual_seed(5))
    U0 = 0.7 * torch.randn(1, 1, 4, R, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) / math.sqrt(R)
    U0 = U0[0, 0].requires_grad_(True)
    X = Tb.t_product(U0, Tb.t_transpose(U0))
    r = torch.einsum("mijf,ijf->m", p.A[0], X) - p.y[0]
    (grad,) = torch.autograd.grad((r * r).sum() / (4 * p.m), U0)
    assert torch.allclose(run.U[0, 0], (U0 - eta * grad).detach(), atol=1e-10)
    err0 = (p.X_star[0] - Tb.t_product(U0, Tb.t_transpose(U0)).detach()).norm() / p.X_star[0].norm()
    assert torch.allclose(run.test_error[0, 0, 0], err0)


def test_small_init_recovers_low_tubal_rank():
    p = Tb.tubal_problem(5, 2, 1, 60, torch.Generator().manual_seed(3))
    run = Tb.tubal_gd(p, [1e-4], 10, 0.2, 600, torch.Generator().manual_seed(3), log_every=600)
    assert float(run.test_error[0, 0, -1]) < 1e-2
    assert int(Tb.tubal_rank(run.X[0, 0], rtol=1e-2)) == 1


def test_residual_is_zero_at_the_target_and_matches_the_definition():
    p = Tb.tubal_problem(4, 3, 1, 9, torch.Generator().manual_seed(4), trials=2)
    assert float(Tb.residual(p, p.X_star).max()) < 1e-12
    X = torch.randn(2, 3, 4, 4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = Tb.residual(p, X)
    direct = (torch.einsum("tmijf,tbijf->tbm", p.A, X) - p.y[:, None]).norm(dim=-1) / p.y.norm(dim=-1)[:, None]
    assert r.shape == (2, 3) and torch.allclose(r, direct)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tubal_runs_on_the_generator_device():
    p = Tb.tubal_problem(4, 3, 1, 9, torch.Generator("cuda").manual_seed(0), trials=2)
    run = Tb.tubal_gd(p, [0.1, 0.01], 3, 0.1, 5, torch.Generator("cuda").manual_seed(1), log_every=5)
    assert run.X.is_cuda and run.test_error.is_cuda and Tb.residual(p, run.X).is_cuda
