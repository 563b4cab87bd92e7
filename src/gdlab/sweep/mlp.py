"""The MNIST-1D MLP of deep double descent (Nakkiran et al. 2019; Greydanus 2020) as one use of
the sweep engine: ``MLPPoint`` configurations, trained by :func:`~gdlab.sweep.mlp.run_sweep`
with hand-written batched matrix products (``torch.baddbmm``) instead of ``vmap``, and
:func:`~gdlab.sweep.mlp.train_one`, the plain ``nn.Sequential`` + ``torch.optim.SGD`` loop it
replaces.

Model ``m`` of a group has weights ``W[m]`` of shape (fan_in, max_width), whose columns and rows
beyond the model's own width are zero. Padded units then have zero pre-activation, zero
activation (ReLU) and zero gradient, so they stay exactly zero and every model follows the same
trajectory as if it were trained alone. Each model keeps its own initialization, label noise,
minibatch order, learning rate, momentum and weight decay.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from gdlab.data import label_noise
from gdlab.runtime import check_float, check_int, pick_device, pick_dtype
from gdlab.sweep.engine import SweepData, as_data, eval_chunk
from gdlab.sweep.models import _mean_cross_entropy_grad
from gdlab.sweep.store import ENGINE_VERSION, Store, spec_key

__all__ = [
    "MLPPoint",
    "PointResult",
    "data_fingerprint",
    "load_result",
    "init_mlp",
    "MLPFamily",
    "run_sweep",
    "train_one",
]


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MLPPoint:
    """One model of a sweep: an MLP ``in -> width -> ... -> width -> classes`` (``depth`` hidden
    ReLU layers) trained with minibatch SGD + momentum on cross-entropy.

    ``label_noise`` is the probability that a training label is replaced by a random incorrect
    one (Nakkiran et al. 2019, Sec. 3). ``seed`` drives the label noise, the initialization and
    the minibatch order. Metrics are recorded every ``eval_every`` epochs and at the last epoch.
    """

    width: int
    seed: int = 0
    depth: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 100
    epochs: int = 100
    label_noise: float = 0.0
    eval_every: int = 1

    def __post_init__(self):
        check_int("width", self.width, min=1)
        check_int("seed", self.seed, min=0)
        check_int("depth", self.depth, min=1)
        check_float("lr", self.lr, min=0.0, open_min=True)
        check_float("momentum", self.momentum, min=0.0, max=1.0)
        check_float("weight_decay", self.weight_decay, min=0.0)
        check_int("batch_size", self.batch_size, min=1)
        check_int("epochs", self.epochs, min=1)
        check_float("label_noise", self.label_noise, min=0.0, max=1.0)
        check_int("eval_every", self.eval_every, min=1)

    # the engine reads these like a gdlab.sweep.Point's
    optimizer = "sgd"
    nesterov = False
    betas = (0.9, 0.999)
    eps = 1e-8

    def schedule(self) -> tuple:
        """What must be shared for models to be trained in one batch."""
        return (self.depth, self.batch_size, self.epochs, self.eval_every)

    def eval_epochs(self) -> list[int]:
        """Epochs after which metrics are recorded (0 is the initialization)."""
        epochs = list(range(0, self.epochs + 1, self.eval_every))
        return epochs if epochs[-1] == self.epochs else epochs + [self.epochs]

    def spec(self, data_fingerprint: str, dtype: str | torch.dtype = "float32",
             device: str | torch.device = "cpu") -> dict:
        """Everything the result depends on: the configuration, the data set, the dtype, the
        device type and the engine version."""
        return {"kind": "mlp", "point": asdict(self), "data": data_fingerprint, "dtype": str(pick_dtype(dtype)),
                "device": torch.device(device).type, "engine": ENGINE_VERSION}

    def key(self, data_fingerprint: str, dtype: str | torch.dtype = "float32",
            device: str | torch.device = "cpu") -> str:
        """Stable hash of :meth:`spec`: the name of the point's entry in a store."""
        return spec_key(self.spec(data_fingerprint, dtype, device))


@dataclass
class PointResult:
    """Metrics of one trained point; ``train_*`` are measured on the (noisy) training labels."""

    point: MLPPoint
    key: str
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "point": asdict(self.point)}

    @classmethod
    def from_dict(cls, d: dict) -> "PointResult":
        return cls(**{**d, "point": MLPPoint(**d["point"])})


def data_fingerprint(data) -> str:
    """A hash of the data set's tensors, so that a store never mixes results of two data sets."""
    return as_data(data).fingerprint()


def load_result(store: str | Path, key: str, spec: dict | None = None) -> PointResult | None:
    """The stored result for ``key`` (checked against ``spec`` when given), or None: a missing,
    unreadable or mismatched entry counts as missing."""
    payload = Store(store).load(key, spec)
    try:
        return None if payload is None else PointResult.from_dict(payload)
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------- per-model randomness
def _layer_sizes(point: MLPPoint, in_dim: int, out_dim: int) -> list[int]:
    return [in_dim] + [point.width] * point.depth + [out_dim]


