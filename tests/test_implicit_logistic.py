import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from gdlab.implicit import logistic as L


def separable(seed, n=30, d=3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = a[(a @ w).abs() > 0.3]
    return a, torch.sign(a @ w)


def test_gradient_matches_autograd():
    a, y = separable(0)
    theta = torch.randn(a.shape[1], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(L.logistic_loss(a, y, theta), theta)
    assert torch.allclose(L.logistic_grad(a, y, theta.detach()), g)


def test_svm_of_a_symmetric_pair():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    w = L.svm_direction(torch.cat([x, -x]), torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(w, x[0] / x[0].pow(2).sum(), atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_svm_satisfies_kkt(seed):
    a, y = separable(seed)
    w = L.svm_direction(a, y)
    Z = (y.unsqueeze(1) * a).numpy()
    margins = Z @ w.numpy()
    assert margins.min() > 1 - 1e-6
    active = margins < 1 + 1e-5
    lam, resid = nnls(Z[active].T, w.numpy())  # w = sum_active lambda_i y_i a_i, lambda >= 0
    assert resid < 1e-5


def test_gd_stays_a_multiple_of_the_first_step_direction_on_one_sample():
    a, y = torch.tensor([[3.0, 4.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    tr = L.logistic_gd(a, y, [0.5], 50)
    assert torch.allclose(L.direction_gap(tr.theta[0, 1:], a[0]), torch.zeros(50, dtype=torch.float64), atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_large_step_lr_gd_is_the_batch_perceptron(seed):
    a, y = separable(seed, n=40, d=4)
    steps = 20
    P = L.batch_perceptron(a, y, steps)
    tr = L.logistic_gd(a, y, [1e8], steps)
    # Tyurin 2024, Thm. 3.2: theta_t / gamma -> Batch Perceptron iterate
    assert torch.allclose(tr.theta[0] / 1e8, P, rtol=1e-6, atol=1e-9)


def test_theorem_41_example():
    a, y = L.tyurin_theorem_41_data()
    gamma = 1e6
    th = L.logistic_gd(a, y, [gamma], 2).theta[0]
    assert torch.allclose(th[1] / gamma, torch.tensor([0.5, 0.75], dtype=torch.float64))
    assert torch.allclose(th[2] / gamma, torch.tensor([1.0, 0.25], dtype=torch.float64))
    assert float(L.logistic_loss(a, y, th[1])) > gamma / 10 and float(L.logistic_loss(a, y, th[2])) < 1e-100
    assert math.isclose(float(L.logistic_grad(a, y, th[1]).norm()), math.sqrt(2) / 2, rel_tol=1e-9)
    assert L.iterations_to_separate(a, y, th) == 2


def test_table_1_iteration_counts():
    """Tyurin 2024, Table 1, "worst-case" dataset of Thm. 5.1 (n = 1000)."""
    a, y = L.tyurin_theorem_51_data(1000)
    normalized = L.logistic_gd(a, y, [100.0, 10.0, 1.0, 0.1], 200, normalized=True)
    assert L.iterations_to_separate(a, y, normalized.theta) == [2, 2, 16, 157]
    plain = L.logistic_gd(a, y, [100.0], 400)
    assert L.iterations_to_separate(a, y, plain.theta) == [308]


def test_normalized_perceptron_on_the_worst_case_is_fast():
    a, y = L.tyurin_theorem_51_data(200)
    assert L.iterations_to_separate(a, y, L.batch_perceptron(a, y, 20, normalized=True)) <= 3
    assert L.iterations_to_separate(a, y, L.batch_perceptron(a, y, 300)) > 20


def test_soudry_data_has_the_known_svm():
    a, y = L.soudry_figure1_data(torch.Generator().manual_seed(0))
    w = L.svm_direction(a, y)
    assert torch.allclose(w, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-6)
    assert math.isclose(float(L.normalized_margin(a, y, w)), math.sqrt(2), rel_tol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generic_data_has_its_construction_svm(seed):
    a, y = L.generic_separable_data(torch.Generator().manual_seed(seed))
    w = L.svm_direction(a, y)
    Z = y.unsqueeze(1) * a
    assert math.isclose(float(w.norm()), 1.0, rel_tol=1e-6)  # margin 1
    assert torch.allclose(Z[:2] @ w, torch.ones(2, dtype=torch.float64), atol=1e-6)  # the two support vectors
    assert float((Z[2:] @ w).min()) >= 2 - 1e-6  # the others sit at margin >= 2
    sv_offsets = (Z[:2] - w).norm(dim=1)  # 1 + e and 1 - e: not symmetric about w
    assert 0.1 - 1e-9 <= float(sv_offsets.max() - sv_offsets.min()) / 2 <= 0.2 + 1e-9


def test_generic_data_rejects_bad_asymmetry():
    with pytest.raises(ValueError, match="asymmetry"):
        L.generic_separable_data(torch.Generator().manual_seed(0), asymmetry=(0.3, 0.1))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_one_dataset_per_step_size_matches_separate_runs(seed):
    (a1, y1), (a2, y2) = separable(seed, n=40, d=3), separable(seed + 1, n=40, d=3)
    n = min(len(a1), len(a2))
    a, y = torch.stack([a1[:n], a2[:n]]), torch.stack([y1[:n], y2[:n]])
    both = L.logistic_gd(a, y, [0.5, 2.0], 30).theta
    assert torch.allclose(both[0], L.logistic_gd(a1[:n], y1[:n], [0.5], 30).theta[0], atol=1e-12)
    assert torch.allclose(both[1], L.logistic_gd(a2[:n], y2[:n], [2.0], 30).theta[0], atol=1e-12)
    with pytest.raises(ValueError, match="gammas"):
        L.logistic_gd(a, y, [0.5], 3)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="'y'"):
        L.logistic_loss(torch.ones(2, 2), torch.tensor([0.0, 1.0]), torch.zeros(2))


def test_soudry_asymptotics_satisfy_their_defining_equations():
    a, y = L.generic_separable_data(torch.Generator().manual_seed(3))
    th = L.soudry_asymptotics(a, y, gamma=2.0)
    Z = y[:, None] * a
    assert bool((th.dual > 0).all())
    assert torch.allclose(th.dual @ Z[th.support], th.w_hat, atol=1e-6)        # w_hat = sum dual_n z_n
    assert math.isclose(float(th.dual.sum()), float(th.w_hat @ th.w_hat), rel_tol=1e-5)
    eta = 2.0 / len(y)
    assert torch.allclose(eta * torch.exp(-Z[th.support] @ th.w_tilde), th.dual, rtol=1e-6)
    assert math.isclose(th.loss_times_t, float(th.w_hat @ th.w_hat) / 2.0)


def test_predicted_gap_matches_the_closed_form_at_large_t():
    a, y = L.generic_separable_data(torch.Generator().manual_seed(4))
    th = L.soudry_asymptotics(a, y, gamma=1.0)
    t = torch.tensor([1e12], dtype=torch.float64)
    ratio = float(th.w_hat @ th.w_tilde / (th.w_hat @ th.w_hat))
    assert math.isclose(float(th.gap(t)), th.perpendicular / (math.log(1e12) + ratio), rel_tol=1e-3)


def test_fit_scale_recovers_the_scale_of_a_member_of_the_family():
    t = torch.linspace(1, 10, 20, dtype=torch.float64)
    assert torch.allclose(L.fit_scale(3.0 * t ** -0.2, t ** -0.2), 3.0 * t ** -0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_logistic_pieces_stay_on_the_generator_device():
    a, y = L.generic_separable_data(torch.Generator("cuda").manual_seed(0))
    assert a.is_cuda and y.is_cuda
    th = L.soudry_asymptotics(a, y, 1.0)
    assert th.w_hat.is_cuda and th.w_tilde.is_cuda and th.gap(torch.tensor([10.0], device="cuda")).is_cuda
    a1, _ = L.soudry_figure1_data(torch.Generator("cuda").manual_seed(0))
    assert a1.is_cuda
