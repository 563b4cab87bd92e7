"""Tests for gdlab.stability.fractal: the batched grid trainer and the box-counting estimator."""
import math

import numpy as np
import pytest
import torch

from gdlab.stability import fractal

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ---------------------------------------------------------------- the trainer
def _autograd_loss(p, W, v):
    h, d = W.shape
    if p.kind == "network":
        out = torch.tanh(p.gain * p.x @ W.T / d ** 0.5) @ v / h
    else:
        m = v.numel()
        out = p.x[:, :m] @ W[0] + p.x[:, m:] @ v
    return ((out - p.y) ** 2).mean()


@pytest.mark.parametrize("kind", ["network", "quadratic"])
def test_one_step_is_gd_on_the_papers_loss(kind):
    """One batched step equals autograd GD on mean((f - y)^2) with per-layer step sizes."""
    g = torch.Generator().manual_seed(0)
    p = fractal.make_problem(g, width=5, input_dim=3) if kind == "network" else fractal.make_quadratic_problem(g, half=3)
    if kind == "quadratic":     # start away from zero so both blocks move
        p = fractal.FractalProblem(p.x, p.y, torch.ones_like(p.W0), torch.ones_like(p.v0), p.gain, p.kind)
    W, v = p.W0.clone().requires_grad_(), p.v0.clone().requires_grad_()
    loss = _autograd_loss(p, W, v)
    gW, gv = torch.autograd.grad(loss, (W, v))
    eta_in, eta_out = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    step = fractal._step_fn(kind, False)
    x = p.x * (p.gain / math.sqrt(p.x.shape[1])) if kind == "network" else p.x
    size = p.W0.shape[0] if kind == "network" else p.W0.shape[1]
    W1, v1, l0 = step(p.W0[None].clone(), p.v0[None].clone(), x, p.y, eta_in, eta_out, size)
    torch.testing.assert_close(l0[0], loss.detach())
    torch.testing.assert_close(W1[0], (W - 0.3 * gW).detach())
    torch.testing.assert_close(v1[0], (v - 0.7 * gv).detach())


def _kernel_form(Z, v, x, p, e_in, e_out):
    return fractal._kernel_step(Z, v, x @ x.T, p.y, e_in, e_out, 6)


def _point_form(Z, v, x, p, e_in, e_out):      # one example: z is Z's only column
    z, v, loss = fractal._point_step(Z[:, :, 0], v, (x @ x.T)[0, 0], p.y[0], e_in, e_out, 6)
    return z[:, :, None], v, loss


@pytest.mark.parametrize("n, seed, etas, form", [(2, 5, (0, 3), _kernel_form), (1, 6, (-1, 2), _point_form)])
def test_few_examples_train_in_pre_activations_like_the_full_weights(n, seed, etas, form):
    """With n < d the trainer follows Z = W xs^T (the kernel form; with n = 1 the element-wise
    point form, tanh through the sigmoid): the same losses, step by step, as the full-weight step
    on the same networks, and the same converged/diverged outcome."""
    p = fractal.make_problem(torch.Generator().manual_seed(seed), width=6, input_dim=5, n=n)
    x = p.x * (p.gain / math.sqrt(p.x.shape[1]))
    e_in = torch.logspace(*etas, 40, dtype=torch.float64)
    e_out = e_in.flip(0)
    W, v = p.W0.expand(40, -1, -1).contiguous(), p.v0.expand(40, -1).contiguous()
    Z, vz = W @ x.T, v.clone()
    losses = []
    for _ in range(200):
        W, v, full = fractal._network_step(W, v, x, p.y, e_in, e_out, 6)
        Z, vz, kern = form(Z, vz, x, p, e_in, e_out)
        losses.append(full)
        if len(losses) <= 30:
            ok = torch.isfinite(full) & (full < 1e6)
            torch.testing.assert_close(kern[ok], full[ok], rtol=1e-9, atol=1e-12)
    losses = torch.stack(losses)
    want = (losses[-20:] / losses[0]).mean(0)
    got = fractal.train_pixels(p, e_in, e_out, steps=200)       # n < d = 5: a pre-activation form
    assert torch.equal(got < 1, torch.nan_to_num(want, nan=math.inf) < 1)
    assert bool((got < 1).any()) and bool((got >= 1).any())     # both outcomes on this range
    fin = torch.isfinite(want) & torch.isfinite(got)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-6, atol=1e-9)