def init_mlp(point: MLPPoint, in_dim: int, out_dim: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight (fan_in, fan_out), bias) per layer, drawn like ``torch.nn.Linear``'s default:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both."""
    sizes = _layer_sizes(point, in_dim, out_dim)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = fan_in ** -0.5
        w = (torch.rand(fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        layers.append((w, b))
    return layers


def _streams(point: MLPPoint, data: SweepData, num_classes: int):
    """The point's noisy labels, initial weights and its generator for minibatch order.
    One CPU generator per point, consumed in a fixed order, so that the batched engine and
    :func:`train_one` draw identical numbers on any device."""
    g = torch.Generator().manual_seed(point.seed)
    y = label_noise(data.y.cpu(), point.label_noise, num_classes, g)
    layers = init_mlp(point, data.x.shape[1], num_classes, g)
    return y, layers, g


# ---------------------------------------------------------------- the family for the engine
class MLPFamily:
    """How the engine builds, stacks and evaluates :class:`MLPPoint` models."""

    kind = "mlp"

    def __init__(self, in_dim: int, out_dim: int):
        self.in_dim, self.out_dim = in_dim, out_dim

    def structure(self, point: MLPPoint) -> tuple:
        return (point.schedule(),)

    def dominates(self, big: MLPPoint, small: MLPPoint) -> bool:
        return True  # same depth (one schedule): padding to the wider model is exact

    def cost(self, point: MLPPoint, sample=None) -> float:
        """Multiply-adds per sample: (depth - 1) H^2 + (in + out) H."""
        H = point.width
        return (point.depth - 1) * H * H + (self.in_dim + self.out_dim) * H

    def spec(self, point: MLPPoint) -> dict:
        return {"kind": self.kind, "point": asdict(point)}

    def batched(self, points, data: SweepData, device, dtype, generators) -> "_BatchedMLP":
        return _BatchedMLP(points, data, device, dtype, generators, self.in_dim, self.out_dim)

    def payload(self, point, key, epochs, metrics) -> dict:
        return PointResult(point, key, list(epochs), metrics["train_loss"], metrics["train_error"],
                           metrics.get("test_loss", []), metrics.get("test_error", [])).to_dict()

    def result(self, point, key, payload) -> PointResult:
        return PointResult.from_dict(payload)


class _BatchedMLP:
    def __init__(self, points, data: SweepData, device, dtype, generators, in_dim, out_dim):
        p0 = points[0]
        M, H = len(points), max(p.width for p in points)
        padded = [in_dim] + [H] * p0.depth + [out_dim]
        params = [(torch.zeros(M, a, b, dtype=dtype), torch.zeros(M, b, dtype=dtype))
                  for a, b in zip(padded[:-1], padded[1:])]
        for m, (p, g) in enumerate(zip(points, generators)):
            for j, (w, b) in enumerate(init_mlp(p, in_dim, out_dim, g)):
                a, c = w.shape
                params[j][0][m, :a, :c] = w.to(dtype)
                params[j][1][m, :c] = b.to(dtype)
        params = [(w.to(device).requires_grad_(), b.to(device).requires_grad_()) for w, b in params]
        self.params = [t for pair in params for t in pair]
        self.masks = [None] * len(self.params)  # ReLU: padded units get zero gradient by themselves
        self.M = M
        self.eval_chunk = eval_chunk(M, max(padded))

    def _pairs(self, flat):
        return list(zip(flat[0::2], flat[1::2]))

    def loss(self, flat, xb, yb, shared: bool) -> torch.Tensor:
        if shared:
            xb, yb = xb.unsqueeze(0).expand(self.M, -1, -1), yb.unsqueeze(0).expand(self.M, -1)
        logits = _forward(self._pairs(flat), xb)
        return F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").mean(1)

    @torch.no_grad()
    def loss_grads(self, flat, xb, yb) -> list[torch.Tensor]:
        """The gradients of ``loss(flat, xb, yb, shared=False).sum()`` (every model's mean
        cross-entropy on its own batch, xb (M, B, in), yb (M, B)) with the MLP's backward written
        out: the matrix products autograd would run, without recording a graph, which on a CPU
        costs as much as the products themselves. The engine uses it instead of autograd."""
        params = self._pairs(flat)
        acts = []
        h = _forward(params, xb, acts)
        g = _mean_cross_entropy_grad(h, yb)
        grads = [None] * len(flat)
        for j in range(len(params) - 1, -1, -1):
            grads[2 * j] = torch.bmm(acts[j].transpose(1, 2), g)
            grads[2 * j + 1] = g.sum(1)
            if j:
                g = torch.ops.aten.threshold_backward(torch.bmm(g, params[j][0].transpose(1, 2)), acts[j], 0)
        return grads

    @torch.no_grad()
    def evaluate(self, flat, x, y, per_model: bool, chunk: int | None = None) -> dict[str, list[float]]:
        """Mean cross-entropy and error of every model on (x, y); y is (n,) or (M, n); ``chunk``
        samples per pass (default: :func:`~gdlab.sweep.engine.eval_chunk` for the group)."""
        params, M, chunk = self._pairs(flat), self.M, chunk or self.eval_chunk
        losses, errors = [], []
        for s in range(0, x.shape[0], chunk):
            logits = _forward(params, x[s:s + chunk].unsqueeze(0).expand(M, -1, -1))
            yy = (y[..., s:s + chunk]).expand(M, -1)
            losses.append(F.cross_entropy(logits.transpose(1, 2), yy, reduction="none").sum(1))
            errors.append((logits.argmax(-1) != yy).sum(1))
        n = x.shape[0]
        return {"loss": (torch.stack(losses).sum(0) / n).tolist(),
                "error": (torch.stack(errors).sum(0).double() / n).tolist()}


def _forward(params, x, acts: list | None = None):
    """Batched MLP: x (M, B, in) -> logits (M, B, classes). With ``acts``, appends the input of
    every layer to it (x, then each hidden activation), for a backward pass."""
    h = x
    for j, (w, b) in enumerate(params):
        if acts is not None:
            acts.append(h)
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if j < len(params) - 1:
            h = h.relu_()  # in place: the backward needs only the activation, not the product
    return h


# ---------------------------------------------------------------- the public entry points
def run_sweep(points: Iterable[MLPPoint], data, store: str | Path | None = None, *,
              device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
              max_group_size: int | None = None, group_overhead: float | None = None,
              checkpoint_every: float | None = 120.0, executor: str = "local", ray_options: dict | None = None,
              show_progress: bool = True) -> list[PointResult]:
    """Train every point (batched by schedule and width) and return results in input order.

    ``data``: a :class:`gdlab.data.Split`, or tensors as :func:`gdlab.sweep.engine.as_data` takes
    them. ``store``: a folder; finished points are saved there as ``<key>.json`` and read back
    instead of recomputed on the next call (resume after an interruption), and a group in
    training saves its state every ``checkpoint_every`` seconds. None keeps nothing.
    ``max_group_size`` caps the models per batched group (memory, or finer resume granularity);
    ``group_overhead``: the fixed cost of one batched optimizer step, in multiply-adds per sample,
    used to decide which widths to pad into one group (see :func:`gdlab.sweep.engine.plan_groups`);
    by default about what a CPU does during Python overhead (2e4), and 1e9 on a GPU, where one
    group is fastest. ``executor="ray"`` trains the groups as Ray tasks
    (:func:`gdlab.sweep.executors.execute`).
    """
    from gdlab.sweep.executors import execute

    points = list(points)
    for i, p in enumerate(points):
        if not isinstance(p, MLPPoint):
            raise TypeError(f"parameter 'points[{i}]': got {type(p).__name__}; expected an MLPPoint")
    if not points:
        raise ValueError("parameter 'points': got an empty list; expected at least one MLPPoint")
    sd = as_data(data)
    if not sd.tensors or not sd.classification or sd.x.dim() != 2:
        raise ValueError("parameter 'data': MLPPoint sweeps need tensors x (n, features) and integer labels y (n,)")
    family = MLPFamily(sd.x.shape[1], sd.num_classes)
    return execute(family, points, sd, store=store, device=device, dtype=dtype, max_group_size=max_group_size,
                   group_overhead=group_overhead, checkpoint_every=checkpoint_every, executor=executor,
                   ray_options=ray_options, show_progress=show_progress)


def train_one(point: MLPPoint, data, *, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32") -> PointResult:
    """Train one point as an ordinary ``nn.Sequential`` with ``torch.optim.SGD``: the loop the
    engine replaces. Same labels, initialization and minibatch order as :func:`run_sweep`."""
    device, dtype = pick_device(device), pick_dtype(dtype)
    sd = as_data(data)
    num_classes = sd.num_classes
    y, layers, g = _streams(point, sd, num_classes)
    modules = []
    for j, (w, b) in enumerate(layers):
        lin = torch.nn.Linear(*w.shape, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        modules += [lin] if j == len(layers) - 1 else [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*modules).to(device, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=point.momentum, weight_decay=point.weight_decay)
    x, x_test = sd.x.to(device, dtype), sd.x_test.to(device, dtype)
    y, y_test = y.to(device), sd.y_test.to(device)
    result = PointResult(point, point.key(sd.fingerprint(), dtype, device))
    record_at = set(point.eval_epochs())

    def record(epoch):
        with torch.no_grad():
            out = []
            for a, b in ((x, y), (x_test, y_test)):
                logits = model(a)
                out.append((F.cross_entropy(logits, b).item(), (logits.argmax(-1) != b).double().mean().item()))
        result.epochs.append(epoch)
        result.train_loss.append(out[0][0]); result.train_error.append(out[0][1])  # noqa: E702
        result.test_loss.append(out[1][0]); result.test_error.append(out[1][1])  # noqa: E702

    record(0)
    n = x.shape[0]
    for epoch in range(1, point.epochs + 1):
        order = torch.randperm(n, generator=g).to(device)
        for s in range(0, n, point.batch_size):
            idx = order[s:s + point.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if epoch in record_at:
            record(epoch)
    return result
