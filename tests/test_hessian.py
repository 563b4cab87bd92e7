"""Tests for gdlab.hessian: HVPs, Lanczos, Hutchinson, SLQ against dense Hessians."""
import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from gdlab import hessian


def small_problem(dtype=torch.float64, seed=0, n=24, d=5, h=6, c=3):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, c)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(n, c, generator=g, dtype=dtype)
    return model, torch.nn.functional.mse_loss, x, y


def dense_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        parts = dict(zip(names, [t.view(s) for t, s in zip(torch.split(w, sizes), shapes)]))
        return loss_fn(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.fixture(scope="module")
def problem():
    model, loss_fn, x, y = small_problem()
    return model, loss_fn, x, y, dense_hessian(model, loss_fn, x, y)


def test_num_params(problem):
    model = problem[0]
    assert hessian.num_params(model) == 5 * 6 + 6 + 6 * 3 + 3


def test_hvp_matches_dense(problem):
    model, loss_fn, x, y, H = problem
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1), dtype=H.dtype)
    torch.testing.assert_close(hessian.hvp(model, loss_fn, (x, y), v), H @ v, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_hvp_matches_finite_differences(seed):
    """Exact identity: H v = (g(θ + εv) - g(θ - εv)) / 2ε + O(ε²)."""
    model, loss_fn, x, y = small_problem(seed=seed % 7)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(hessian.num_params(model), generator=g, dtype=torch.float64)
    hv = hessian.hvp(model, loss_fn, (x, y), v)
    eps = 1e-5
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def grad_at(w):
        torch.nn.utils.vector_to_parameters(w, params)
        return hessian.flat_grad(model, loss_fn, (x, y))

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(theta, params)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-7)


