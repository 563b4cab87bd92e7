"""Deep double descent: summaries of MLP sweeps on MNIST-1D over width and over training time
(Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever 2019; Greydanus 2020).

Both statistics are fixed before any curve is looked at, and both read the critical region off
the *training* curve alone: the interpolation point (the first width, or epoch, whose training
error on the noisy labels is about 0) and the band just before it. Nakkiran et al. describe the
peak as a critical *region* around the interpolation threshold, where the effective model
complexity is close to the number of samples; with a fixed number of epochs the widest
networks that just fail to interpolate can be as bad as the first one that succeeds.
"""
from __future__ import annotations

import numpy as np
import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["GREYDANUS_WIDTHS", "GREYDANUS_FINAL", "width_curves", "model_wise_peak",
           "peak_bootstrap", "epoch_wise_peak"]

# Greydanus' final deep-double-descent notebook (github.com/greydanus/mnist1d, commit 9129ceb,
# "Fix the double descent experiment", 2024-06-03, notebooks/deep-double-descent.ipynb): MLP
# 40 -> h -> h -> 10, SGD lr 0.01 momentum 0.9, batch 100, 500 epochs, 4000 train / 12000 test
# samples, one run per width. Errors in %, as printed in the notebook's outputs. "noisy": 15% of
# the training labels redrawn uniformly at random (13.5% wrong); "clean": the same run without.
GREYDANUS_WIDTHS = (2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300)
GREYDANUS_FINAL = {
    "noisy": {"test": (69.59, 67.50, 62.55, 57.45, 54.80, 48.97, 50.28, 47.24, 50.84, 50.69, 52.80, 54.05,
                       54.02, 52.08, 50.23, 48.39, 47.88, 46.54, 45.47),
              "train": (71.68, 68.65, 62.75, 57.95, 54.45, 47.45, 46.47, 39.70, 38.08, 29.55, 19.02, 5.47,
                        0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00)},
    "clean": {"test": (68.53, 66.83, 58.27, 61.37, 54.20, 49.33, 50.08, 44.55, 42.63, 41.02, 41.66, 41.01,
                       41.24, 39.59, 38.61, 38.58, 38.09, 37.10, 37.25),
              "train": (67.15, 63.88, 54.78, 57.23, 48.03, 41.28, 38.40, 28.80, 19.95, 12.05, 1.35, 0.00,
                        0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00)},
}


