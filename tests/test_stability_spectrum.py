"""Tests for gdlab.stability.spectrum: outlier counting and the trained-classifier spectrum."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab.stability import spectrum

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@settings(max_examples=30, deadline=None)
@given(n_out=st.integers(1, 12), n_bulk=st.integers(1, 12), seed=st.integers(0, 1000))
def test_outlier_count_finds_the_planted_gap(n_out, n_bulk, seed):
    """Exact: outliers in [50, 60], bulk in [0.5, 1]; every within-group ratio is < 2 < 50."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.cat([50 + 10 * torch.rand(n_out, generator=g, dtype=torch.float64),
                      0.5 + 0.5 * torch.rand(n_bulk, generator=g, dtype=torch.float64)])
    assert spectrum.outlier_count(vals.sort(descending=True).values) == n_out


def test_outlier_count_validation():
    with pytest.raises(ValueError, match="'eigenvalues'"):
        spectrum.outlier_count(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="descending"):
        spectrum.outlier_count(torch.tensor([1.0, 2.0]))


def test_cross_entropy_is_torchs():
    out = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(spectrum.cross_entropy(out, y), torch.nn.functional.cross_entropy(out, y))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mixture_classifier_spectrum_small(loss):
    s = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), n_per_class=20, dim=5,
                                             steps=20, loss=loss)
    assert s.top.shape == (3 * 2 + 4,) and bool((s.top[:-1] >= s.top[1:]).all())
    assert 1 <= s.n_outliers <= 9 and s.num_params == 5 * 8 + 8 + 8 * 3 + 3
    assert s.density is None and 0 <= s.train_accuracy <= 1
    with pytest.raises(ValueError, match="'num_classes'"):
        spectrum.mixture_classifier_spectrum(8, 1, torch.Generator())
    with pytest.raises(ValueError, match="'outputs'"):
        spectrum.mixture_classifier_spectrum(8, 3, torch.Generator(), outputs=2)


def test_extra_outputs_are_never_labels():
    s = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), outputs=6, n_per_class=20,
                                             dim=5, steps=20, k=10)
    assert s.num_params == 5 * 8 + 8 + 8 * 6 + 6 and s.top.shape == (10,)


def test_eigenvalue_count_counts_parameters_and_uses_the_shared_grid():
    """Over the whole grid the SLQ count is P (the density integrates to 1); a passed grid and sigma are used."""
    grid = torch.linspace(-20, 80, 1001, dtype=torch.float64)
    s = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), n_per_class=20, dim=5,
                                             steps=20, k=6, n_steps=20, grid=grid, sigma=0.5, density=True,
                                             loss="mse")
    assert torch.equal(s.grid, grid)
    assert spectrum.eigenvalue_count(s, -20.0, 80.0) == pytest.approx(s.num_params, rel=1e-9)
    assert spectrum.eigenvalue_count(s, 100.0, 200.0) == 0.0
    with pytest.raises(ValueError, match="'lo', 'hi'"):
        spectrum.eigenvalue_count(s, 1.0, 1.0)
    no_density = spectrum.mixture_classifier_spectrum(8, 3, torch.Generator().manual_seed(0), n_per_class=20,
                                                      dim=5, steps=2, k=4)
    with pytest.raises(ValueError, match="density"):
        spectrum.eigenvalue_count(no_density, 0.0, 1.0)


@needs_cuda
def test_cuda_generator_trains_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    s = spectrum.mixture_classifier_spectrum(8, 3, g, n_per_class=20, dim=5, steps=10, k=6, density=True,
                                             n_steps=10)
    assert s.top.device.type == "cpu" and s.top.shape == (6,) and s.density is not None


def test_outlier_gaps_are_the_cut_and_the_runner_up():
    vals = torch.tensor([40.0, 30.0, 20.0, 5.0, 4.0, 1.0], dtype=torch.float64)
    gap, runner_up = spectrum.outlier_gaps(vals)
    assert gap == pytest.approx(4.0) and runner_up == pytest.approx(4.0)   # 20/5, then 4/1
    gap, runner_up = spectrum.outlier_gaps(torch.tensor([9.0, 3.0, 2.0], dtype=torch.float64))
    assert (gap, runner_up) == (pytest.approx(3.0), pytest.approx(1.5))
    with pytest.raises(ValueError, match="descending"):
        spectrum.outlier_gaps(torch.tensor([1.0, 2.0]))


def test_feature_mean_ratio_is_mean_over_top_variance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    ratio = spectrum.feature_mean_ratio(z + torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64))
    assert ratio == pytest.approx(25.0 / 4.0, rel=0.05)          # |mean|^2 = 25, top variance 4
    assert math.isnan(spectrum.feature_mean_ratio(torch.full((4, 2), math.inf)))
    with pytest.raises(ValueError, match="'features'"):
        spectrum.feature_mean_ratio(torch.ones(5))


def test_activation_is_a_choice_and_relu_features_have_the_larger_mean():
    kw = dict(n_per_class=20, dim=5, steps=20, k=8)
    relu = spectrum.mixture_classifier_spectrum(16, 3, torch.Generator().manual_seed(0), activation="relu", **kw)
    tanh = spectrum.mixture_classifier_spectrum(16, 3, torch.Generator().manual_seed(0), activation="tanh", **kw)
    assert relu.num_params == tanh.num_params and not torch.equal(relu.top, tanh.top)
    assert relu.feature_mean_ratio > tanh.feature_mean_ratio
    assert relu.gaps[0] >= relu.gaps[1]
    with pytest.raises(ValueError, match="'activation'"):
        spectrum.mixture_classifier_spectrum(16, 3, torch.Generator(), activation="gelu", **kw)


def test_clusters_per_class_and_shuffled_labels(monkeypatch):
    """Two clusters per class draw a mixture of 2C clusters whose labels are j mod C; shuffled
    labels are a permutation of the drawn ones (the same counts), drawn after the network."""
    seen = {}
    real_mixture = spectrum.data.gaussian_mixture

    def spy(n, dim, num_clusters, generator, **kw):
        seen["clusters"] = num_clusters
        return real_mixture(n, dim, num_clusters, generator, **kw)

    monkeypatch.setattr(spectrum.data, "gaussian_mixture", spy)
    kw = dict(n_per_class=20, dim=5, steps=5, k=8)
    two = spectrum.mixture_classifier_spectrum(16, 3, torch.Generator().manual_seed(0), clusters_per_class=2, **kw)
    assert seen["clusters"] == 6 and two.num_params == 5 * 16 + 16 + 16 * 3 + 3
    plain = spectrum.mixture_classifier_spectrum(16, 3, torch.Generator().manual_seed(0), **kw)
    shuffled = spectrum.mixture_classifier_spectrum(16, 3, torch.Generator().manual_seed(0), shuffle_labels=True, **kw)
    assert seen["clusters"] == 3 and not torch.equal(plain.top, shuffled.top)
    with pytest.raises(ValueError, match="'clusters_per_class'"):
        spectrum.mixture_classifier_spectrum(16, 3, torch.Generator(), clusters_per_class=0, **kw)
