"""Tests for gdlab.stability.coherence."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import coherence
from gdlab.stability import sgd_operator as so


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), frac=st.floats(0, 1))
def test_designed_sigma_is_exact(n, frac):
    sigma = 1 + frac * (n - 1)
    assert coherence.coherence(coherence.equiangular_hessians(n, sigma, lam=2.5)) == pytest.approx(sigma, rel=1e-10)


def test_coherence_matrix_definition():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    H = X @ X.transpose(1, 2)
    S = coherence.coherence_matrix(H)
    assert float(S[1, 2]) == pytest.approx(float(torch.trace(H[1] @ H[2])) ** 0.5, rel=1e-12)


@pytest.mark.parametrize("n,k", [(1, 1), (6, 1), (6, 4), (6, 6), (30, 7)])
def test_aligned_construction_has_coherence_k_and_unit_sharpness(n, k):
    H = coherence.aligned_hessians(n, k, lam=3.0)
    assert H.shape == (n, n - k + 1, n - k + 1)
    assert coherence.coherence(H) == pytest.approx(k, rel=1e-12)
    assert float(torch.linalg.eigvalsh(H.mean(0))[-1]) == pytest.approx(3.0, rel=1e-12)


def test_divergence_step_formula_and_theorem_on_the_construction():
    """eta_sigma = sigma / (lambda_1 sqrt(n/B - 1)); on the construction the exact Bernoulli step
    is min(2 / (lambda (1 + (n/B - 1)/k)), 2 k B / (n lambda)) (shared axis, own axes), never above it."""
    n, lam = 20, 2.0
    for k in (1, 3, 20):
        H = coherence.aligned_hessians(n, k, lam=lam)
        for B in (1, 5, 10, 19):
            bound = coherence.divergence_step(H, B)
            assert bound == pytest.approx(k / (lam * math.sqrt(n / B - 1)), rel=1e-12)
            exact = 2 / (lam * (1 + (n / B - 1) / k))
            if k < n:
                exact = min(exact, 2 * k * B / (n * lam))
            assert so.critical_step(H, B, sampling="bernoulli") == pytest.approx(exact, rel=1e-10)
            assert exact <= bound * (1 + 1e-12)
        assert coherence.divergence_step(H, n) == math.inf
    H = coherence.aligned_hessians(n, 1, lam=lam)
    assert coherence.divergence_step(H, 10) == pytest.approx(so.critical_step(H, 10, sampling="bernoulli"))
    assert coherence.divergence_step(H, 4, sigma=2.0) == pytest.approx(2 * coherence.divergence_step(H, 4))


def test_validation():
    with pytest.raises(ValueError, match="'sigma'"):
        coherence.equiangular_hessians(4, 5.0)
    with pytest.raises(ValueError, match="per_sample_hessians"):
        coherence.coherence_matrix(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'k'"):
        coherence.aligned_hessians(4, 5)
    with pytest.raises(ValueError, match="'sigma'"):
        coherence.divergence_step(coherence.aligned_hessians(4, 2), 1, sigma=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_coherence_on_cuda_tensors():
    H = coherence.equiangular_hessians(6, 2.5).cuda()
    assert coherence.coherence(H) == pytest.approx(2.5, rel=1e-10)
    assert coherence.coherence_matrix(H).device.type == "cuda"
    A = coherence.aligned_hessians(6, 2).cuda()
    assert coherence.divergence_step(A, 2) == pytest.approx(coherence.divergence_step(A.cpu(), 2))
    assert so.critical_step(A, 2, sampling="bernoulli") == pytest.approx(
        so.critical_step(A.cpu(), 2, sampling="bernoulli"))
