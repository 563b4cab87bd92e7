"""Tests for gdlab.icl.learners: learners, closed forms and baselines."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from gdlab.icl import learners
from gdlab.icl.tasks import sample_tasks

F64 = torch.float64


def _tasks(batch, n, d, seed=0, **kw):
    return sample_tasks(batch, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64, **kw)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), n=st.integers(1, 10), eta=st.floats(-2, 2), seed=st.integers(0, 1000))
def test_preconditioned_step_with_eta_identity_is_one_gd_step(d, n, eta, seed):
    t = _tasks(3, n, d, seed)
    a = learners.gd_weights(t.x, t.y, [eta])
    b = learners.preconditioned_step_weights(t.x, t.y, eta * torch.eye(d, dtype=F64))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gd_plus_plus_with_zero_gamma_is_gd():
    t = _tasks(5, 7, 4)
    etas = [0.3, 0.5, 0.2]
    a = learners.gd_plus_plus_predict(t.x, t.y, t.x_query, etas, [0.0] * 3)
    b = learners.predict(learners.gd_weights(t.x, t.y, etas), t.x_query)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_ols_recovers_w_when_k_at_least_d_and_ridge_tends_to_ols():
    t = _tasks(8, 6, 4)
    torch.testing.assert_close(learners.ols_weights(t.x, t.y), t.w, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(learners.ridge_weights(t.x, t.y, 1e-9), t.w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(learners.ridge_weights(t.x, t.y, 0.0), learners.ols_weights(t.x, t.y))
    short = t.prefix(2)  # k < d: min-norm solution lies in the row space
    w = learners.ols_weights(short.x, short.y)
    torch.testing.assert_close((short.x @ w.unsqueeze(-1)).squeeze(-1), short.y, rtol=1e-8, atol=1e-8)


def test_best_one_step_size_minimizes_the_loss_curve():
    t = _tasks(4000, 10, 5, x_dist="uniform")
    eta = learners.best_one_step_size(t)
    grid = torch.linspace(0.5 * eta, 1.5 * eta, 101, dtype=F64)
    curve = learners.one_step_loss(t, grid)
    assert abs(float(grid[curve.argmin()]) - eta) <= float(grid[1] - grid[0])


def test_mahankali_and_ahn_agree_for_identity_covariance():
    n, d = 10, 5
    p = learners.ahn_preconditioner(torch.eye(d, dtype=F64), n)
    torch.testing.assert_close(p, learners.mahankali_step_size(n, d) * torch.eye(d, dtype=F64))
    assert learners.mahankali_step_size(10, 5, 0.5) == pytest.approx(10 / 16.25)


def test_mahankali_step_is_the_best_step_for_gaussian_data():
    t = _tasks(200_000, 10, 4, seed=1, sigma=0.5)
    assert learners.best_one_step_size(t) == pytest.approx(learners.mahankali_step_size(10, 4, 0.5), rel=0.02)


def test_garg_baselines_values_and_validation():
    curves = learners.garg_baselines([1, 5, 10], 5)
    np.testing.assert_allclose(curves["averaging"], [6, 1.2, 0.6])
    np.testing.assert_allclose(curves["least squares"], [0.8, 0, 0])
    np.testing.assert_allclose(curves["one GD step"], [6 / 7, 6 / 11, 6 / 16])
    with pytest.raises(ValueError, match="'k'"):
        learners.garg_baselines([0, 1], 5)


def test_tune_steps_improves_on_one_step():
    t = _tasks(1024, 10, 5, x_dist="uniform")
    one = learners.tune_steps(t, 1, iterations=50)
    two = learners.tune_steps(t, 2, plus_plus=True, iterations=100)
    assert two["loss"] < one["loss"]
    assert len(two["gammas"]) == 2
    tied = learners.tune_steps(t, 2, plus_plus=True, tied=True, iterations=100)
    assert tied["etas"][0] == tied["etas"][1] and tied["gammas"][0] == tied["gammas"][1]
    assert one["loss"] > tied["loss"] >= two["loss"] - 1e-3  # per-step sizes can only help (up to tuning noise)


def test_uniform_one_step_optimum_matches_monte_carlo():
    t = sample_tasks(200_000, 10, 10, generator=torch.Generator().manual_seed(2), x_dist="uniform")
    exact = learners.uniform_one_step_optimum(10, 10)
    assert learners.best_one_step_size(t) == pytest.approx(exact["eta"], rel=0.02)
    assert float(learners.one_step_loss(t, torch.tensor([exact["eta"]]))) == pytest.approx(exact["loss"], rel=0.02)
    assert exact["zero_loss"] == pytest.approx(10 / 24)


def test_prefix_predictions_match_direct_computation():
    t = _tasks(6, 5, 3)
    pred = learners.prefix_predictions(t.x, t.y, learners.ols_weights)
    assert pred.shape == (6, 5)
    assert torch.all(pred[:, 0] == 0)
    direct = learners.predict(learners.ols_weights(t.x[:, :3], t.y[:, :3]), t.x[:, 3])
    torch.testing.assert_close(pred[:, 3], direct)
    w = learners.tuned_one_step_weights(t.x, t.y, 0.5)
    torch.testing.assert_close(w, learners.mahankali_step_size(5, 3, 0.5) * learners.averaging_weights(t.x, t.y))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), k=st.integers(1, 9), lam=st.sampled_from([0.0, 0.1, 3.0]), seed=st.integers(0, 1000))
def test_gram_solves_equal_the_pseudo_inverse_and_ridge(d, k, lam, seed):
    t = _tasks(4, k, d, seed)
    if lam == 0:
        expected = (torch.linalg.pinv(t.x) @ t.y.unsqueeze(-1)).squeeze(-1)
    else:
        gram = t.x.transpose(-1, -2) @ t.x + lam * torch.eye(d, dtype=F64)
        expected = torch.linalg.solve(gram, t.x.transpose(-1, -2) @ t.y.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(learners.ridge_weights(t.x, t.y, lam), expected, rtol=1e-7, atol=1e-8)


def test_knn_predict_and_prefix_apply():
    x = torch.tensor([[[0.0], [1.0], [2.0], [10.0]]])
    y = torch.tensor([[0.0, 1.0, 2.0, 10.0]])
    assert float(learners.knn_predict(x, y, torch.tensor([[1.2]]), k=3)) == pytest.approx(1.0)
    assert float(learners.knn_predict(x[:, :2], y[:, :2], torch.tensor([[9.0]]), k=3)) == pytest.approx(0.5)
    pred = learners.prefix_apply(x, y, learners.knn_predict)
    torch.testing.assert_close(pred, torch.tensor([[0.0, 0.0, 0.5, 1.0]]))


def test_garg_baseline_formulas_match_monte_carlo():
    """The closed forms behind the chapter's baseline curves, within 4 Monte Carlo standard errors."""
    d, n = 3, 8
    t = sample_tasks(200_000, n, d, generator=torch.Generator().manual_seed(7), dtype=F64)
    formulas = learners.garg_baselines(np.arange(1, n), d)
    for name, fn in (("averaging", learners.averaging_weights), ("least squares", learners.ols_weights),
                     ("one GD step", learners.tuned_one_step_weights)):
        sq = (learners.prefix_predictions(t.x, t.y, fn) - t.y)[:, 1:].pow(2) / d
        mean, se = sq.mean(0).numpy(), (sq.std(0) / len(sq) ** 0.5).numpy()
        assert np.all(np.abs(mean - formulas[name]) <= 4 * se + 1e-12), name