def test_make_problem_is_sohl_dicksteins_setup():
    p = fractal.make_problem(torch.Generator().manual_seed(0))
    assert p.x.shape == (272, 16) and p.y.shape == (272,) and p.W0.shape == (16, 16) and p.v0.shape == (16,)
    assert p.num_params == 272 and p.gain == pytest.approx(math.sqrt(2)) and p.x.dtype == torch.float64


def test_grid_pixels_are_independent_runs_and_dropping_diverged_runs_is_exact():
    p = fractal.make_problem(torch.Generator().manual_seed(1), width=4, input_dim=2)
    e_in = torch.tensor([0.5, 50.0, 5000.0, 1e6], dtype=torch.float64)
    e_out = torch.tensor([1.0, 100.0, 1e5, 1e6], dtype=torch.float64)
    together = fractal.train_pixels(p, e_in, e_out, steps=60, drop_every=5)
    never_dropped = fractal.train_pixels(p, e_in, e_out, steps=60, drop_every=1000)
    alone = torch.cat([fractal.train_pixels(p, e_in[i:i + 1], e_out[i:i + 1], steps=60) for i in range(4)])
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together, never_dropped)
    assert together[0] < 1 and not together[3] < 1       # tiny steps converge, huge ones diverge


def test_grid_is_independent_of_chunking():
    p = fractal.make_problem(torch.Generator().manual_seed(3), width=4, input_dim=2)
    window = ((1e-1, 1e4), (1e0, 1e4))
    a = fractal.train_grid(p, window, resolution=9, steps=25)
    b = fractal.train_grid(p, window, resolution=9, steps=25, chunk=7)
    assert torch.equal(a, b) and 0 < int(a.sum()) < 81


def test_quadratic_boundary_is_the_linear_stability_curve():
    """GD on the quadratic control converges iff the spectral radius of I - 2 D H is below 1."""
    p = fractal.make_quadratic_problem(torch.Generator().manual_seed(4), half=3)
    H = p.x.T @ p.x / p.x.shape[0]
    a, b = fractal.grid_axes(((1e-2, 1e1), (1e-2, 1e1)), 12)
    image = fractal.train_grid(p, ((1e-2, 1e1), (1e-2, 1e1)), 12, steps=400)
    for i, eb in enumerate(b):
        for j, ea in enumerate(a):
            D = torch.diag(torch.cat([ea.repeat(3), eb.repeat(3)]))
            rho = torch.linalg.eigvals(torch.eye(6, dtype=H.dtype) - 2 * D @ H).abs().max()
            if abs(float(rho) - 1) > 0.02:         # away from the edge, where 400 steps decide
                assert bool(image[i, j]) == bool(rho < 1)


# ---------------------------------------------------------------- the estimator on shapes of known dimension
RES = 1024


def _dimension(region):
    return fractal.fractal_dimension([region])


def test_straight_lines_have_dimension_one():
    yy, xx = np.mgrid[:RES, :RES]
    for slope in (0.0, 0.3, 1.0, 2.5):
        assert _dimension(xx < RES / 3 + slope * yy / 3) == pytest.approx(1.0, abs=0.05)


def test_circle_has_dimension_one():
    yy, xx = np.mgrid[:RES, :RES]
    assert _dimension((xx - 500.3) ** 2 + (yy - 480.7) ** 2 < 400.0 ** 2) == pytest.approx(1.0, abs=0.05)


def _koch_snowflake(level):
    pts = np.array([[0, 0], [1, 0], [0.5, -math.sqrt(3) / 2], [0, 0]])
    rot = np.array([[0.5, -math.sqrt(3) / 2], [math.sqrt(3) / 2, 0.5]])
    for _ in range(level):
        a, b = pts[:-1], pts[1:]
        d = (b - a) / 3
        p1, p3 = a + d, a + 2 * d
        p2 = p1 + d @ rot.T
        pts = np.concatenate([np.stack([a, p1, p2, p3], axis=1).reshape(-1, 2), pts[-1:]])
    return pts


