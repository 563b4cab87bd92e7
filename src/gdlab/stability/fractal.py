"""The boundary of trainability is fractal (Sohl-Dickstein 2024).

Sohl-Dickstein's setup (his notebook ``the_boundary_of_neural_network_trainability_is_fractal``,
"tanh full batch"): a two-layer tanh network in mean-field parametrization without biases,

    f(x) = (1/h) v^T tanh(sqrt(2) W x / sqrt(d)),      width h = 16, input dimension d = 16,

trained by full-batch GD on ``mean((f(x_i) - y_i)^2)`` with as many examples as parameters
(n = h d + h = 272); weights, inputs and targets are standard normal. The input layer has its own
step size ``eta_in`` and the output layer ``eta_out``. Every pixel of a log-spaced
(eta_in, eta_out) grid is one training run from the *same* initialization and data, for 500 or
1000 steps; a run converges when the mean of ``loss_t / loss_0`` over its last 20 steps is below 1.

His fractal dimension: boundary pixels are the 2x2 neighbourhoods holding both outcomes; porespy's
``boxcount`` counts tiles of sizes log-spaced from 10 pixels to the image side that hold some, but
not only, boundary pixels, and its local slopes ``-d log N / d log s`` are pooled over every image
of a zoom sequence; the dimension is their median. He reports 1.17 to 1.98 across six conditions
(Sohl-Dickstein 2024, Fig. 2 and Sec. 3).

The grid trains as one batched computation: the weights of all pixels are one tensor (P, h, d),
so both products with the shared data are single large GEMMs. Runs whose loss is no longer
finite are dropped from the batch (a NaN or infinite loss stays so: those pixels diverged).

The control is :func:`make_quadratic_problem`: a linear least-squares model whose two halves of the
parameters get the two step sizes. GD on a quadratic is a linear map, so the boundary is the
smooth curve where the spectral radius of ``I - 2 D H`` crosses 1 (dimension 1; see also Liu 2024,
who finds fractal boundaries only once non-convexity is added to a quadratic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gdlab.runtime import check_float, check_int

__all__ = [
    "PAPER_DIMENSION_RANGE", "PAPER_WIDTH", "PAPER_INPUT_DIM", "PAPER_STEPS", "FractalProblem",
    "make_problem", "make_quadratic_problem", "train_pixels", "grid_axes", "train_grid", "edges",
    "box_sizes", "box_counts", "box_counting_slopes", "fractal_dimension",
    "densest_boundary_window", "zoom_sequence"
]

PAPER_DIMENSION_RANGE = (1.17, 1.98)   # Sohl-Dickstein 2024: the six conditions' estimates
PAPER_WIDTH, PAPER_INPUT_DIM, PAPER_STEPS = 16, 16, (500, 1000)


@dataclass(frozen=True)
class FractalProblem:
    """Data and shared initialization of the grid.

    ``kind="network"``: ``x`` (n, d), ``y`` (n,), ``W0`` (h, d) input weights, ``v0`` (h,) output
    weights, ``gain`` inside the tanh. ``kind="quadratic"``: the linear model ``W0 . x[:, :m] +
    v0 . x[:, m:]`` (``W0`` (1, m), ``v0`` (m,)), the smooth-boundary control."""

    x: torch.Tensor
    y: torch.Tensor
    W0: torch.Tensor
    v0: torch.Tensor
    gain: float = math.sqrt(2.0)
    kind: str = "network"

    @property
    def num_params(self) -> int:
        return self.W0.numel() + self.v0.numel()


def _draw(generator: torch.Generator, dtype):
    return lambda *shape: torch.randn(*shape, generator=generator, device=generator.device, dtype=dtype)


def make_problem(generator: torch.Generator, *, width: int = PAPER_WIDTH, input_dim: int = PAPER_INPUT_DIM,
                 n: int | None = None, gain: float = math.sqrt(2.0), dtype=torch.float64,
                 device=None) -> FractalProblem:
    """Sohl-Dickstein's problem: standard-normal weights, inputs and targets, ``n`` examples
    (default: the number of parameters, ``width * input_dim + width``). Drawn on the generator's
    device (order: W, v, x, y), then moved to ``device`` (default: the generator's)."""
    width = check_int("width", width, min=1)
    input_dim = check_int("input_dim", input_dim, min=1)
    n = width * input_dim + width if n is None else check_int("n", n, min=1)
    gain = check_float("gain", gain, min=0.0, open_min=True)
    draw = _draw(generator, dtype)
    W, v, x, y = draw(width, input_dim), draw(width), draw(n, input_dim), draw(n)
    device = generator.device if device is None else torch.device(device)
    return FractalProblem(x.to(device), y.to(device), W.to(device), v.to(device), gain, "network")


def make_quadratic_problem(generator: torch.Generator, *, half: int = 8, n: int | None = None,
                           dtype=torch.float64, device=None) -> FractalProblem:
    """The control: least squares ``mean((a . x_a + b . x_b - y)^2)`` with ``a, b`` of size ``half``
    trained with step sizes (eta_in for ``a``, eta_out for ``b``); standard-normal data, zero start,
    ``n`` examples (default ``2 * half``, as many as parameters). Its loss is quadratic, so GD is a
    linear map and the trainability boundary is a smooth curve."""
    half = check_int("half", half, min=1)
    n = 2 * half if n is None else check_int("n", n, min=1)
    draw = _draw(generator, dtype)
    x, y = draw(n, 2 * half), draw(n)
    device = generator.device if device is None else torch.device(device)
    zeros = torch.zeros(half, dtype=dtype, device=device)
    return FractalProblem(x.to(device), y.to(device), zeros[None].clone(), zeros.clone(), 1.0, "quadratic")


def _readout_grads(A, v, y, h):
    """Loss, ``dL/dv`` and ``dL/dZ`` of ``f = v . A / h`` against ``y``, from the activations
    ``A = tanh(Z)`` (P, h, n), which it overwrites."""
    n = A.shape[2]
    r = torch.matmul(v[:, None, :], A)[:, 0, :].mul_(1.0 / h).sub_(y)      # residuals (P, n)
    loss = (r * r).mean(dim=1)
    dout = r.mul_(2.0 / n)                                                 # dL/df
    gv = torch.matmul(A, dout[:, :, None])[:, :, 0].mul_(1.0 / h)          # (P, h)
    dZ = A.mul_(A).neg_().add_(1.0).mul_(v[:, :, None] * (1.0 / h)).mul_(dout[:, None, :])
    return loss, gv, dZ


def _network_step(W, v, xs, y, eta_in, eta_out, h):
    """One GD step for P networks at once; ``xs = gain * x / sqrt(d)``. Returns (W, v, loss).

    Layout (P, h, n), so that ``W xs^T`` and ``dZ xs`` are single GEMMs over all pixels."""
    loss, gv, dZ = _readout_grads(torch.tanh(torch.matmul(W, xs.T)), v, y, h)   # A: (P, h, n)
    gW = torch.matmul(dZ, xs)                                              # (P, h, d)
    return W - eta_in[:, None, None] * gW, v - eta_out[:, None] * gv, loss


def _kernel_step(Z, v, K, y, eta_in, eta_out, h):
    """The same GD step in terms of the pre-activations ``Z = W xs^T`` (P, h, n), for n < d.

    ``W`` moves only in the row space of the data (``gW = dZ xs``), so ``Z`` follows
    ``Z - eta_in dZ K`` with ``K = xs xs^T`` (n, n), and each network keeps h n numbers instead of
    h d. The same arithmetic as :func:`_network_step` up to rounding."""
    loss, gv, dZ = _readout_grads(torch.tanh(Z), v, y, h)
    return Z - eta_in[:, None, None] * torch.matmul(dZ, K), v - eta_out[:, None] * gv, loss


def _point_step(z, v, k, y, eta_in, eta_out, h):
    """The kernel step for a single example (n = 1): ``z`` (P, h) is the pre-activation, ``k`` the
    scalar ``xs . xs``, ``y`` the scalar target. Elementwise work only (no batched products of
    1-wide matrices), and ``tanh`` as ``2 sigmoid(2 z) - 1``: the same function to about 1e-16,
    computed about seven times faster on a CPU in float64. The same map as :func:`_kernel_step`
    up to rounding."""
    a = torch.mul(z, 2.0).sigmoid_().mul_(2.0).sub_(1.0)                  # tanh(z), (P, h)
    r = torch.linalg.vecdot(v, a).mul_(1.0 / h).sub_(y)                    # residuals (P,)
    loss = r * r
    c = r.mul_(2.0 / h)[:, None]                                           # dL/df / h
    gv = a * c
    dz = a.mul_(a).neg_().add_(1.0).mul_(v).mul_(c)
    return z - dz.mul_((eta_in * k)[:, None]), v - gv.mul_(eta_out[:, None]), loss


def _quadratic_step(a, b, x, y, eta_a, eta_b, m):
    r = torch.matmul(a, x[:, :m].T)[:, 0, :] + b @ x[:, m:].T - y          # (P, n)
    loss = (r * r).mean(dim=1)
    g = r @ x * (2.0 / x.shape[0])                                         # (P, 2m)
    return a - eta_a[:, None, None] * g[:, None, :m], b - eta_b[:, None] * g[:, m:], loss


_COMPILED = {}


def _step_fn(kind: str, fused: bool):
    step = {"network": _network_step, "kernel": _kernel_step, "point": _point_step,
            "quadratic": _quadratic_step}[kind]
    if not fused:
        return step
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(step, fullgraph=True, dynamic=True)
    return _COMPILED[kind]


def train_pixels(problem: FractalProblem, eta_in: torch.Tensor, eta_out: torch.Tensor, *, steps: int,
                 fused: bool | None = None, tail: int = 20, drop_every: int = 25) -> torch.Tensor:
    """Train one network per ``(eta_in[p], eta_out[p])`` and return ``mean(loss_t / loss_0)`` over
    the last ``tail`` steps (``inf`` for runs whose loss stopped being finite), shape (P,).

    ``loss_t`` is the loss before step t + 1, as in Sohl-Dickstein's ``train_step``. Every
    ``drop_every`` steps the runs with a non-finite loss leave the batch (they stay non-finite).
    A network with fewer examples than inputs (n < d) trains in terms of its pre-activations
    (:func:`_kernel_step`): the same map, d / n times less state; with one example (his
    single-datapoint condition) the step is element-wise (:func:`_point_step`)."""
    steps = check_int("steps", steps, min=1)
    tail = min(check_int("tail", tail, min=1), steps)
    drop_every = check_int("drop_every", drop_every, min=1)
    dev, dt = problem.W0.device, problem.W0.dtype
    eta_in, eta_out = eta_in.to(dev, dt).reshape(-1), eta_out.to(dev, dt).reshape(-1)
    fused = (dev.type == "cuda") if fused is None else fused
    P = eta_in.numel()
    kind, W0, y = problem.kind, problem.W0, problem.y
    if kind == "network":
        x = problem.x * (problem.gain / math.sqrt(problem.x.shape[1]))
        size = problem.W0.shape[0]
        if x.shape[0] == 1:          # one example: z = W xs (h,), k = xs . xs, y a scalar
            kind, W0, x, y = "point", (W0 @ x.T)[:, 0], (x @ x.T)[0, 0], problem.y[0]
        elif x.shape[0] < x.shape[1]:  # n < d: pre-activations Z = W xs^T and the kernel K = xs xs^T
            kind, W0, x = "kernel", W0 @ x.T, x @ x.T
    else:
        x, size = problem.x, problem.W0.shape[1]
    step = _step_fn(kind, fused)
    W = W0.expand(P, *W0.shape).contiguous()
    v = problem.v0.expand(P, -1).contiguous()
    result = torch.full((P,), math.inf, dtype=dt, device=dev)
    alive = torch.arange(P, device=dev)
    acc = torch.zeros(P, dtype=dt, device=dev)
    loss0 = None
    for t in range(steps):
        W, v, loss = step(W, v, x, y, eta_in, eta_out, size)
        if loss0 is None:
            loss0 = loss
        if t >= steps - tail:
            acc = acc + loss / loss0
        if (t + 1) % drop_every == 0 and t + 1 < steps:
            keep = torch.isfinite(loss)
            if not bool(keep.all()):
                W, v, eta_in, eta_out = W[keep], v[keep], eta_in[keep], eta_out[keep]
                loss0, acc, alive = loss0[keep], acc[keep], alive[keep]
                if alive.numel() == 0:
                    return result
    result[alive] = torch.where(torch.isfinite(acc), acc / tail, math.inf)
    return result


def grid_axes(window, resolution: int, *, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-spaced ``(eta_in, eta_out)`` axes of ``window = ((in_lo, in_hi), (out_lo, out_hi))``."""
    resolution = check_int("resolution", resolution, min=2)
    (lo_in, hi_in), (lo_out, hi_out) = window
    for name, val in (("eta_in_lo", lo_in), ("eta_in_hi", hi_in), ("eta_out_lo", lo_out), ("eta_out_hi", hi_out)):
        check_float(f"window[{name}]", float(val), min=0.0, open_min=True)
    a = torch.logspace(math.log10(lo_in), math.log10(hi_in), resolution, dtype=dtype)
    b = torch.logspace(math.log10(lo_out), math.log10(hi_out), resolution, dtype=dtype)
    return a, b


def _cpu_chunk(problem: FractalProblem) -> int:
    """Networks per CPU chunk: 2^18 floats over one network's largest intermediate (from 64 to
    16384); for a single example (:func:`_point_step`), 2^16 floats over its h pre-activations
    (4096 networks at width 16: the step's dozen element-wise passes stay in a core's L2 cache;
    a 45-zoom sequence of 128-pixel images took 15 s this way against 33 s 16384 at a time)."""
    if problem.kind == "network" and problem.x.shape[0] == 1:
        return max(64, (1 << 16) // problem.W0.shape[0])
    if problem.kind == "network":
        per_network = problem.W0.shape[0] * problem.x.shape[0]           # h n (the (h, n) activations)
    else:
        per_network = problem.x.shape[0] + problem.num_params               # residuals and parameters
    return max(64, min(16384, (1 << 18) // max(1, per_network)))


def train_grid(problem: FractalProblem, window, resolution: int, *, steps: int, chunk: int | None = None,
               fused: bool | None = None) -> torch.Tensor:
    """Converged (True) / diverged (False) image over the log-spaced ``window`` (see
    :func:`grid_axes`), shape (res, res), on the CPU: rows run over ``eta_out`` (bottom to top,
    increasing), columns over ``eta_in``. ``chunk`` networks train at once (default 262144 on
    CUDA; on the CPU as many as keep a chunk's intermediates in cache, see :func:`_cpu_chunk`: 64
    networks of his full-batch condition, 4096 of the single-datapoint one)."""
    if chunk is None:
        chunk = 262144 if problem.W0.device.type == "cuda" else _cpu_chunk(problem)
    chunk = check_int("chunk", chunk, min=1)
    a, b = grid_axes(window, resolution, dtype=problem.W0.dtype)
    E_out, E_in = torch.meshgrid(b, a, indexing="ij")
    E_in, E_out = E_in.reshape(-1), E_out.reshape(-1)
    out = []
    for s in range(0, E_in.numel(), chunk):
        ratio = train_pixels(problem, E_in[s:s + chunk], E_out[s:s + chunk], steps=steps, fused=fused)
        out.append((ratio < 1).cpu())
    return torch.cat(out).reshape(resolution, resolution)


# ---------------------------------------------------------------- box counting
def edges(image) -> np.ndarray:
    """Boundary pixels: 2x2 neighbourhoods holding both outcomes, shape (rows - 1, cols - 1)
    (Sohl-Dickstein's ``extract_edges``)."""
    m = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image, dtype=bool)
    if m.ndim != 2 or min(m.shape) < 2:
        raise ValueError(f"parameter 'image': got shape {m.shape}; expected a 2-D image of side >= 2")
    quad = np.stack([m[1:, 1:], m[:-1, 1:], m[1:, :-1], m[:-1, :-1]])
    return quad.any(axis=0) & ~quad.all(axis=0)


def box_sizes(side: int, *, min_box: int = 10, bins: int = 10) -> np.ndarray:
    """porespy's ``boxcount`` sizes: ``bins`` log-spaced integers from ``min_box`` to ``side``, deduplicated."""
    side, min_box = check_int("side", side, min=2), check_int("min_box", min_box, min=1)
    if min_box >= side:
        raise ValueError(f"parameter 'min_box': got {min_box}; expected < the image side {side}")
    return np.unique(np.logspace(np.log10(min_box), np.log10(side), check_int("bins", bins, min=2)).astype(int))


def box_counts(edge: np.ndarray, sizes) -> np.ndarray:
    """For each size s, the number of s x s tiles (the last ones partial) holding some, but not
    only, boundary pixels (porespy's ``boxcount``)."""
    e = np.asarray(edge, dtype=bool)
    counts = []
    for s in sizes:
        s = int(s)
        rows, cols = -(-e.shape[0] // s) * s, -(-e.shape[1] // s) * s
        any_ = np.zeros((rows, cols), dtype=bool)
        all_ = np.ones((rows, cols), dtype=bool)
        any_[:e.shape[0], :e.shape[1]] = e
        all_[:e.shape[0], :e.shape[1]] = e
        tiles = (rows // s, s, cols // s, s)
        counts.append(int((any_.reshape(tiles).any(axis=(1, 3)) & ~all_.reshape(tiles).all(axis=(1, 3))).sum()))
    return np.array(counts)


def box_counting_slopes(edge: np.ndarray, *, min_box: int = 10, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(sizes, slopes)``: the local slopes ``-d log N / d log s`` of the box counts (numpy's
    ``gradient``, as porespy). Sizes whose count is 0 are left out."""
    e = np.asarray(edge, dtype=bool)
    sizes = box_sizes(min(e.shape), min_box=min_box, bins=bins)
    counts = box_counts(e, sizes)
    keep = counts > 0
    sizes, counts = sizes[keep], counts[keep]
    if sizes.size < 2:
        return sizes, np.array([])
    return sizes, -np.gradient(np.log(counts.astype(float)), np.log(sizes.astype(float)))


def fractal_dimension(images, *, min_box: int = 10, bins: int = 10) -> float:
    """Median of the local box-counting slopes of the boundaries of ``images``, pooled
    (Sohl-Dickstein's ``estimate_fractal_dimension`` over a zoom sequence)."""
    slopes = [box_counting_slopes(edges(im), min_box=min_box, bins=bins)[1] for im in images]
    pooled = np.concatenate(slopes) if slopes else np.array([])
    if pooled.size == 0:
        raise ValueError("parameter 'images': no boundary to count")
    return float(np.median(pooled))


# ---------------------------------------------------------------- zooming
def densest_boundary_window(image, window, fraction: float):
    """The sub-window (a ``fraction`` of each log-range) holding the most boundary pixels: where
    to zoom next. Returns ``((in_lo, in_hi), (out_lo, out_hi))``."""
    fraction = check_float("fraction", fraction, min=0.0, max=1.0, open_min=True)
    edge = edges(image).astype(np.int64)
    rows, cols = edge.shape
    wr, wc = max(1, int(round(fraction * rows))), max(1, int(round(fraction * cols)))
    c = np.pad(edge.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = c[wr:, wc:] - c[:-wr, wc:] - c[wr:, :-wc] + c[:-wr, :-wc]     # windows of wr x wc
    r0, c0 = np.unravel_index(int(np.argmax(counts)), counts.shape)
    res = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image).shape[0]

    def sub(lo_hi, start, width):
        lo, hi = math.log10(lo_hi[0]), math.log10(lo_hi[1])
        step = (hi - lo) / (res - 1)          # edge pixel j sits between grid points j and j + 1
        return 10 ** (lo + start * step), 10 ** (lo + (start + width) * step)

    return sub(window[0], c0, wc), sub(window[1], r0, wr)


def zoom_sequence(problem: FractalProblem, window, resolution: int, *, steps: int, zooms: int,
                  factor: float = 2.0, chunk: int | None = None, fused: bool | None = None):
    """Images of ``window`` and of ``zooms`` successive zooms, each into the sub-window (1/``factor``
    of each log-range of the last one) with the most boundary pixels. Returns a list of
    ``(image, window)``. Sohl-Dickstein's sequences halve the window at each frame as well."""
    zooms = check_int("zooms", zooms, min=0)
    factor = check_float("factor", factor, min=1.0, open_min=True)
    frames = []
    for k in range(zooms + 1):
        image = train_grid(problem, window, resolution, steps=steps, chunk=chunk, fused=fused)
        frames.append((image, window))
        if k < zooms:
            window = densest_boundary_window(image, window, 1.0 / factor)
    return frames
