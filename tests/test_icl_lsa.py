"""Tests for gdlab.icl.lsa: the constructions are exact GD / GD++ steps (von Oswald et al. 2022, Prop. 1)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from gdlab.icl import learners, lsa
from gdlab.icl.tasks import sample_tasks

F64 = torch.float64
sizes = dict(d=st.integers(1, 8), n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))


def _tasks(d, n, seed, batch=4):
    return sample_tasks(batch, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@settings(max_examples=30, deadline=None)
@given(**sizes, eta=st.floats(-3, 3), with_w0=st.booleans())
def test_one_layer_is_one_gd_step_on_every_token(d, n, seed, eta, with_w0):
    tasks = _tasks(d, n, seed)
    w0 = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1), dtype=F64) if with_w0 else None
    value, key_query = lsa.gd_construction(d, eta, w0=w0)
    out = lsa.lsa_forward(tasks.tokens(), value, key_query)
    w1 = learners.gd_weights(tasks.x, tasks.y, [eta], w0=w0)
    delta_w = w1 - (0 if w0 is None else w0)
    xs = torch.cat([tasks.x, tasks.x_query.unsqueeze(-2)], -2)
    expected_y = tasks.tokens()[..., -1] - (xs @ delta_w.unsqueeze(-1)).squeeze(-1)  # y_j - dW x_j, query too
    torch.testing.assert_close(out[..., :-1], xs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[..., -1], expected_y, rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(**sizes, eta=st.floats(0.01, 1.5), layers=st.integers(1, 5))
def test_k_layers_are_k_gd_steps(d, n, seed, eta, layers):
    tasks = _tasks(d, n, seed)
    value, key_query = lsa.gd_construction(d, eta, layers=layers)
    w = learners.gd_weights(tasks.x, tasks.y, [eta] * layers)
    expected = learners.predict(w, tasks.x_query)
    torch.testing.assert_close(lsa.lsa_predict(tasks.tokens(), value, key_query), expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(**sizes, params=st.lists(st.tuples(st.floats(0, 1.5), st.floats(-0.5, 0.5)), min_size=1, max_size=4))
def test_gd_plus_plus_construction_is_gd_plus_plus(d, n, seed, params):
    tasks = _tasks(d, n, seed)
    etas, gammas = zip(*params)
    value, key_query = lsa.gd_plus_plus_construction(d, etas, gammas)
    expected = learners.gd_plus_plus_predict(tasks.x, tasks.y, tasks.x_query, etas, gammas)
    torch.testing.assert_close(lsa.lsa_predict(tasks.tokens(), value, key_query), expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(**sizes, layers=st.integers(1, 3))
def test_predict_matches_full_forward_for_random_weights(d, n, seed, layers):
    g = torch.Generator().manual_seed(seed)
    tasks = _tasks(d, n, seed)
    value, key_query = lsa.init_lsa((2,), layers, d, generator=g, scale=0.5, dtype=F64)
    tokens = tasks.tokens().expand(2, -1, -1, -1)
    full = -lsa.lsa_forward(tokens, value, key_query)[..., -1, -1]
    torch.testing.assert_close(lsa.lsa_predict(tokens, value, key_query), full, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(**sizes)
def test_effective_preconditioner_is_the_bilinear_part(d, n, seed):
    """For weights that only have the GD-relevant blocks, y_hat = b^T Gamma x_q exactly."""
    g = torch.Generator().manual_seed(seed)
    tasks = _tasks(d, n, seed)
    value, key_query = lsa.init_lsa((), 1, d, generator=g, scale=1.0, dtype=F64)
    value, key_query = value.detach().clone(), key_query.detach().clone()
    key_query[..., :, -1] = 0
    value[..., -1, :-1] = 0  # v_x = 0
    key_query[..., -1, :] = 0  # q_yx = 0
    gamma = lsa.effective_preconditioner(value, key_query)
    expected = learners.predict(learners.preconditioned_step_weights(tasks.x, tasks.y, gamma.transpose(-1, -2)),
                                tasks.x_query)
    torch.testing.assert_close(lsa.lsa_predict(tasks.tokens(), value, key_query), expected, rtol=1e-10, atol=1e-10)


def test_construction_has_step_size_eta_and_align_scale_is_a_symmetry():
    value, key_query = lsa.gd_construction(4, 0.7)
    assert float(lsa.effective_step_size(value, key_query)) == pytest.approx(0.7)
    tasks = _tasks(4, 6, 0)
    v2, q2 = lsa.align_scale(3.0 * value, key_query / 3.0)
    torch.testing.assert_close(q2, key_query)
    torch.testing.assert_close(lsa.lsa_predict(tasks.tokens(), v2, q2), lsa.lsa_predict(tasks.tokens(), value, key_query))


def test_lsa_predictions_are_permutation_invariant():
    tasks = _tasks(5, 9, 3)
    value, key_query = lsa.init_lsa((), 2, 5, generator=torch.Generator().manual_seed(0), scale=0.3, dtype=F64)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    a = lsa.lsa_predict(tasks.tokens(), value, key_query)
    b = lsa.lsa_predict(tasks.permuted(perm).tokens(), value, key_query)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_train_lsa_reaches_gd_loss_quickly():
    g = torch.Generator().manual_seed(0)
    value, key_query = lsa.init_lsa((2,), 1, 3, generator=g)
    hist = lsa.train_lsa(value, key_query, lambda s: sample_tasks((2, 256), 10, 3, generator=g), 300, lr=1e-2)
    assert hist.loss[-1] < 0.5 * hist.loss[0]
    eta = learners.mahankali_step_size(10, 3)
    torch.testing.assert_close(lsa.effective_step_size(value, key_query).detach(), torch.full((2,), eta), rtol=0.15, atol=0)


@settings(max_examples=20, deadline=None)
@given(**sizes, eta=st.floats(0.01, 1.5), layers=st.integers(1, 4))
def test_recurrent_construction_is_k_gd_steps(d, n, seed, eta, layers):
    tasks = _tasks(d, n, seed)
    value, key_query = lsa.gd_construction(d, eta)
    expected = learners.predict(learners.gd_weights(tasks.x, tasks.y, [eta] * layers), tasks.x_query)
    got = lsa.lsa_predict(tasks.tokens(), *lsa.recurrent(value, key_query, layers))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_recurrent_training_shares_one_layer():
    g = torch.Generator().manual_seed(0)
    value, key_query = lsa.init_lsa((1,), 1, 3, generator=g)
    hist = lsa.train_lsa(value, key_query, lambda s: sample_tasks((1, 128), 10, 3, generator=g), 100, lr=1e-2,
                         repeat=2)
    assert value.shape == (1, 1, 4, 4) and hist.loss[-1] < hist.loss[0]
    with pytest.raises(ValueError, match="1"):
        lsa.recurrent(*lsa.init_lsa((1,), 2, 3, generator=g), 2)


def test_validation_messages():
    with pytest.raises(ValueError, match="layers"):
        lsa.gd_construction(3, 0.1, layers=0)
    with pytest.raises(TypeError, match="eta"):
        lsa.gd_construction(3, "big")
    with pytest.raises(ValueError, match="etas"):
        lsa.gd_plus_plus_construction(3, [0.1], [0.1, 0.2])