def test_koch_snowflake_dimension_carries_the_estimators_known_upward_bias():
    """Sohl-Dickstein's estimator (median of porespy's local slopes, boxes up to the image side)
    pools the slopes of boxes nearly as large as the image (about 2.0 and 2.7 here), so on a
    1024-px Koch snowflake it reads above log 4 / log 3 = 1.26 (about 1.35). The chapter judges
    C10 against his range with his estimator and states this bias; this test pins it: the
    estimate stays above the true dimension and well below a filled region's 2."""
    from PIL import Image, ImageDraw  # a scanline fill: 0.1 s where a point-in-polygon test took 2 min

    pts = _koch_snowflake(7)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)).max() * (RES - 40) + 20
    image = Image.new("1", (RES, RES), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in pts], fill=1, outline=1)
    inside = np.array(image, dtype=bool)
    assert 0.4 < inside.mean() < 0.6  # the snowflake fills about half the square
    true = math.log(4) / math.log(3)
    assert true - 0.02 <= _dimension(inside) <= true + 0.15


def test_noise_has_dimension_near_two():
    noise = np.random.default_rng(0).random((RES, RES)) < 0.5
    assert _dimension(noise) == pytest.approx(2.0, abs=0.05)


def test_box_counts_match_a_direct_count():
    rng = np.random.default_rng(1)
    edge = rng.random((37, 45)) < 0.05
    for s in (1, 4, 10, 37):
        direct = 0
        for i in range(0, 37, s):
            for j in range(0, 45, s):
                tile = edge[i:i + s, j:j + s]
                direct += bool(tile.any()) and not bool(tile.all())
        assert fractal.box_counts(edge, [s])[0] == direct


def test_edges_are_two_by_two_sign_changes():
    img = np.zeros((4, 4), dtype=bool)
    img[:, 2:] = True
    e = fractal.edges(img)
    assert e.shape == (3, 3) and e[:, 1].all() and not e[:, 0].any() and not e[:, 2].any()


def test_validation():
    with pytest.raises(ValueError, match="min_box"):
        fractal.box_sizes(8, min_box=10)
    with pytest.raises(ValueError, match="no boundary"):
        fractal.fractal_dimension([np.zeros((64, 64), dtype=bool)])
    with pytest.raises(ValueError, match="image"):
        fractal.edges(np.zeros(5, dtype=bool))


# ---------------------------------------------------------------- devices
@needs_cuda
def test_cuda_generator_draws_on_cuda_and_matches_the_cpu_trainer():
    g = torch.Generator(device="cuda").manual_seed(2)
    for n in (None, 1):  # the full-weight step, and with one example the pre-activation one
        p = fractal.make_problem(g, n=n)
        assert p.x.device.type == "cuda"
        pc = fractal.FractalProblem(*(t.cpu() for t in (p.x, p.y, p.W0, p.v0)), p.gain, p.kind)
        e = torch.logspace(0, 3, 64, dtype=torch.float64)
        cpu = fractal.train_pixels(pc, e, e.flip(0), steps=20)
        for fused in (False, True):
            gpu = fractal.train_pixels(p, e.cuda(), e.flip(0).cuda(), steps=20, fused=fused).cpu()
            torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-9)
    q = fractal.make_quadratic_problem(g)
    assert q.x.device.type == "cuda" and fractal.train_grid(q, ((1e-2, 1.0), (1e-2, 1.0)), 4, steps=5).device.type == "cpu"


def test_zoom_sequence_follows_the_boundary_as_deep_as_his_sequences():
    """45 zooms, each into the half-size window (in each log-range) with the most boundary pixels:
    nested windows that halve, about 1e-12 decades wide at the end (Sohl-Dickstein's sequences reach
    about 1e-14) and still resolved in float64, with both outcomes in every frame."""
    p = fractal.make_problem(torch.Generator().manual_seed(0), n=1)
    frames = fractal.zoom_sequence(p, ((1e-3, 1e6), (1e-3, 1e6)), 24, steps=100, zooms=45)
    assert len(frames) == 46
    widths = []
    for (image, (w_in, w_out)), (_, (o_in, o_out)) in zip(frames[1:], frames[:-1]):
        for (lo, hi), (olo, ohi) in ((w_in, o_in), (w_out, o_out)):
            assert olo <= lo < hi <= ohi
        widths.append(math.log10(w_in[1] / w_in[0]))
        assert bool(image.any()) and not bool(image.all())
    ratios = np.array(widths[1:]) / np.array(widths[:-1])
    assert np.all((ratios > 0.45) & (ratios < 0.55))
    assert widths[-1] < 1e-11
