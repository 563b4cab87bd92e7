"""Tests for gdlab.double_descent.deep: the peak statistics on synthetic curves and on
Greydanus' published curves (his noisy run has the peak, his clean run does not)."""
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from gdlab.double_descent import deep


def test_model_wise_peak_on_a_synthetic_curve():
    widths = [2, 4, 8, 16, 32, 64]
    train = [0.6, 0.4, 0.2, 0.10, 0.01, 0.0]
    test = [0.60, 0.50, 0.52, 0.59, 0.58, 0.45]
    pk = deep.model_wise_peak(widths, train, test)
    # h* = 32 comes from the train curve alone; the band is [32/1.5, 32] = {32}; narrow: 2..16
    assert pk["interpolation_width"] == 32 and pk["peak"] == 0.58 and pk["peak_width"] == 32
    assert pk["narrow_best"] == 0.50 and pk["widest"] == 0.45
    assert pk["peak_minus_narrow"] == pytest.approx(0.08) and pk["peak_minus_widest"] == pytest.approx(0.13)
    band = deep.model_wise_peak(widths, train, test, near=2.0)  # band {16, 32}: the top of the band
    assert band["peak"] == 0.59 and band["peak_width"] == 16 and band["test_at_interpolation"] == 0.58
    never = deep.model_wise_peak(widths, [0.5] * 6, test)
    assert never["interpolation_width"] is None and math.isnan(never["peak_minus_narrow"])
    assert math.isnan(deep.model_wise_peak(widths, [0.0] * 6, test)["peak_minus_narrow"])  # no narrow width


def test_model_wise_peak_on_greydanus_final_notebook():
    """His noisy run: h* = 61, peak 54.05% at h = 47, 6.8 points above h = 16 and 8.6 above h = 300;
    his clean run: h* = 36 and the band is below the best narrow width (no peak)."""
    w = deep.GREYDANUS_WIDTHS
    noisy, clean = (deep.GREYDANUS_FINAL[k] for k in ("noisy", "clean"))
    pk = deep.model_wise_peak(w, np.array(noisy["train"]) / 100, np.array(noisy["test"]) / 100)
    assert pk["interpolation_width"] == 61 and pk["peak_width"] == 47
    assert pk["peak_minus_narrow"] == pytest.approx(0.0681) and pk["peak_minus_widest"] == pytest.approx(0.0858)
    ck = deep.model_wise_peak(w, np.array(clean["train"]) / 100, np.array(clean["test"]) / 100)
    assert ck["interpolation_width"] == 36 and ck["peak_minus_narrow"] == pytest.approx(-0.0097)
    assert len(w) == 19 and all(len(v) == 19 for run in deep.GREYDANUS_FINAL.values() for v in run.values())


def test_peak_bootstrap_matches_the_analytic_error_of_a_fixed_difference():
    """With one band width and one competitive narrow width, the margin is a difference of two seed
    means, whose standard error is known; the bootstrap finds it, and is reproducible."""
    import torch

    rng = np.random.default_rng(0)
    S, widths = 40, [2, 4, 8, 16, 32]
    train = np.tile([0.5, 0.4, 0.3, 0.0, 0.0], (S, 1))  # h* = 16: band {16}, narrow {2, 4, 8}
    test = np.column_stack([np.full(S, 0.9), np.full(S, 0.8), 0.50 + 0.02 * rng.standard_normal(S),
                            0.56 + 0.03 * rng.standard_normal(S), np.full(S, 0.4)])
    se = deep.peak_bootstrap(widths, train, test, torch.Generator().manual_seed(1), draws=4000)
    want = (test[:, 3] - test[:, 2]).std(ddof=1) / np.sqrt(S)
    assert se["peak_minus_narrow"] == pytest.approx(want, rel=0.1)
    assert se["peak_minus_widest"] == pytest.approx(test[:, 3].std(ddof=1) / np.sqrt(S), rel=0.1)
    again = deep.peak_bootstrap(widths, train, test, torch.Generator().manual_seed(1), draws=4000)
    assert again == se
    assert all(math.isnan(v) for v in deep.peak_bootstrap(widths, train[:1], test[:1],
                                                          torch.Generator()).values())
    with pytest.raises(ValueError, match="shapes"):
        deep.peak_bootstrap(widths, train, test[:, :4], torch.Generator())


def test_model_wise_peak_validates_its_inputs():
    with pytest.raises(ValueError, match="widths"):
        deep.model_wise_peak([4, 2], [0.1, 0.0], [0.5, 0.4])
    with pytest.raises(ValueError, match="shapes"):
        deep.model_wise_peak([2, 4], [0.1], [0.5, 0.4])
    with pytest.raises(ValueError, match="interpolated"):
        deep.model_wise_peak([2, 4], [0.1, 0.0], [0.5, 0.4], interpolated=2.0)


def test_epoch_wise_peak_on_synthetic_curves():
    epochs = np.arange(0, 101, 2)
    train = np.clip(0.5 - epochs / 80, 0, None)              # fits the noisy labels at epoch 40
    bump = 0.30 + 0.1 * np.exp(-((epochs - 40) / 8.0) ** 2)  # peak at the interpolation epoch
    test = np.where(epochs < 10, 0.9 - 0.06 * epochs, bump)
    ep = deep.epoch_wise_peak(epochs, train, test, smooth=1)
    assert ep["interpolation_epoch"] == 40 and ep["peak_epoch"] == 40
    assert ep["rise"] == pytest.approx(0.1, abs=1e-3) and ep["fall"] == pytest.approx(0.1, abs=1e-3)
    flat = deep.epoch_wise_peak(epochs, train, np.maximum(0.9 - 0.02 * epochs, 0.3), smooth=5)
    assert flat["rise"] < 0  # a monotone curve has no rise, whatever its fall
    assert deep.epoch_wise_peak(epochs, np.full(len(epochs), 0.5), test)["interpolation_epoch"] is None


def test_width_curves_average_over_seeds():
    results = [NS(point=NS(width=w), test_error=[0.9, e]) for w, e in ((4, 0.5), (4, 0.7), (2, 0.8))]
    widths, mean, sem = deep.width_curves(results)
    assert list(widths) == [2, 4] and mean == pytest.approx([0.8, 0.6])
    assert sem == pytest.approx([0.0, 0.1])  # std (ddof 1) 0.1414 / sqrt(2)
