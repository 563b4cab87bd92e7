"""Tests for gdlab.stability.fractal: the batched grid trainer and box counting."""

import numpy as np
import pytest
import torch

from gdlab.stability import fractal


def test_batched_gradients_match_autograd():
    p = fractal.make_problem(torch.Generator().manual_seed(0), width=5, input_dim=3)
    W = p.W0[None].clone().requires_grad_()
    v = p.v0[None].clone().requires_grad_()
    h, d = W.shape[1:]
    out = torch.tanh(p.x @ W[0].T / d ** 0.5) @ v[0] / h
    loss = 0.5 * ((out - p.y) ** 2).mean()
    gW, gv = torch.autograd.grad(loss, (W, v))
    l2, gW2, gv2 = fractal._losses_and_grads(W.detach(), v.detach(), p.x, p.y)
    torch.testing.assert_close(l2[0], loss.detach())
    torch.testing.assert_close(gW2, gW)
    torch.testing.assert_close(gv2, gv)


def test_grid_pixels_are_independent_runs():
    p = fractal.make_problem(torch.Generator().manual_seed(1), width=4, input_dim=2)
    e_in = torch.tensor([0.5, 50.0, 5000.0], dtype=torch.float64)
    e_out = torch.tensor([1.0, 100.0, 1e5], dtype=torch.float64)
    together = fractal.train_pixels(p, e_in, e_out, steps=30)
    alone = torch.cat([fractal.train_pixels(p, e_in[i:i + 1], e_out[i:i + 1], steps=30) for i in range(3)])
    torch.testing.assert_close(together, alone, equal_nan=True)
    assert together[0] < 1 and not together[2] < 1       # tiny steps converge, huge ones diverge


def test_grid_is_independent_of_chunking():
    p = fractal.make_problem(torch.Generator().manual_seed(3), width=4, input_dim=2)
    a = fractal.train_grid(p, (1e-1, 1e4), (1e0, 1e4), resolution=9, steps=25)
    b = fractal.train_grid(p, (1e-1, 1e4), (1e0, 1e4), resolution=9, steps=25, chunk=7)
    assert torch.equal(a, b) and 0 < int(a.sum()) < 81


def test_box_counting_dimension_of_simple_sets():
    res = 256
    yy, xx = np.mgrid[:res, :res]
    line = torch.tensor(xx < res // 2 + 0.3 * yy)        # straight boundary: dimension 1
    assert fractal.box_counting_dimension(line) == pytest.approx(1.0, abs=0.05)
    rng = np.random.default_rng(0)
    noise = torch.tensor(rng.random((res, res)) < 0.5)    # boundary everywhere: dimension 2
    assert fractal.box_counting_dimension(noise) == pytest.approx(2.0, abs=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_step_matches_cpu():
    p = fractal.make_problem(torch.Generator().manual_seed(2))
    pc = fractal.FractalProblem(*(t.cuda() for t in (p.x, p.y, p.W0, p.v0)))
    e = torch.logspace(0, 3, 64, dtype=torch.float64)
    cpu = fractal.train_pixels(p, e, e.flip(0), steps=20)
    gpu = fractal.train_pixels(pc, e, e.flip(0), steps=20, fused=True).cpu()
    torch.testing.assert_close(gpu, cpu, equal_nan=True, rtol=1e-9, atol=1e-9)
