"""The Hessian spectrum of a trained classifier: a bulk near zero plus outliers.

Sagun, Evci, Guney, Dauphin & Bottou 2017 find that the Hessian spectrum of a classifier is a
bulk near zero plus a few outliers away from it; with the data fixed, adding parameters merely
scales the bulk, while changing the data (adding clusters, or making the data less separable)
affects the outliers. Papyan 2019/2020 traces the outliers of the cross-entropy Hessian to the
class means of the logit gradients, about one outlier per class.

:func:`mixture_classifier_spectrum` trains a one-hidden-layer network (ReLU by default, the
activation of Papyan's networks; or tanh) by full-batch GD on a Gaussian mixture with one or
more clusters per class, and returns its top eigenvalues (Lanczos), the number of outliers
(:func:`outlier_count`) and the SLQ density (:func:`gdlab.hessian.spectral_density`). The number
of network outputs can exceed the number of classes (the extra outputs are never a label), which
separates the number of label values from the number of outputs.

What the count measures on these networks: after training, outputs that are never a label carry
a probability near zero, and the outliers are carried mostly by the softmax's C - 1 directions in
the output layer times the hidden features' common mean, which is the same for every class
(shuffled labels give the same count). ReLU features are non-negative with a large common mean,
so the C - 1 stand well apart; tanh features are nearly centred, and the ratio at the cut falls
close to the next ratio (:func:`feature_mean_ratio` measures the mean, :func:`outlier_gaps` the
ratios). Before training every output carries a probability of about 1/K and the count follows
the K outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gdlab import data, hessian
from gdlab.runtime import check_choice, check_float, check_int
from gdlab.stability import eos

__all__ = [
    "cross_entropy", "LOSSES", "ACTIVATIONS", "Spectrum", "outlier_count", "outlier_gaps",
    "mixture_classifier_spectrum", "feature_mean_ratio", "eigenvalue_count"
]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy, mean over the batch (the loss of Sagun et al. 2017 and Papyan 2020)."""
    return torch.nn.functional.cross_entropy(outputs, targets)


LOSSES = {"cross_entropy": cross_entropy, "mse": eos.cohen_mse}
ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


@dataclass(frozen=True)
class Spectrum:
    """``top``: the largest Hessian eigenvalues, descending; ``n_outliers``: how many of them lie
    above the largest gap; ``grid``/``density``: the SLQ spectral density (None if not asked);
    ``num_params``; ``train_accuracy`` and ``train_loss`` where the spectrum was taken;
    ``feature_mean_ratio`` (see :func:`feature_mean_ratio`)."""

    top: torch.Tensor
    n_outliers: int
    grid: torch.Tensor | None
    density: torch.Tensor | None
    num_params: int
    train_accuracy: float
    train_loss: float
    feature_mean_ratio: float = float("nan")

    @property
    def gaps(self) -> tuple[float, float]:
        """See :func:`outlier_gaps`."""
        return outlier_gaps(self.top)


def _gap_ratios(eigenvalues) -> torch.Tensor:
    """The ratios ``lambda_i / lambda_{i+1}`` of validated top eigenvalues (sorted descending;
    values below 1e-12 count as 1e-12)."""
    vals = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    if vals.numel() < 2:
        raise ValueError(f"parameter 'eigenvalues': got {vals.numel()} values; expected at least 2")
    if bool((vals[:-1] < vals[1:]).any()):
        raise ValueError("parameter 'eigenvalues': expected them sorted in descending order")
    vals = vals.clamp_min(1e-12)
    return vals[:-1] / vals[1:]


def outlier_count(eigenvalues: torch.Tensor) -> int:
    """Number of eigenvalues above the largest *ratio* gap ``lambda_i / lambda_{i+1}`` among the
    given top eigenvalues (sorted descending; values below 1e-12 count as 1e-12)."""
    return int(torch.argmax(_gap_ratios(eigenvalues))) + 1


def outlier_gaps(eigenvalues: torch.Tensor) -> tuple[float, float]:
    """``(gap, runner_up)``: the largest ratio ``lambda_i / lambda_{i+1}`` among the given top
    eigenvalues (sorted descending), the one :func:`outlier_count` cuts at, and the largest of the
    others: how far the outliers stand apart, against the spread inside the groups."""
    ratios = _gap_ratios(eigenvalues).sort(descending=True).values
    return float(ratios[0]), float(ratios[1]) if ratios.numel() > 1 else 1.0


