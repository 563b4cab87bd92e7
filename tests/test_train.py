import pytest
import torch

from gdlab.train import fit


def test_fit_minimizes_a_quadratic_and_logs():
    w = torch.zeros(3, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5])
    hist = fit([w], lambda step: ((w - target) ** 2).sum(), 300, optimizer="adam", lr=0.05, clip_norm=10.0,
               log_every=50)
    assert torch.allclose(w.detach(), target, atol=1e-2)
    assert hist.steps[0] == 0 and hist.steps[-1] == 299 and hist.loss[-1] < hist.loss[0]


def test_fit_validates():
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="parameter 'optimizer'"):
        fit([w], lambda s: w.sum(), 1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="parameter 'steps'"):
        fit([w], lambda s: w.sum(), 0)


def test_fit_schedule_sets_each_steps_learning_rate():
    # plain SGD on f(x) = x^2 / 2: x_{t+1} = (1 - lr_t) x_t, so the iterate records every step's rate
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    factors = [1.0, 0.5, 0.25, 0.0]
    fit([x], lambda step: 0.5 * (x ** 2).sum(), 4, optimizer="sgd", lr=0.2, schedule=lambda s: factors[s])
    expected = 1.0
    for f in factors:
        expected *= 1 - 0.2 * f
    assert float(x.detach()) == pytest.approx(expected, rel=1e-14)
