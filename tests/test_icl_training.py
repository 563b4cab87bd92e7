"""Tests for gdlab.icl.training."""
import pytest
import torch

from gdlab.icl.training import fit_warmup_cosine, fit_with_cooldown, warmup_cosine


def test_cooldown_splits_the_steps_and_logs_all_of_them():
    w = torch.tensor([3.0], requires_grad=True)
    seen = []

    def loss_fn(step):
        seen.append(step)
        return (w ** 2).sum()

    hist = fit_with_cooldown([w], loss_fn, 40, lr=0.1, cooldown=0.25, log_every=10)
    assert seen == list(range(40))
    assert hist.steps[-1] == 39 and hist.loss[-1] < hist.loss[0]


def test_validation():
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="cooldown"):
        fit_with_cooldown([w], lambda s: (w ** 2).sum(), 10, lr=0.1, cooldown=1.5)


def test_warmup_cosine_schedule_shape():
    factors = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # non-increasing after the warm-up
    assert factors[-1] < 1e-3


def test_fit_warmup_cosine_minimizes_and_validates():
    w = torch.tensor([3.0], requires_grad=True)
    hist = fit_warmup_cosine([w], lambda s: (w ** 2).sum(), 200, lr=0.1, log_every=50)
    assert hist.steps == [0, 50, 100, 150, 199] and hist.loss[-1] < 1e-2 * hist.loss[0]
    with pytest.raises(ValueError, match="warmup"):
        fit_warmup_cosine([w], lambda s: (w ** 2).sum(), 10, lr=0.1, warmup=0.9)
