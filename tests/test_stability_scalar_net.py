"""Tests for gdlab.stability.scalar_net: exact Hessian, exact gradient-flow solution, Kreisler's monotonicity."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import scalar_net as sn


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(2, 5))
def test_hessian_matches_autograd(seed, depth):
    w = 0.2 + torch.rand(depth, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    dense = torch.autograd.functional.hessian(lambda v: 0.5 * (v.prod() - 1.3) ** 2, w)
    torch.testing.assert_close(sn.hessian(w, 1.3), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sn.gradient(w, 1.3), torch.func.grad(lambda v: 0.5 * (v.prod() - 1.3) ** 2)(w))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(2, 5))
def test_gfs_point_is_on_the_valley_and_conserves_differences(seed, depth):
    """Exact identities: prod w* = y and w*_i^2 - w*_j^2 = w_i^2 - w_j^2."""
    w = 0.2 + torch.rand(depth, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    ws = sn.gfs_point(w, 0.7)
    assert abs(float(ws.prod()) - 0.7) < 1e-12
    d0, d1 = w[:, None] ** 2 - w[None, :] ** 2, ws[:, None] ** 2 - ws[None, :] ** 2
    torch.testing.assert_close(d1, d0, rtol=0, atol=1e-12)
    # the GFS sharpness is the sharpness at the GFS point
    assert abs(float(sn.gfs_sharpness(w, 0.7) - sn.sharpness(ws, 0.7))) < 1e-10 * float(sn.sharpness(ws, 0.7))


def test_gfs_point_matches_integrated_flow():
    w = torch.tensor([1.5, 0.6, 0.9], dtype=torch.float64)
    wf = w.clone()
    for _ in range(20000):
        wf = wf - 1e-3 * sn.gradient(wf, 1.0)
    torch.testing.assert_close(wf, sn.gfs_point(w, 1.0), rtol=1e-3, atol=1e-3)


def test_gfs_sharpness_decreases_along_gd():
    g = torch.Generator().manual_seed(0)
    ws = sn.gfs_point(0.5 + torch.rand(20, 3, generator=g, dtype=torch.float64), 1.0)
    eta = 2 * 1.1 / sn.gfs_sharpness(ws, 1.0)
    run = sn.run_gd(ws + 1e-3 * torch.randn(ws.shape, generator=g, dtype=torch.float64), 1.0, eta, 500)
    phi = run["gfs_sharpness"]
    assert float(((phi[1:] - phi[:-1]) / phi[:-1]).max()) <= 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_and_gd_match_the_cpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    w = 0.5 + torch.rand(8, 3, generator=g, device=g.device, dtype=torch.float64)
    ws = sn.gfs_point(w, 1.0)
    eta = 2 * 1.02 / sn.gfs_sharpness(ws, 1.0)
    gpu = sn.run_gd(ws, 1.0, eta, 50)
    cpu = sn.run_gd(ws.cpu(), 1.0, eta.cpu(), 50)
    assert gpu["w"].device.type == "cuda"
    torch.testing.assert_close(gpu["gfs_sharpness"].cpu(), cpu["gfs_sharpness"], rtol=1e-9, atol=1e-12)