def feature_mean_ratio(features: torch.Tensor) -> float:
    """``|mean|^2 / lambda_max(covariance)`` of hidden features (n, h): how far their common
    mean stands above their largest direction of variation (NaN if a feature is not finite)."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"parameter 'features': got shape {tuple(f.shape)}; expected (n >= 2, h)")
    if not bool(torch.isfinite(f).all()):
        return float("nan")                 # a diverged network
    mean = f.mean(0)
    # the largest singular value of the centred features (an SVD: dead ReLU units make the
    # covariance exactly singular, where a symmetric eigensolver can fail to converge)
    top = torch.linalg.svdvals(f - mean)[0] ** 2 / f.shape[0]
    return float(mean @ mean / top.clamp_min(1e-300))


def mixture_classifier_spectrum(hidden: int, num_classes: int, generator: torch.Generator, *,
                                outputs: int | None = None, loss: str = "cross_entropy",
                                activation: str = "relu", clusters_per_class: int = 1,
                                shuffle_labels: bool = False, n_per_class: int = 100,
                                dim: int = 20, separation: float = 3.0, eta: float = 0.5, steps: int = 100,
                                k: int | None = None, density: bool = False, n_vectors: int = 3, n_steps: int = 60,
                                grid: torch.Tensor | None = None, sigma: float | None = None,
                                dtype=torch.float64, device=None) -> Spectrum:
    """Train a ``[dim, hidden, outputs]`` network with ``activation`` hidden units (PyTorch's
    default initialization) on a ``num_classes``-cluster Gaussian mixture (``n_per_class *
    num_classes`` points, cluster means of norm ``separation``) by ``steps`` of GD at step ``eta``
    on ``loss``, and measure its Hessian spectrum (Sagun et al. 2017; Papyan 2020).

    ``outputs`` defaults to ``num_classes``; ``k`` (default ``2 * outputs + 4``) top eigenvalues
    are computed. With ``clusters_per_class`` above 1 the mixture has that many clusters per class
    (cluster j has label j mod num_classes); with ``shuffle_labels`` the labels are permuted at
    random after the network is drawn (the same data and initialization, labels that say nothing
    about the clusters). Data, initialization and probes all come from ``generator``; the network lives on
    ``device`` (default: the generator's). ``grid``/``sigma`` go to
    :func:`gdlab.hessian.spectral_density` when ``density`` is set."""
    hidden = check_int("hidden", hidden, min=1)
    num_classes = check_int("num_classes", num_classes, min=2)
    outputs = num_classes if outputs is None else check_int("outputs", outputs, min=num_classes)
    k = 2 * outputs + 4 if k is None else check_int("k", k, min=2)
    check_choice("loss", loss, list(LOSSES))
    check_choice("activation", activation, list(ACTIVATIONS))
    check_float("separation", separation, min=0.0)
    clusters = num_classes * check_int("clusters_per_class", clusters_per_class, min=1)
    loss_fn = LOSSES[loss]
    mix = data.gaussian_mixture(n_per_class * num_classes, dim, clusters, generator, separation=separation)
    net = eos.tanh_mlp([dim, hidden, outputs], generator, dtype=dtype, device=device)
    net[1] = ACTIVATIONS[activation]()   # the same layers and initialization, another activation
    dev = next(net.parameters()).device
    y = mix.y % num_classes
    if shuffle_labels:
        y = y[torch.randperm(y.numel(), generator=generator, device=generator.device)]
    x, y = mix.x.to(device=dev, dtype=dtype), y.to(dev)
    params = list(net.parameters())
    for _ in range(check_int("steps", steps, min=0)):
        grads = torch.autograd.grad(loss_fn(net(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= eta * g
    with torch.no_grad():
        features = net[1](net[0](x))
        out = net[2](features)
        acc, final = float((out.argmax(dim=1) == y).double().mean()), float(loss_fn(out, y))
        mean_ratio = feature_mean_ratio(features)
    top, _ = hessian.top_eigenpairs(net, loss_fn, (x, y), k=min(k, hessian.num_params(net)), tol=1e-6,
                                    generator=generator)
    top = top.detach().cpu()
    grid_out = dens = None
    if density:
        grid_out, dens = hessian.spectral_density(net, loss_fn, (x, y), n_vectors=n_vectors, n_steps=n_steps,
                                                  generator=generator, grid=grid, sigma=sigma)
    return Spectrum(top, outlier_count(top), grid_out, dens, hessian.num_params(net), acc, final, mean_ratio)


def eigenvalue_count(spec: Spectrum, lo: float, hi: float) -> float:
    """SLQ estimate of the number of Hessian eigenvalues in ``[lo, hi]``: ``num_params`` times the
    density's mass there (the density of states; Lin, Saad & Yang 2016)."""
    lo, hi = check_float("lo", lo), check_float("hi", hi)
    if not lo < hi:
        raise ValueError(f"parameters 'lo', 'hi': got [{lo}, {hi}]; expected lo < hi")
    if spec.density is None:
        raise ValueError("parameter 'spec': it has no density (pass density=True)")
    inside = (spec.grid >= lo) & (spec.grid <= hi)
    if int(inside.sum()) < 2:
        return 0.0
    return float(spec.num_params * torch.trapezoid(spec.density[inside], spec.grid[inside]))