def width_curves(results, metric: str = "test_error") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final ``metric`` of sweep results (``gdlab.sweep.PointResult``) per width: (widths, mean,
    standard error of the mean) over the seeds of each width (0 for a single seed)."""
    check_choice("metric", metric, ("test_error", "train_error", "test_loss", "train_loss"))
    by_width: dict[int, list[float]] = {}
    for r in results:
        by_width.setdefault(r.point.width, []).append(getattr(r, metric)[-1])
    widths = np.array(sorted(by_width))
    values = [np.array(by_width[w]) for w in widths]
    sem = [v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in values]
    return widths, np.array([v.mean() for v in values]), np.array(sem)


def _critical_region(x, train_error, interpolated, near):
    """Index of the first point with train error <= ``interpolated`` (None if none), the mask of
    the band [x*/near, x*] before it and the mask of the points below x*/near."""
    fitted = np.nonzero(train_error <= interpolated)[0]
    if not len(fitted):
        return None, np.zeros(len(x), dtype=bool), np.zeros(len(x), dtype=bool)
    j = int(fitted[0])
    band = (x >= x[j] / near) & (x <= x[j])
    return j, band, x < x[j] / near


def _check_curves(names, *arrays):
    arrays = [np.asarray(v, dtype=float) for v in arrays]
    if any(a.shape != arrays[0].shape for a in arrays) or arrays[0].ndim != 1 or len(arrays[0]) == 0:
        raise ValueError(f"parameters {names}: got shapes {[a.shape for a in arrays]}; "
                         "expected 1-D arrays of one length")
    if np.any(np.diff(arrays[0]) <= 0):
        raise ValueError(f"parameter {names[0]!r}: got {arrays[0].tolist()}; expected strictly increasing values")
    return arrays


def model_wise_peak(widths, train_error, test_error, interpolated: float = 0.02, near: float = 1.5) -> dict:
    """The model-wise double-descent peak (Nakkiran et al. 2019), from curves of the
    seed-mean train and test error over width.

    The interpolation width h* is the first width whose train error (noisy labels) is at most
    ``interpolated``. The ``peak`` is the largest test error in the critical band
    [h*/near, h*]; ``narrow_best`` the best test error below h*/near; ``widest`` the test error
    of the widest model. Also reported: the test error at h* itself. Without an interpolating
    width, or without a narrow one, the margins are NaN (a claim on them then fails)."""
    widths, train_error, test_error = _check_curves(("widths", "train_error", "test_error"),
                                                    widths, train_error, test_error)
    interpolated = check_float("interpolated", interpolated, min=0.0, max=1.0)
    near = check_float("near", near, min=1.0)
    j, band, narrow = _critical_region(widths, train_error, interpolated, near)
    nan = float("nan")
    out = {"interpolation_width": None, "peak": nan, "peak_width": None, "test_at_interpolation": nan,
           "narrow_best": nan, "widest": float(test_error[-1]), "peak_minus_narrow": nan,
           "peak_minus_widest": nan}
    if j is None:
        return out
    k = int(np.argmax(np.where(band, test_error, -np.inf)))
    peak = float(test_error[k])
    out.update(interpolation_width=int(widths[j]), peak=peak, peak_width=int(widths[k]),
               test_at_interpolation=float(test_error[j]), peak_minus_widest=peak - float(test_error[-1]))
    if narrow.any():
        best = float(test_error[narrow].min())
        out.update(narrow_best=best, peak_minus_narrow=peak - best)
    return out


def peak_bootstrap(widths, train_error, test_error, generator, draws: int = 1000,
                   interpolated: float = 0.02, near: float = 1.5) -> dict[str, float]:
    """Standard errors of :func:`model_wise_peak`'s margins over seeds, by the bootstrap.

    ``train_error`` and ``test_error`` are (seeds, widths): one row per seed. Each of ``draws``
    resamples draws as many rows with replacement (indices from the ``torch.Generator``
    ``generator``), averages them and recomputes the statistic, h* and the band included. The
    standard error is the spread of the resampled margins (NaN with one seed, or where a resample
    has no interpolating or no narrow width). This is the error of the statistic as reported, on
    the seed-mean curves; the spread of per-seed margins, each with its own best narrow width,
    understates it."""
    widths = np.asarray(widths)
    train_error, test_error = np.asarray(train_error, dtype=float), np.asarray(test_error, dtype=float)
    if train_error.ndim != 2 or train_error.shape != test_error.shape or train_error.shape[1] != len(widths):
        raise ValueError(f"parameters 'train_error', 'test_error': got shapes {train_error.shape} and "
                         f"{test_error.shape}; expected (seeds, {len(widths)}) both")
    draws = check_int("draws", draws, min=2)
    seeds = train_error.shape[0]
    keys = ("peak_minus_narrow", "peak_minus_widest")
    if seeds < 2:
        return {k: float("nan") for k in keys}
    rows = torch.randint(seeds, (draws, seeds), generator=generator, device=generator.device).cpu().numpy()
    boot = np.array([[model_wise_peak(widths, train_error[r].mean(0), test_error[r].mean(0),
                                      interpolated, near)[k] for k in keys] for r in rows])
    return {k: float(boot[:, i].std(ddof=1)) for i, k in enumerate(keys)}


def epoch_wise_peak(epochs, train_error, test_error, interpolated: float = 0.02, near: float = 1.5,
                    smooth: int = 5, final: float = 0.1) -> dict:
    """The epoch-wise double-descent peak (Nakkiran et al. 2019), from the seed-mean
    train and test error over training epochs, with the same rule as :func:`model_wise_peak`.

    The test curve is first smoothed by a centered moving average over ``smooth`` evaluations.
    The interpolation epoch t* is the first epoch whose train error is at most ``interpolated``;
    ``peak`` is the largest smoothed test error over [t*/near, near t*]; ``early_best`` the best
    smoothed test error before t*/near (the first descent); ``final`` the mean raw test error
    over the last fraction ``final`` of the epochs. ``rise`` = peak - early_best and ``fall`` =
    peak - final: both positive for a fall-rise-fall curve. NaN without an interpolation epoch."""
    epochs, train_error, test_error = _check_curves(("epochs", "train_error", "test_error"),
                                                    epochs, train_error, test_error)
    interpolated = check_float("interpolated", interpolated, min=0.0, max=1.0)
    near = check_float("near", near, min=1.0)
    smooth = check_int("smooth", smooth, min=1)
    final = check_float("final", final, min=0.0, max=1.0, open_min=True)
    pad = smooth // 2
    padded = np.concatenate([np.full(pad, test_error[0]), test_error, np.full(smooth - 1 - pad, test_error[-1])])
    smoothed = np.convolve(padded, np.ones(smooth) / smooth, mode="valid")
    tail = epochs >= epochs[-1] - final * (epochs[-1] - epochs[0])
    nan = float("nan")
    out = {"interpolation_epoch": None, "peak": nan, "peak_epoch": None, "early_best": nan,
           "final": float(test_error[tail].mean()), "rise": nan, "fall": nan, "smoothed": smoothed}
    fitted = np.nonzero(train_error <= interpolated)[0]
    if not len(fitted):
        return out
    t_star = epochs[int(fitted[0])]
    band = (epochs >= t_star / near) & (epochs <= near * t_star) & ~tail
    early = epochs < t_star / near
    if not band.any():
        return out
    k = int(np.argmax(np.where(band, smoothed, -np.inf)))
    peak = float(smoothed[k])
    out.update(interpolation_epoch=int(t_star), peak=peak, peak_epoch=int(epochs[k]), fall=peak - out["final"])
    if early.any():
        out.update(early_best=float(smoothed[early].min()), rise=peak - float(smoothed[early].min()))
    return out
