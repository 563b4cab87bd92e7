"""Tests for gdlab.stability.coherence."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import coherence


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


def test_validation():
    with pytest.raises(ValueError, match="'sigma'"):
        coherence.equiangular_hessians(4, 5.0)
    with pytest.raises(ValueError, match="per_sample_hessians"):
        coherence.coherence_matrix(torch.zeros(3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_coherence_on_cuda_tensors():
    H = coherence.equiangular_hessians(6, 2.5).cuda()
    assert coherence.coherence(H) == pytest.approx(2.5, rel=1e-10)
    assert coherence.coherence_matrix(H).device.type == "cuda"
