"""The boundary of trainability is fractal (Sohl-Dickstein 2024).

A two-layer tanh network ``f(x) = (1/h) v^T tanh(W x / sqrt(d))`` (width h = 16, mean-field
output scaling, no biases) is trained by full-batch GD on a square loss with as many examples as
parameters, with one learning rate for the input layer (``eta_in``) and one for the output layer
(``eta_out``). Every pixel of a (eta_in, eta_out) grid is one training run from the *same*
initialization and data; a run converges when the mean of ``loss_t / loss_0`` over the last 20
steps is below 1 (Sohl-Dickstein 2024, Sec. 2). The boundary between converging and diverging
pixels has a box-counting dimension between 1 and 2 (Sec. 3, Fig. 3: 1.17 to 1.98).

The grid trains as one batched computation: the weights of all pixels are one tensor
(P, h, d). On CUDA the step is compiled into fused kernels with ``torch.compile``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gdlab.runtime import check_float, check_int

PAPER_DIMENSION_RANGE = (1.17, 1.98)   # Sohl-Dickstein 2024, Sec. 3 / Fig. 3


@dataclass(frozen=True)
class FractalProblem:
    """Data and shared initialization of the grid: ``x`` (n, d), ``y`` (n,), ``W0`` (h, d), ``v0`` (h,)."""

    x: torch.Tensor
    y: torch.Tensor
    W0: torch.Tensor
    v0: torch.Tensor

    @property
    def num_params(self) -> int:
        return self.W0.numel() + self.v0.numel()


def make_problem(generator: torch.Generator, *, width: int = 16, input_dim: int = 8,
                 dtype=torch.float64, device="cpu") -> FractalProblem:
    """Gaussian inputs and targets with n = number of parameters; standard-normal init."""
    width = check_int("width", width, min=1)
    input_dim = check_int("input_dim", input_dim, min=1)
    n = width * input_dim + width
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(device)  # noqa: E731
    return FractalProblem(draw(n, input_dim), draw(n), draw(width, input_dim), draw(width))


def _losses_and_grads(W, v, x, y):
    """Per-pixel mean-squared loss and its gradients (hand-written backward; all pixels at once).

    Layout (P, h, n) so that both products with the shared data are single large GEMMs."""
    h, d = W.shape[-2], W.shape[-1]
    n = x.shape[0]
    A = torch.tanh(torch.matmul(W, x.T) * (1.0 / math.sqrt(d)))          # (P, h, n)
    r = torch.matmul(v[:, None, :], A)[:, 0, :] * (1.0 / h) - y          # residuals (P, n)
    loss = 0.5 * (r * r).mean(dim=1)
    dout = r * (1.0 / n)                                                 # dL/df
    gv = torch.matmul(A, dout[:, :, None])[:, :, 0] * (1.0 / h)          # (P, h)
    dZ = (v[:, :, None] * dout[:, None, :]) * (1 - A * A) * (1.0 / h)    # (P, h, n)
    gW = torch.matmul(dZ, x) * (1.0 / math.sqrt(d))                      # (P, h, d)
    return loss, gW, gv


def _gd_step(W, v, x, y, eta_in, eta_out):
    loss, gW, gv = _losses_and_grads(W, v, x, y)
    return W - eta_in[:, None, None] * gW, v - eta_out[:, None] * gv, loss


_COMPILED = {}


def _step_fn(fused: bool):
    if not fused:
        return _gd_step
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_gd_step, fullgraph=True, dynamic=False)
    return _COMPILED["step"]


def train_pixels(problem: FractalProblem, eta_in: torch.Tensor, eta_out: torch.Tensor, *, steps: int,
                 fused: bool | None = None, tail: int = 20) -> torch.Tensor:
    """Train one network per (eta_in[p], eta_out[p]); returns ``mean(loss_t / loss_0)`` over the
    last ``tail`` steps (inf/NaN for runs that overflowed), shape (P,)."""
    steps = check_int("steps", steps, min=1)
    tail = min(check_int("tail", tail, min=1), steps)
    dev, dt = problem.W0.device, problem.W0.dtype
    eta_in, eta_out = eta_in.to(dev, dt).reshape(-1), eta_out.to(dev, dt).reshape(-1)
    fused = (dev.type == "cuda") if fused is None else fused
    step = _step_fn(fused)
    P = eta_in.numel()
    W = problem.W0.expand(P, -1, -1).contiguous()
    v = problem.v0.expand(P, -1).contiguous()
    x, y = problem.x, problem.y
    loss0 = None
    acc = torch.zeros(P, dtype=dt, device=dev)
    for t in range(steps):
        W, v, loss = step(W, v, x, y, eta_in, eta_out)
        if loss0 is None:
            loss0 = loss
        if t >= steps - tail:
            acc = acc + loss / loss0
    return acc / tail


def train_grid(problem: FractalProblem, eta_in_range, eta_out_range, resolution: int, *, steps: int,
               chunk: int | None = None, fused: bool | None = None, progress_bar=None) -> torch.Tensor:
    """Converged (True) / diverged (False) image over a log-spaced grid, shape (res, res):
    rows run over ``eta_out`` (bottom to top, increasing), columns over ``eta_in``.

    ``chunk`` networks train at once (default 262144 on CUDA; 256 on CPU, where a chunk's
    (chunk, h, n) intermediates then stay in cache: 4096 at once spent more time in page faults
    than in arithmetic)."""
    resolution = check_int("resolution", resolution, min=2)
    if chunk is None:
        chunk = 262144 if problem.W0.device.type == "cuda" else 256
    chunk = check_int("chunk", chunk, min=1)
    lo_in, hi_in = (check_float("eta_in_range[i]", float(v), min=0.0, open_min=True) for v in eta_in_range)
    lo_out, hi_out = (check_float("eta_out_range[i]", float(v), min=0.0, open_min=True) for v in eta_out_range)
    dt = problem.W0.dtype
    a = torch.logspace(math.log10(lo_in), math.log10(hi_in), resolution, dtype=dt)
    b = torch.logspace(math.log10(lo_out), math.log10(hi_out), resolution, dtype=dt)
    E_out, E_in = torch.meshgrid(b, a, indexing="ij")
    E_in, E_out = E_in.reshape(-1), E_out.reshape(-1)
    out = []
    starts = range(0, E_in.numel(), chunk)
    for s in (starts if progress_bar is None else progress_bar(starts)):
        ratio = train_pixels(problem, E_in[s:s + chunk], E_out[s:s + chunk], steps=steps, fused=fused)
        out.append((ratio < 1).cpu())       # NaN / inf compare False: diverged
    return torch.cat(out).reshape(resolution, resolution)


def boundary(image: torch.Tensor) -> np.ndarray:
    """Pixels whose converged/diverged label differs from the right or upper neighbour's
    (one side only, so that a straight boundary is one pixel thick)."""
    m = np.asarray(image, dtype=bool)
    edge = np.zeros_like(m)
    edge[:, :-1] |= m[:, 1:] != m[:, :-1]
    edge[:-1, :] |= m[1:, :] != m[:-1, :]
    return edge


def box_counting_dimension(image: torch.Tensor, *, min_box: int = 1, max_fraction: float = 0.125) -> float:
    """Box-counting dimension of the converged/diverged boundary: the slope of log N(s) against
    log(1/s), N(s) = number of s x s boxes holding a boundary pixel, over box sizes
    ``min_box .. max_fraction * resolution`` (powers of two). Sohl-Dickstein 2024, Sec. 3."""
    edge = boundary(image)
    res = min(edge.shape)
    sizes, counts = [], []
    s = check_int("min_box", min_box, min=1)
    while s <= max(min_box, int(max_fraction * res)):
        r = (edge.shape[0] // s) * s, (edge.shape[1] // s) * s
        boxes = edge[:r[0], :r[1]].reshape(r[0] // s, s, r[1] // s, s).any(axis=(1, 3))
        sizes.append(s)
        counts.append(max(int(boxes.sum()), 1))
        s *= 2
    if len(sizes) < 2:
        raise ValueError(f"parameter 'image': resolution {res} too small for box counting")
    slope = np.polyfit(np.log(1.0 / np.array(sizes)), np.log(np.array(counts)), 1)[0]
    return float(slope)


def densest_boundary_window(image: torch.Tensor, eta_in_range, eta_out_range, fraction: float):
    """The sub-window (a ``fraction`` of each log-range) holding the most boundary pixels:
    where to zoom next. Returns ``(eta_in_range, eta_out_range)`` of the window."""
    fraction = check_float("fraction", fraction, min=0.0, max=1.0, open_min=True)
    edge = boundary(image).astype(np.int64)
    rows, cols = edge.shape
    wr, wc = max(1, int(round(fraction * rows))), max(1, int(round(fraction * cols)))
    c = np.pad(edge.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = c[wr:, wc:] - c[:-wr, wc:] - c[wr:, :-wc] + c[:-wr, :-wc]     # boxes of wr x wc
    r0, c0 = np.unravel_index(int(np.argmax(counts)), counts.shape)

    def sub(lo_hi, start, width, total):
        lo, hi = math.log10(lo_hi[0]), math.log10(lo_hi[1])
        step = (hi - lo) / (total - 1)
        return 10 ** (lo + start * step), 10 ** (lo + (start + width - 1) * step)

    return sub(eta_in_range, c0, wc, cols), sub(eta_out_range, r0, wr, rows)
