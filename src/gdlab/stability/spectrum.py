"""The Hessian spectrum of a trained classifier: a bulk near zero plus outliers.

Sagun, Evci, Guney, Dauphin & Bottou 2017 (Sec. 3) and Ghorbani, Krishnan & Xiao 2019 (Fig. 2)
find that the Hessian of a trained classifier has a bulk of eigenvalues near zero and a few
large outliers, about one per class; Papyan 2018 traces the outliers to the class means of the
gradients. Sagun et al. add that the bulk follows the architecture (more parameters, more bulk
eigenvalues) while the outliers follow the data (more clusters, more outliers).

:func:`mixture_classifier_spectrum` trains a tanh MLP on a Gaussian mixture with full-batch GD on
Cohen et al.'s square loss and returns its top eigenvalues (Lanczos), the number of outliers
(:func:`outlier_count`) and the SLQ density (:func:`gdlab.hessian.spectral_density`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gdlab import data, hessian
from gdlab.runtime import check_float, check_int
from gdlab.stability import eos


@dataclass(frozen=True)
class Spectrum:
    """``top``: the largest Hessian eigenvalues, descending; ``n_outliers``: how many of them lie
    above the largest gap; ``grid``/``density``: the SLQ spectral density (integrates to 1)."""

    top: torch.Tensor
    n_outliers: int
    grid: torch.Tensor
    density: torch.Tensor
    num_params: int


def outlier_count(eigenvalues: torch.Tensor) -> int:
    """Number of eigenvalues above the largest *ratio* gap ``lambda_i / lambda_{i+1}`` among the
    given top eigenvalues (sorted descending; values below 1e-12 count as 1e-12)."""
    vals = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    if vals.numel() < 2:
        raise ValueError(f"parameter 'eigenvalues': got {vals.numel()} values; expected at least 2")
    if bool((vals[:-1] < vals[1:]).any()):
        raise ValueError("parameter 'eigenvalues': expected them sorted in descending order")
    vals = vals.clamp_min(1e-12)
    return int(torch.argmax(vals[:-1] / vals[1:])) + 1


def mixture_classifier_spectrum(hidden: int, num_classes: int, generator: torch.Generator, *, n: int = 600,
                                dim: int = 20, separation: float = 20.0, eta: float = 0.2, steps: int = 300,
                                k: int = 20, n_vectors: int = 3, n_steps: int = 60, grid: torch.Tensor | None = None,
                                sigma: float | None = None, dtype=torch.float32, device="cpu") -> Spectrum:
    """Train ``[dim, hidden, num_classes]`` tanh MLP on an ``num_classes``-cluster Gaussian mixture
    (``n`` points) by ``steps`` of GD at step ``eta`` and measure its Hessian spectrum
    (Sagun et al. 2017; Ghorbani et al. 2019). Data, initialization and probes all come from
    ``generator``. ``grid`` and ``sigma`` go to :func:`gdlab.hessian.spectral_density` (pass the
    same ones to compare densities across runs)."""
    hidden = check_int("hidden", hidden, min=1)
    num_classes = check_int("num_classes", num_classes, min=2)
    k = check_int("k", k, min=2)
    check_float("separation", separation, min=0.0)
    mix = data.gaussian_mixture(n, dim, num_classes, generator, separation=separation)
    net = eos.tanh_mlp([dim, hidden, num_classes], generator, dtype=dtype, device=device)
    x, y = mix.x.to(device=device, dtype=dtype), mix.y.to(device)
    eos.train_gd(net, x, y, eta=eta, steps=steps, sharpness_every=steps + 1)
    top, _ = hessian.top_eigenpairs(net, eos.cohen_mse, (x, y), k=k, generator=generator)
    grid, density = hessian.spectral_density(net, eos.cohen_mse, (x, y), n_vectors=n_vectors, n_steps=n_steps,
                                             generator=generator, grid=grid, sigma=sigma)
    return Spectrum(top.cpu(), outlier_count(top.cpu()), grid, density, hessian.num_params(net))


def eigenvalue_count(spec: Spectrum, lo: float, hi: float) -> float:
    """SLQ estimate of the number of Hessian eigenvalues in ``[lo, hi]``: ``num_params`` times the
    density's mass there (the density of states; Lin, Saad & Yang 2016)."""
    lo, hi = check_float("lo", lo), check_float("hi", hi)
    if not lo < hi:
        raise ValueError(f"parameters 'lo', 'hi': got [{lo}, {hi}]; expected lo < hi")
    inside = (spec.grid >= lo) & (spec.grid <= hi)
    if int(inside.sum()) < 2:
        return 0.0
    return float(spec.num_params * torch.trapezoid(spec.density[inside], spec.grid[inside]))