def test_flat_grad_matches_autograd(problem):
    model, loss_fn, x, y, _ = problem
    model.zero_grad()
    loss_fn(model(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    torch.testing.assert_close(hessian.flat_grad(model, loss_fn, (x, y)), expected)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_top_eigenpairs_match_eigh(problem, method):
    model, loss_fn, x, y, H = problem
    evals, evecs = torch.linalg.eigh(H)
    vals, vecs = hessian.top_eigenpairs(model, loss_fn, (x, y), k=3, tol=1e-8, method=method)
    torch.testing.assert_close(vals, evals.flip(0)[:3], rtol=1e-7, atol=1e-9)
    assert torch.all(vals[:-1] >= vals[1:])
    # eigenvectors: residual ||H u - λ u|| small relative to λ
    for lam, u in zip(vals, vecs):
        assert float((H @ u - lam * u).norm()) <= 1e-5 * abs(float(lam))
        assert abs(float(u.norm()) - 1) < 1e-8


def test_top_eigenpairs_deterministic(problem):
    model, loss_fn, x, y, _ = problem
    a = hessian.top_eigenpairs(model, loss_fn, (x, y), k=2, generator=torch.Generator().manual_seed(3))
    b = hessian.top_eigenpairs(model, loss_fn, (x, y), k=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_hutchinson_matches_exact_trace(problem):
    model, loss_fn, x, y, H = problem
    est = hessian.hutchinson_trace(model, loss_fn, (x, y), n_samples=2000,
                                   generator=torch.Generator().manual_seed(0))
    exact = float(torch.trace(H))
    # Rademacher variance: 2 * sum_{i != j} H_ij^2; allow 4 standard errors
    se = float((2 * ((H ** 2).sum() - (torch.diagonal(H) ** 2).sum()) / 2000).sqrt())
    assert abs(est - exact) <= 4 * se + 1e-9


def test_ragged_batches_equal_full_batch(problem):
    model, loss_fn, x, y, H = problem
    batches = [(x[i:i + 7], y[i:i + 7]) for i in range(0, x.shape[0], 7)]  # 7, 7, 7, 3
    assert batches[-1][0].shape[0] == 3
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2), dtype=H.dtype)
    torch.testing.assert_close(hessian.hvp(model, loss_fn, batches, v), H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hessian.flat_grad(model, loss_fn, batches), hessian.flat_grad(model, loss_fn, (x, y)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    vals, _ = hessian.top_eigenpairs(model, loss_fn, loader, k=1, tol=1e-9)
    torch.testing.assert_close(vals[0], torch.linalg.eigvalsh(H)[-1], rtol=1e-7, atol=0)


def test_float32(problem):
    model64, loss_fn, x, y, H = problem
    model = copy.deepcopy(model64).float()
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(4))
    hv = hessian.hvp(model, loss_fn, (x.float(), y.float()), v)
    assert hv.dtype == torch.float32
    torch.testing.assert_close(hv.double(), H @ v.double(), rtol=1e-4, atol=1e-4)
    vals, vecs = hessian.top_eigenpairs(model, loss_fn, (x.float(), y.float()), k=2, tol=1e-5)
    assert vals.dtype == torch.float32 and vecs.dtype == torch.float32
    torch.testing.assert_close(vals.double(), torch.linalg.eigvalsh(H).flip(0)[:2], rtol=1e-4, atol=1e-5)


def test_slq_density_integrates_to_one_and_matches_spectrum(problem):
    model, loss_fn, x, y, H = problem
    grid, density = hessian.spectral_density(model, loss_fn, (x, y), n_vectors=3, n_steps=30,
                                             generator=torch.Generator().manual_seed(0))
    assert abs(float(torch.trapezoid(density, grid)) - 1) < 1e-10
    assert torch.all(density >= 0)
    # the Ritz values of a full-dimension run are the eigenvalues: the extremes are found
    nodes, weights = hessian.lanczos_quadrature(model, loss_fn, (x, y), n_vectors=2, n_steps=H.shape[0])
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, dtype=torch.float64))
    evals = torch.linalg.eigvalsh(H)
    assert abs(float(nodes.max()) - float(evals[-1])) < 1e-8 * float(evals.abs().max())
    # SLQ moments are exact: sum_j w_j theta_j = v^T H v / |v|^2, averaged -> Tr H / P
    mean = float((weights * nodes).sum(dim=1).mean())
    assert abs(mean - float(torch.trace(H)) / H.shape[0]) < 0.5 * float(evals.abs().max())


