"""The sweep engine: many small MLPs (widths, seeds, hyperparameters) trained as ONE batched
computation, with results in a resumable on-disk store.

A sweep is a list of :class:`MLPPoint` configurations. :func:`run_sweep` groups points that
share a training schedule, pads every model of a group to the group's largest width and trains
the group with batched matmuls (``torch.baddbmm``): model ``m`` of the group has weights
``W[m]`` of shape (fan_in, max_width), whose columns and rows beyond the model's own width are
zero. Padded units then have zero pre-activation, zero activation and zero gradient, so they
stay exactly zero and every model follows the same trajectory as if it were trained alone
(:func:`train_one` is that single-model loop; the tests and ``benchmarks/bench_sweep.py``
check the two agree). Each model keeps its own initialization, label noise, minibatch order,
learning rate, momentum and weight decay.

Results go to ``store/<key>.json``, where ``key`` is a stable hash of the configuration and of
the data set, written atomically (temporary file + ``os.replace``). A sweep that is killed
resumes where it stopped: finished points are read back, not recomputed.

Used for the deep double descent experiment of Nakkiran et al. 2019 on MNIST-1D (Greydanus 2020).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from gdlab.data import Split, label_noise
from gdlab.runtime import check_float, check_int, pick_device, pick_dtype, progress

ENGINE_VERSION = 1  # bump when a change alters the numbers a point produces


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

    def schedule(self) -> tuple:
        """What must be shared for models to be trained in one batch."""
        return (self.depth, self.batch_size, self.epochs, self.eval_every)

    def eval_epochs(self) -> list[int]:
        """Epochs after which metrics are recorded (0 is the initialization)."""
        epochs = list(range(0, self.epochs + 1, self.eval_every))
        return epochs if epochs[-1] == self.epochs else epochs + [self.epochs]

    def key(self, data_fingerprint: str) -> str:
        """Stable hash of this configuration, the data set and the engine version."""
        blob = json.dumps({"point": asdict(self), "data": data_fingerprint, "engine": ENGINE_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


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


def data_fingerprint(data: Split) -> str:
    """A hash of the data set's tensors, so that a store never mixes results of two data sets."""
    h = hashlib.sha256()
    for t in (data.x, data.y, data.x_test, data.y_test):
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------- the on-disk store
def load_result(store: str | Path, key: str) -> PointResult | None:
    """The stored result for ``key``, or None (a missing or unreadable entry counts as missing)."""
    path = Path(store) / f"{key}.json"
    try:
        return PointResult.from_dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def save_result(store: str | Path, result: PointResult) -> Path:
    """Write ``store/<key>.json`` atomically: a temporary file in the same folder, fsync, then
    ``os.replace`` (atomic on POSIX and Windows), so a kill never leaves a half-written entry."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    path = store / f"{result.key}.json"
    fd, tmp = tempfile.mkstemp(dir=store, prefix=f".{result.key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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


def _streams(point: MLPPoint, data: Split, num_classes: int):
    """The point's noisy labels, initial weights and its generator for minibatch order.
    One CPU generator per point, consumed in a fixed order, so that the batched engine and
    :func:`train_one` draw identical numbers on any device."""
    g = torch.Generator().manual_seed(point.seed)
    y = label_noise(data.y.cpu(), point.label_noise, num_classes, g)
    layers = init_mlp(point, data.x.shape[1], num_classes, g)
    return y, layers, g


# ---------------------------------------------------------------- batched training
def _groups(points: Sequence[MLPPoint], max_group_size: int | None, group_overhead: float,
            in_dim: int = 40, out_dim: int = 10) -> list[list[int]]:
    """Split point indices into batched groups, one schedule per group, minimizing the cost model

        sum over groups of  group_overhead + M * (depth - 1) H^2 + M * (in + out) H

    (H: the group's widest model, M: its size; per-sample multiply-adds, with the fixed cost of one
    optimizer step counted as ``group_overhead`` multiply-adds). Exact by dynamic programming over
    the points sorted by width: a large overhead (GPU) gives one group, a small one (CPU) keeps
    wide models apart from narrow ones, whose padding would cost more than it saves."""
    by_schedule: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        by_schedule.setdefault(p.schedule(), []).append(i)
    groups = []
    for idx in by_schedule.values():
        idx = sorted(idx, key=lambda i: points[i].width)
        depth = points[idx[0]].depth
        per_model = lambda H: (depth - 1) * H * H + (in_dim + out_dim) * H  # noqa: E731
        cap = len(idx) if max_group_size is None else max_group_size
        best, cut = [0.0] + [float("inf")] * len(idx), [0] * (len(idx) + 1)
        for end in range(1, len(idx) + 1):  # best[end]: cheapest split of the first `end` points
            H = points[idx[end - 1]].width
            for start in range(max(0, end - cap), end):
                cost = best[start] + group_overhead + (end - start) * per_model(H)
                if cost < best[end]:
                    best[end], cut[end] = cost, start
        end = len(idx)
        while end > 0:
            groups.append(idx[cut[end]:end])
            end = cut[end]
    return groups


def _evaluate(params, x, y, num_models: int, chunk: int = 4096):
    """Mean cross-entropy and error of every model on (x, y); y is (n,) or (M, n)."""
    losses, errors = [], []
    for s in range(0, x.shape[0], chunk):
        logits = _forward(params, x[s:s + chunk].unsqueeze(0).expand(num_models, -1, -1))
        yy = (y[..., s:s + chunk]).expand(num_models, -1)
        losses.append(F.cross_entropy(logits.transpose(1, 2), yy, reduction="none").sum(1))
        errors.append((logits.argmax(-1) != yy).sum(1))
    n = x.shape[0]
    return (torch.stack(losses).sum(0) / n).tolist(), (torch.stack(errors).sum(0).double() / n).tolist()


def _forward(params, x):
    """Batched MLP: x (M, B, in) -> logits (M, B, classes)."""
    h = x
    for j, (w, b) in enumerate(params):
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if j < len(params) - 1:
            h = torch.relu(h)
    return h


def train_group(points: Sequence[MLPPoint], data: Split, device: torch.device, dtype: torch.dtype,
                keys: Sequence[str], bar=None) -> list[PointResult]:
    """Train ``points`` (one schedule) as one padded, batched model; return their metrics."""
    p0 = points[0]
    M, H = len(points), max(p.width for p in points)
    num_classes = data.num_classes
    n, in_dim = data.x.shape
    x, x_test = data.x.to(device, dtype), data.x_test.to(device, dtype)
    y_test = data.y_test.to(device)
    padded = [in_dim] + [H] * p0.depth + [num_classes]
    params = [(torch.zeros(M, a, b, dtype=dtype), torch.zeros(M, b, dtype=dtype)) for a, b in zip(padded[:-1], padded[1:])]
    labels, gens = [], []
    for m, p in enumerate(points):
        y, layers, g = _streams(p, data, num_classes)
        labels.append(y)
        gens.append(g)
        for j, (w, b) in enumerate(layers):
            a, c = w.shape
            params[j][0][m, :a, :c] = w.to(dtype)
            params[j][1][m, :c] = b.to(dtype)
    params = [(w.to(device).requires_grad_(), b.to(device).requires_grad_()) for w, b in params]
    flat = [t for pair in params for t in pair]
    buffers = [torch.zeros_like(t) for t in flat]
    y_train = torch.stack(labels).to(device)  # (M, n) each model's own noisy labels
    col = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    lr = col([p.lr for p in points])
    mom = col([p.momentum for p in points])
    wd = col([p.weight_decay for p in points])
    use_wd = bool((wd > 0).any())
    per_model = lambda v: [v.view((M,) + (1,) * (t.dim() - 1)) for t in flat]  # noqa: E731
    lr_of, mom_of, wd_of = per_model(lr), per_model(mom), per_model(wd)
    rows = torch.arange(M, device=device).unsqueeze(1)

    results = [PointResult(p, k) for p, k in zip(points, keys)]
    record_at = set(p0.eval_epochs())

    def record(epoch):
        with torch.no_grad():
            tl, te = _evaluate(params, x, y_train, M)
            vl, ve = _evaluate(params, x_test, y_test, M)
        for m, r in enumerate(results):
            r.epochs.append(epoch)
            r.train_loss.append(tl[m]); r.train_error.append(te[m])  # noqa: E702
            r.test_loss.append(vl[m]); r.test_error.append(ve[m])  # noqa: E702

    record(0)
    B = p0.batch_size
    for epoch in range(1, p0.epochs + 1):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (M, n)
        for s in range(0, n, B):
            idx = order[:, s:s + B]
            logits = _forward(params, x[idx])
            loss = F.cross_entropy(logits.transpose(1, 2), y_train[rows, idx], reduction="none").mean(1).sum()
            grads = torch.autograd.grad(loss, flat)
            with torch.no_grad():
                # SGD with momentum as torch.optim.SGD: g <- g + wd theta; buf <- mu buf + g; theta <- theta - lr buf.
                # Padded entries have zero gradient (their units are never active), so they stay zero.
                if use_wd:
                    grads = torch._foreach_add(grads, torch._foreach_mul(flat, wd_of))
                torch._foreach_mul_(buffers, mom_of)
                torch._foreach_add_(buffers, grads)
                torch._foreach_sub_(flat, torch._foreach_mul(buffers, lr_of))
        if epoch in record_at:
            record(epoch)
        if bar is not None:
            bar.update(M)
    return results


def run_sweep(points: Iterable[MLPPoint], data: Split, store: str | Path | None = None, *,
              device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
              max_group_size: int | None = None, group_overhead: float | None = None,
              show_progress: bool = True) -> list[PointResult]:
    """Train every point (batched by schedule and width) and return results in input order.

    ``store``: a folder; finished points are saved there as ``<key>.json`` and read back
    instead of recomputed on the next call (resume after an interruption). None keeps nothing.
    ``max_group_size`` caps the models per batched group (memory, or finer resume granularity);
    ``group_overhead``: the fixed cost of one batched optimizer step, in multiply-adds per sample,
    used to decide which widths to pad into one group (see :func:`_groups`); by default about
    what a CPU does during Python overhead (2e4), and 1e9 on a GPU, where one group is fastest.
    """
    points = list(points)
    for i, p in enumerate(points):
        if not isinstance(p, MLPPoint):
            raise TypeError(f"parameter 'points[{i}]': got {type(p).__name__}; expected an MLPPoint")
    if not points:
        raise ValueError("parameter 'points': got an empty list; expected at least one MLPPoint")
    if max_group_size is not None:
        check_int("max_group_size", max_group_size, min=1)
    device, dtype = pick_device(device), pick_dtype(dtype)
    if group_overhead is None:
        group_overhead = 2e4 if device.type == "cpu" else 1e9
    group_overhead = check_float("group_overhead", group_overhead, min=0.0)
    fp = data_fingerprint(data)
    keys = [p.key(fp) for p in points]
    results: dict[str, PointResult] = {}
    if store is not None:
        for k in set(keys):
            r = load_result(store, k)
            if r is not None:
                results[k] = r
    todo_idx, seen = [], set()
    for i, k in enumerate(keys):
        if k not in results and k not in seen:
            todo_idx.append(i)
            seen.add(k)
    todo = [points[i] for i in todo_idx]
    total = sum(p.epochs for p in todo)
    bar = progress(total=total, desc="sweep", enabled=None if show_progress else False)
    num_classes = data.num_classes
    for group in _groups(todo, max_group_size, group_overhead, data.x.shape[1], num_classes):
        group_points = [todo[i] for i in group]
        group_keys = [keys[todo_idx[i]] for i in group]
        for r in train_group(group_points, data, device, dtype, group_keys, bar):
            if store is not None:
                save_result(store, r)
            results[r.key] = r
    bar.close()
    return [results[k] for k in keys]


# ---------------------------------------------------------------- the plain loop (reference)
def train_one(point: MLPPoint, data: Split, *, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32") -> PointResult:
    """Train one point as an ordinary ``nn.Sequential`` with ``torch.optim.SGD``: the loop the
    engine replaces. Same labels, initialization and minibatch order as :func:`run_sweep`."""
    device, dtype = pick_device(device), pick_dtype(dtype)
    num_classes = data.num_classes
    y, layers, g = _streams(point, data, num_classes)
    modules = []
    for j, (w, b) in enumerate(layers):
        lin = torch.nn.Linear(*w.shape, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        modules += [lin] if j == len(layers) - 1 else [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*modules).to(device, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=point.momentum, weight_decay=point.weight_decay)
    x, x_test = data.x.to(device, dtype), data.x_test.to(device, dtype)
    y, y_test = y.to(device), data.y_test.to(device)
    result = PointResult(point, point.key(data_fingerprint(data)))
    record_at = set(point.eval_epochs())

    def record(epoch):
        with torch.no_grad():
            out = [(F.cross_entropy(model(a), b).item(), (model(a).argmax(-1) != b).double().mean().item())
                   for a, b in ((x, y), (x_test, y_test))]
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
