import pytest
import torch

from gdlab import data


def test_mnist1d_is_procedural_and_standard_sized():
    split = data.mnist1d(num_samples=200, seed=3)
    assert split.x.shape == (160, 40) and split.x_test.shape == (40, 40) and split.num_classes == 10
    again = data.mnist1d(num_samples=200, seed=3)
    assert torch.equal(split.x, again.x)
    with pytest.raises(ValueError, match="parameter 'bogus'"):
        data.mnist1d(num_samples=200, bogus=1)


def test_label_noise_flips_to_incorrect_labels_at_rate_p():
    y = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(0))
    noisy = data.label_noise(y, 0.15, 10, torch.Generator().manual_seed(1))
    flipped = (noisy != y).float().mean().item()
    assert abs(flipped - 0.15) < 0.01 and noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(data.label_noise(y, 0.0, 10, torch.Generator()), y)


def test_greydanus_label_noise_redraws_any_class():
    """Greydanus' notebook redraws 15% of the labels uniformly among all 10 classes: the true
    label comes back a tenth of the time, so 13.5% of the labels are wrong."""
    y = torch.randint(0, 10, (50000,), generator=torch.Generator().manual_seed(0))
    noisy = data.label_noise(y, 0.15, 10, torch.Generator().manual_seed(1), kind="uniform")
    wrong = (noisy != y).double().mean().item()
    assert data.wrong_label_rate(0.15, 10, "uniform") == pytest.approx(0.135)
    assert abs(wrong - 0.135) < 4 * (0.135 * 0.865 / 50000) ** 0.5
    assert data.wrong_label_rate(0.15, 10) == 0.15
    with pytest.raises(ValueError, match="kind"):
        data.label_noise(y, 0.1, 10, torch.Generator(), kind="random")


def test_the_two_noise_kinds_have_one_law_at_matched_rates():
    """Nakkiran-style noise at rate wrong_label_rate(p) draws every (true, noisy) pair with the
    same probability as Greydanus-style noise at rate p: compare the 10 x 10 transition
    frequencies (chi-square, 90 free cells)."""
    n, K = 200000, 10
    y = torch.arange(n) % K
    a = data.label_noise(y, 0.15, K, torch.Generator().manual_seed(2), kind="uniform")
    b = data.label_noise(y, data.wrong_label_rate(0.15, K, "uniform"), K, torch.Generator().manual_seed(3))
    ca = torch.bincount(y * K + a, minlength=K * K).double()
    cb = torch.bincount(y * K + b, minlength=K * K).double()
    chi2 = float(((ca - cb) ** 2 / (ca + cb).clamp_min(1)).sum())
    assert chi2 < 90 + 5 * (2 * 90) ** 0.5  # the 99.99th percentile is about 90 + 3.7 sqrt(180)


def test_label_noise_consumes_the_same_draws_at_any_rate():
    """Clean and noisy runs of one seed share every later draw (initialization, minibatch order):
    the noise consumes the same random numbers whatever its rate."""
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    after = []
    for p in (0.0, 0.3):
        for kind in ("incorrect", "uniform"):
            g = torch.Generator().manual_seed(5)
            data.label_noise(y, p, 10, g, kind=kind)
            after.append(torch.rand(4, generator=g))
    assert all(torch.equal(a, after[0]) for a in after)


def test_label_noise_draws_on_the_generators_device():
    y = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(0))
    for kind in ("incorrect", "uniform"):
        noisy = data.label_noise(y, 0.5, 10, torch.Generator(), kind=kind)
        assert noisy.device == y.device and noisy.dtype == y.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_label_noise_on_cuda_generator():
    y = torch.randint(0, 10, (100,))
    noisy = data.label_noise(y, 0.5, 10, torch.Generator(device="cuda").manual_seed(0), kind="uniform")
    assert noisy.device == y.device


def test_digits_two_classes_and_mixture():
    split = data.digits(classes=(3, 8))
    assert set(split.y.tolist()) == {0, 1} and split.x.max() <= 1.0
    mix = data.gaussian_mixture(50, 4, 3, torch.Generator().manual_seed(0), n_test=10)
    assert mix.x.shape == (50, 4) and mix.x_test.shape == (10, 4)


def test_vader_lexicon_ships_offline():
    lex = data.vader_lexicon()
    assert len(lex) > 7000 and lex["good"][0] > 0 > lex["bad"][0]