def test_input_validation(problem):
    model, loss_fn, x, y, _ = problem
    with pytest.raises(ValueError, match="'v'"):
        hessian.hvp(model, loss_fn, (x, y), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="'data'"):
        hessian.hvp(model, loss_fn, iter([(x, y)]), torch.zeros(hessian.num_params(model), dtype=torch.float64))
    with pytest.raises(TypeError, match="'model'"):
        hessian.num_params("model")
    with pytest.raises(ValueError, match="'k'"):
        hessian.top_eigenpairs(model, loss_fn, (x, y), k=0)
    with pytest.raises(ValueError, match="'method'"):
        hessian.top_eigenpairs(model, loss_fn, (x, y), method="power")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(problem):
    model, loss_fn, x, y, H = problem
    model_cuda = small_problem()[0].cuda()
    vals, _ = hessian.top_eigenpairs(model_cuda, loss_fn, (x.cuda(), y.cuda()), k=2, tol=1e-9)
    torch.testing.assert_close(vals.cpu(), torch.linalg.eigvalsh(H).flip(0)[:2], rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- a toolkit a researcher can trust
def test_unconverged_lanczos_warns_with_the_residuals(problem):
    model, loss_fn, x, y, H = problem
    with pytest.warns(hessian.HessianNotConvergedWarning, match=r"relative residuals .*\[.*e-"):
        vals, vecs = hessian.top_eigenpairs(model, loss_fn, (x, y), k=3, tol=1e-12, max_iter=6)
    assert vals.shape == (3,) and vecs.shape == (3, H.shape[0])
    with pytest.raises(hessian.NotConvergedError) as err:
        hessian.top_eigenpairs(model, loss_fn, (x, y), k=3, tol=1e-12, max_iter=6, strict=True)
    info = err.value.info
    assert not info["converged"] and info["iterations"] == 6 and len(info["relative_residuals"]) == 3
    assert max(info["relative_residuals"]) > 1e-12
    # the residuals reported are the true ones: ||H u - theta u|| for the returned pairs
    true = [float((H @ u - lam * u).norm()) for lam, u in zip(err.value.values, err.value.vectors)]
    torch.testing.assert_close(torch.tensor(info["residuals"], dtype=torch.float64),
                               torch.tensor(true, dtype=torch.float64), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_converged_runs_are_silent_and_report_residuals(problem, method):
    model, loss_fn, x, y, H = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vals, vecs, info = hessian.top_eigenpairs(model, loss_fn, (x, y), k=2, tol=1e-8, method=method,
                                                  return_info=True)
    assert info["converged"] and info["hvps"] >= 2
    assert all(r <= 1e-6 for r in info["relative_residuals"])


def test_unconverged_arpack_warns(problem, monkeypatch):
    """ARPACK giving up (ArpackNoConvergence with partial results) becomes our warning, not a crash."""
    import scipy.sparse.linalg as sla

    model, loss_fn, x, y, H = problem
    evals, evecs = torch.linalg.eigh(H)

    def give_up(A, k, **kw):
        raise sla.ArpackNoConvergence("no convergence", evals[-2:].numpy(), evecs[:, -2:].numpy())

    monkeypatch.setattr(sla, "eigsh", give_up)
    with pytest.warns(hessian.HessianNotConvergedWarning, match="arpack did not converge"):
        vals, _ = hessian.top_eigenpairs(model, loss_fn, (x, y), k=3, method="arpack")
    assert vals.shape == (2,)


def test_train_mode_warning_only_when_the_mode_matters(problem):
    _, loss_fn, x, y, _ = problem
    plain = small_problem()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessian.hvp(plain.train(), loss_fn, (x, y), torch.ones(hessian.num_params(plain), dtype=torch.float64))
    for layer in (torch.nn.Dropout(0.3), torch.nn.BatchNorm1d(6)):
        net = torch.nn.Sequential(torch.nn.Linear(5, 6), layer, torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
        with pytest.warns(hessian.TrainModeWarning, match="model.eval()"):
            hessian.top_eigenpairs(net.train(), loss_fn, (x, y), k=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hessian.top_eigenpairs(net.eval(), loss_fn, (x, y), k=1)
    assert hessian.mode_dependent_layers(torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.ReLU())) == []


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 3), torch.nn.Linear(2, 3)

    def forward(self, u, w):
        return torch.tanh(self.a(u)) * self.b(w)


def test_tuple_and_dict_batches():
    g = torch.Generator().manual_seed(0)
    model = TwoInputs().double()
    u, w = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    loss_fn = torch.nn.functional.mse_loss
    H = dense_two_inputs(model, loss_fn, u, w, y)
    v = torch.randn(H.shape[0], generator=g, dtype=torch.float64)
    for data in (((u, w), y), ([u, w], y), ({"u": u, "w": w}, y), {"u": u, "w": w, "labels": y},
                 [({"u": u[:7], "w": w[:7]}, y[:7]), ({"u": u[7:], "w": w[7:]}, y[7:])],
                 [{"u": u[:13], "w": w[:13], "y": y[:13]}, {"u": u[13:], "w": w[13:], "y": y[13:]}]):
        torch.testing.assert_close(hessian.hvp(model, loss_fn, data, v), H @ v, rtol=1e-10, atol=1e-12)
    # a dict with one input besides the targets calls model(x)
    model1, loss1, x, yy = small_problem()
    H1 = dense_hessian(model1, loss1, x, yy)
    vals, _ = hessian.top_eigenpairs(model1, loss1, {"x": x, "y": yy}, k=1, tol=1e-9)
    torch.testing.assert_close(vals[0], torch.linalg.eigvalsh(H1)[-1], rtol=1e-7, atol=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.StackDataset(x=x, y=yy), batch_size=10)
    torch.testing.assert_close(hessian.flat_grad(model1, loss1, loader), hessian.flat_grad(model1, loss1, (x, yy)))
    with pytest.raises(ValueError, match="exactly one of the keys"):
        hessian.hvp(model1, loss1, {"x": x, "target": yy, "y": yy}, torch.zeros(hessian.num_params(model1), dtype=torch.float64))


def dense_two_inputs(model, loss_fn, u, w, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        parts = dict(zip(names, [s.view(sh) for s, sh in zip(torch.split(t, sizes), shapes)]))
        return loss_fn(functional_call(model, parts, (u, w)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("backend", ["autograd", "auto"])  # "func" fails on mse_loss (ZeroTensor, see report)
def test_block_hvps_and_backends(problem, backend):
    model, loss_fn, x, y, H = problem
    V = torch.randn(7, H.shape[0], generator=torch.Generator().manual_seed(5), dtype=H.dtype)
    torch.testing.assert_close(hessian.hvp(model, loss_fn, (x, y), V, backend=backend), V @ H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hessian.hvp(model, loss_fn, (x, y), V[0], backend=backend), H @ V[0],
                               rtol=1e-10, atol=1e-12)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, x.shape[0], 10)]
    torch.testing.assert_close(hessian.hvp(model, loss_fn, batches, V, backend=backend), V @ H, rtol=1e-10,
                               atol=1e-12)


def test_hutchinson_block_size_does_not_change_the_estimate(problem):
    model, loss_fn, x, y, _ = problem
    a = hessian.hutchinson_trace(model, loss_fn, (x, y), n_samples=50, generator=torch.Generator().manual_seed(1),
                                 block=1)
    b = hessian.hutchinson_trace(model, loss_fn, (x, y), n_samples=50, generator=torch.Generator().manual_seed(1),
                                 block=16)
    assert abs(a - b) <= 1e-10 * max(1.0, abs(a))


def test_hutchpp_is_unbiased_and_beats_hutchinson_with_outliers():
    """A Hessian with a few dominant eigenvalues (a trained-classifier-like spectrum): at equal HVPs
    Hutch++'s error is several times smaller (Meyer et al. 2021, Thm. 1), and both are unbiased."""
    g = torch.Generator().manual_seed(0)
    P = 60
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([50.0, 30.0, 20.0, 10.0], dtype=torch.float64),
                     0.1 * torch.randn(P - 4, generator=g, dtype=torch.float64)])
    A = (U * lam) @ U.T

    class Quadratic(torch.nn.Module):  # loss 0.5 w^T A w: its Hessian is A
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(P, generator=g, dtype=torch.float64))

        def forward(self, x):
            return (0.5 * self.w @ A @ self.w).reshape(1, 1).expand(x.shape[0], 1)

    model = Quadratic()
    quad = lambda out, t: out.mean()  # noqa: E731
    data = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    exact = float(lam.sum())
    errs_h, errs_pp = [], []
    for s in range(30):
        errs_h.append(hessian.hutchinson_trace(model, quad, data, n_samples=30,
                                               generator=torch.Generator().manual_seed(s)) - exact)
        errs_pp.append(hessian.hutchpp_trace(model, quad, data, n_matvecs=30,
                                             generator=torch.Generator().manual_seed(s)) - exact)
    rms = lambda e: (sum(v * v for v in e) / len(e)) ** 0.5  # noqa: E731
    assert rms(errs_pp) * 5 < rms(errs_h)
    assert abs(sum(errs_pp) / 30) < 4 * rms(errs_pp) / 30 ** 0.5 + 1e-9
