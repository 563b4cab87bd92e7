"""Tests for gdlab.icl.metrics."""
import torch

from gdlab.icl import learners, lsa, metrics
from gdlab.icl.tasks import sample_tasks

F64 = torch.float64


def _tasks(batch=16, n=8, d=3, seed=0):
    return sample_tasks(batch, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_sensitivities_of_a_linear_learner_are_its_weights():
    t = _tasks()

    def gd(x, y, xq):
        return learners.predict(learners.gd_weights(x, y, [0.5]), xq)

    torch.testing.assert_close(metrics.query_sensitivities(gd, t), learners.gd_weights(t.x, t.y, [0.5]))


def test_model_cosine_of_construction_with_gd_is_one():
    t = _tasks()
    value, key_query = lsa.gd_construction(3, 0.5)

    lsa_model = lsa.task_predictor(value, key_query)
    def gd(x, y, xq):
        return learners.predict(learners.gd_weights(x, y, [0.5]), xq)

    assert abs(float(metrics.model_cosine(lsa_model, gd, t)) - 1) < 1e-12


def test_implicit_weights_recover_a_linear_learners_weights():
    t = _tasks(batch=5, n=6, d=4)

    def ridge(tasks):
        return learners.predict(learners.ridge_weights(tasks.x, tasks.y, 0.3), tasks.x_query)

    w_hat = metrics.implicit_weights(ridge, t, probes=12, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(w_hat, learners.ridge_weights(t.x, t.y, 0.3).to(w_hat))
    assert float(metrics.ilwd(w_hat, w_hat)) == 0.0


def test_simple_metrics():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
    assert float(metrics.preds_diff(a, b)) == 1.5
    assert float(metrics.spd(a, b)) == 2.5
    assert float(metrics.half_mse(a, b)) == 1.25
    torch.testing.assert_close(metrics.interpolate(a, b, 0.5), torch.tensor([1.5, 1.0]))


def test_learner_spd_is_zero_for_the_learner_itself():
    t = _tasks(batch=64, n=7, d=3)
    ols = learners.prefix_predictions(t.x, t.y, learners.ols_weights)
    s = metrics.learner_spd(ols, t, [0.1, 1.0])
    assert float(s["OLS"]) < 1e-20 and float(s["GD"]) > 0 and s["ridge"].shape == (2,)
    assert float(s["zero"]) == float(ols[..., 1:].pow(2).mean())
    curve = metrics.error_curve(ols, t)
    assert curve.shape == (6,) and float(curve[-1]) < 1e-20   # k >= d: least squares is exact


def test_interpolate_takes_a_tensor_weight():
    a, b = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(metrics.interpolate(a, b, torch.tensor(0.25)), torch.full((3,), 0.25))
