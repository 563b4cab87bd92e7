"""The general sweep engine: many copies of any ``nn.Module`` trained as ONE batched computation.

A sweep is a list of :class:`Point` configurations (widths or other model arguments, seeds,
learning rates, label noise, ...), usually made with :func:`grid`. :func:`gdlab.sweep.run` groups
points that share a training schedule and an architecture, stacks the models of a group with
``torch.func.stack_module_state`` and trains the group with ``torch.func.vmap`` over
``torch.func.functional_call``: one forward and one backward per step for all models of the
group, and one batched optimizer step (SGD with momentum, Nesterov and weight decay as
``torch.optim.SGD``; Adam and AdamW as ``torch.optim.Adam``/``AdamW``) whose hyperparameters
differ per model.

Models of different widths share a group by *masking* (``widths="mask"``, the default): every
model is embedded in the group's largest one with zeros in the parameters it does not have, and
the gradient of those entries is masked, so they stay exactly zero. For architectures where this
is exact (widths of fully connected and convolutional layers, whatever the activation) every
model follows the trajectory it would follow alone; the engine checks it on each group (outputs
and gradients of the padded model against the model built at its own width) and refuses a model
for which it is not (say, a normalization over the padded dimension). ``widths="group"`` trains
only models of identical shapes together.

Each model keeps its own initialization (the model factory called under ``torch.manual_seed`` of
the point's seed), label noise and minibatch order (from a generator seeded with the point's
seed), learning rate, momentum, weight decay and Adam constants. With tensor data, each model
draws its own minibatches; with a ``DataLoader``, the models of a group see the loader's batches.

Results go to the content-addressed store of :mod:`gdlab.sweep.store`; a sweep that is killed
resumes where it stopped: finished points are read back, and a group in training resumes from
its last checkpoint (``checkpoint_every`` seconds). :mod:`gdlab.sweep.executors` runs groups in
this process or as Ray tasks on a cluster.

A model class may bring its own backward: a static method ``batched_loss_grads(params, x, y)``, defined
on the class itself, that returns the gradients of the summed per-model mean cross-entropy of the
stacked models (each parameter with a leading model dimension; x (M, B, ...), y (M, B)). Where the
loss is ``F.cross_entropy`` and the data are tensors, the engine calls it instead of ``vmap`` +
autograd (evaluation keeps ``vmap``, whose convolutions need no unfolded copy of a batch; on a CPU
a group with convolutions evaluates model by model, as plain convolutions beat the grouped ones there);
:class:`gdlab.sweep.models.CNN1d` has one (and the MNIST-1D MLP family, ``_BatchedMLP.loss_grads``).
The tests hold each against the per-model loop.

The per-model loop that this replaces, with ``torch.optim``, is :func:`gdlab.sweep.reference.train_reference`;
the tests check that the two agree to floating-point tolerance.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from gdlab.data import Split, label_noise as draw_label_noise
from gdlab.runtime import check_choice, check_float, check_int
from gdlab.sweep.store import ENGINE_VERSION, Store, spec_key, tensor_fingerprint

__all__ = [
    "OPTIMIZERS",
    "Point",
    "grid",
    "Result",
    "SweepData",
    "as_data",
    "point_labels",
    "ModuleFamily",
    "BatchedOptimizer",
    "plan_groups",
    "group_id",
    "train_group",
    "eval_chunk",
    "save_payload",
    "load_payload",
]

OPTIMIZERS = ("sgd", "adam", "adamw")


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Point:
    """One model of a sweep.

    ``model``: keyword arguments of the model factory (e.g. ``{"width": 16}``). ``seed`` drives the
    initialization, the label noise and the minibatch order. ``label_noise`` is the probability
    that a training label is replaced by a random incorrect one (Nakkiran et al. 2019, Sec. 3).
    ``optimizer``: ``"sgd"`` (``lr``, ``momentum``, ``nesterov``, ``weight_decay``; as
    ``torch.optim.SGD`` with dampening 0), ``"adam"`` or ``"adamw"`` (``lr``, ``betas``, ``eps``,
    ``weight_decay``; as ``torch.optim.Adam``/``AdamW``). Metrics are recorded at epoch 0, every
    ``eval_every`` epochs and at the last epoch. ``batch_size`` is ignored with a ``DataLoader``.
    """

    model: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    label_noise: float = 0.0
    batch_size: int = 100
    epochs: int = 10
    eval_every: int = 1

    def __post_init__(self):
        if not isinstance(self.model, Mapping) or not all(isinstance(k, str) for k in self.model):
            raise TypeError(f"parameter 'model': got {self.model!r}; expected a dict of keyword arguments")
        object.__setattr__(self, "model", dict(sorted(self.model.items())))
        check_int("seed", self.seed, min=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_float("lr", self.lr, min=0.0, open_min=True)
        check_float("momentum", self.momentum, min=0.0, max=1.0)
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"parameter 'nesterov': got {self.nesterov!r}; expected True or False")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("parameter 'nesterov': Nesterov momentum needs momentum > 0")
        check_float("weight_decay", self.weight_decay, min=0.0)
        betas = tuple(self.betas)
        if len(betas) != 2:
            raise ValueError(f"parameter 'betas': got {self.betas!r}; expected two numbers")
        for i, b in enumerate(betas):
            check_float(f"betas[{i}]", b, min=0.0, max=1.0)
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        check_float("eps", self.eps, min=0.0, open_min=True)
        check_float("label_noise", self.label_noise, min=0.0, max=1.0)
        check_int("batch_size", self.batch_size, min=1)
        check_int("epochs", self.epochs, min=1)
        check_int("eval_every", self.eval_every, min=1)

    def __hash__(self):
        return hash(spec_key(self.to_dict()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = dict(self.model)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        d = dict(d)
        d["betas"] = tuple(d.get("betas", (0.9, 0.999)))
        return cls(**d)

    def schedule(self) -> tuple:
        """What models trained in one group must share."""
        return (self.optimizer, self.nesterov, self.batch_size, self.epochs, self.eval_every)

    def eval_epochs(self) -> list[int]:
        """Epochs after which metrics are recorded (0 is the initialization)."""
        epochs = list(range(0, self.epochs + 1, self.eval_every))
        return epochs if epochs[-1] == self.epochs else epochs + [self.epochs]


_POINT_FIELDS = {f.name for f in fields(Point)} - {"model"}


def grid(**axes) -> list[Point]:
    """The Cartesian product of ``axes`` as a list of :class:`Point`.

    A list or a ``range`` is an axis; any other value (a number, a string, a tuple such as
    ``betas``) is the same for every point. Names that are not :class:`Point` fields are keyword
    arguments of the model factory::

        grid(width=[8, 16, 32], seed=range(3), lr=[0.1, 0.03], label_noise=0.15, epochs=50)
    """
    names = list(axes)
    values = [list(v) if isinstance(v, (list, range)) else [v] for v in axes.values()]
    for name, v in zip(names, values):
        if not v:
            raise ValueError(f"parameter {name!r}: got an empty axis")
    points = []
    for combo in itertools.product(*values):
        kw = dict(zip(names, combo))
        model = {k: kw.pop(k) for k in list(kw) if k not in _POINT_FIELDS}
        points.append(Point(model=model, **kw))
    return points


@dataclass
class Result:
    """Metrics of one trained point at ``epochs``: ``metrics["train_loss"]``, ``"test_loss"`` and,
    for classification, ``"train_error"``/``"test_error"`` (train metrics are measured on the
    training labels the model saw, noisy ones included), plus any custom metrics. They are also
    attributes: ``result.test_error``. ``state``: the trained model's ``state_dict`` (on the host),
    when the sweep ran with ``return_state=True``; load it with :meth:`model`."""

    point: Point
    key: str
    epochs: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None

    def model(self, factory: Callable[..., torch.nn.Module]) -> torch.nn.Module:
        """The trained model: ``factory(**point.model)`` with :attr:`state` loaded."""
        if self.state is None:
            raise ValueError("this result has no state: run the sweep with return_state=True")
        net = factory(**self.point.model)
        net.load_state_dict(self.state)
        return net

    def __getattr__(self, name):
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or metric {name!r}")

    def final(self, metric: str) -> float:
        """The metric at the last recorded epoch."""
        return self.metrics[metric][-1]

    def to_dict(self) -> dict:
        return {"epochs": list(self.epochs), "metrics": {k: list(v) for k, v in self.metrics.items()}}


# ---------------------------------------------------------------- data
@dataclass
class SweepData:
    """Training and test data of a sweep: tensors (``x`` (n, ...), ``y`` (n,) or (n, ...)) or
    re-iterable loaders of ``(x, y)`` batches. Build it with :func:`as_data`."""

    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    train_loader: Iterable | None = None
    test_loader: Iterable | None = None

    @property
    def tensors(self) -> bool:
        return self.x is not None

    @property
    def classification(self) -> bool:
        y = self.y if self.y is not None else None
        if y is None:
            y = next(iter(_loader_epoch(self.train_loader, 1)))[1]
        return not y.is_floating_point() and y.dim() == 1

    @property
    def num_classes(self) -> int:
        """Number of classes (tensor data with integer labels)."""
        ys = [t for t in (self.y, self.y_test) if t is not None and t.numel()]
        return int(max(int(t.max()) for t in ys)) + 1

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        if self.tensors:
            ts = [t for t in (self.x, self.y, self.x_test, self.y_test) if t is not None]
            h.update(str(len(ts)).encode())
            return tensor_fingerprint(*ts, h=h)
        for tag, loader in (("train", self.train_loader), ("test", self.test_loader)):
            h.update(tag.encode())
            if loader is not None:
                for xb, yb in _loader_epoch(loader, 1):
                    tensor_fingerprint(xb, yb, h=h)
        return h.hexdigest()[:20]


def as_data(data) -> SweepData:
    """Accepts a :class:`gdlab.data.Split`; a tuple ``(x, y)`` or ``(x, y, x_test, y_test)`` of
    tensors; a dict with keys ``x, y[, x_test, y_test]`` or ``train``/``test`` (each ``(x, y)`` or
    a loader); a ``DataLoader`` (or any re-iterable of ``(x, y)`` batches); or a pair of loaders
    ``(train, test)``."""
    if isinstance(data, SweepData):
        return data
    if isinstance(data, Split):
        return SweepData(data.x, data.y, data.x_test, data.y_test)
    if isinstance(data, Mapping):
        if "train" in data:
            unknown = set(data) - {"train", "test"}
            if unknown:
                raise ValueError(f"parameter 'data': unknown keys {sorted(unknown)}; expected 'train' and 'test'")
            train, test = as_data(data["train"]), (as_data(data["test"]) if data.get("test") is not None else None)
            if train.x_test is not None or train.test_loader is not None:
                raise ValueError("parameter 'data': data['train'] must hold training data only")
            out = SweepData(train.x, train.y, train_loader=train.train_loader)
            if test is not None:
                out.x_test, out.y_test, out.test_loader = test.x, test.y, test.train_loader
            return _checked(out)
        unknown = set(data) - {"x", "y", "x_test", "y_test"}
        if unknown or not {"x", "y"} <= set(data):
            raise ValueError(f"parameter 'data': got keys {sorted(data)}; expected 'x', 'y' and optionally "
                             "'x_test', 'y_test' (or 'train' and 'test')")
        return _checked(SweepData(data["x"], data["y"], data.get("x_test"), data.get("y_test")))
    if isinstance(data, (tuple, list)):
        if len(data) in (2, 4) and all(isinstance(t, torch.Tensor) for t in data):
            return _checked(SweepData(*data))
        if len(data) == 2 and all(_is_loader(d) for d in data):
            return _checked(SweepData(train_loader=data[0], test_loader=data[1]))
        raise TypeError("parameter 'data': a tuple must hold 2 or 4 tensors ((x, y) or (x, y, x_test, y_test)) "
                        "or two loaders (train, test)")
    if _is_loader(data):
        return _checked(SweepData(train_loader=data))
    raise TypeError(f"parameter 'data': got {type(data).__name__}; expected a gdlab.data.Split, a tuple or dict of "
                    "tensors, or a DataLoader")


def _is_loader(obj) -> bool:
    if isinstance(obj, (torch.Tensor, str, bytes, Mapping)) or not isinstance(obj, Iterable):
        return False
    if iter(obj) is obj:
        raise TypeError("parameter 'data': got a one-shot iterator; pass a re-iterable (a list of batches or a "
                        "DataLoader), because a sweep passes over the data once per epoch")
    return True


def _checked(d: SweepData) -> SweepData:
    for a, b, name in ((d.x, d.y, "train"), (d.x_test, d.y_test, "test")):
        if (a is None) != (b is None):
            raise ValueError(f"parameter 'data': the {name} inputs and targets must be given together")
        if a is not None and a.shape[0] != b.shape[0]:
            raise ValueError(f"parameter 'data': {name} inputs have {a.shape[0]} rows but targets {b.shape[0]}")
    if d.x is not None and d.x.shape[0] == 0:
        raise ValueError("parameter 'data': the training set is empty")
    if d.x is None and d.train_loader is None:
        raise ValueError("parameter 'data': no training data")
    return d


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _loader_epoch(loader, epoch: int):
    """The batches of one pass over ``loader``, in an order fixed by ``epoch``: the global random
    state and the loader's own generator, if it has one, are seeded for the pass, so a shuffling
    loader gives the same batches in every run and every group."""
    with _seeded(1_000_003 * epoch + 17):
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(1_000_003 * epoch + 17)
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError("parameter 'data': a loader must yield (x, y) batches")
            yield batch


# ---------------------------------------------------------------- per-model randomness
def point_labels(point, data: SweepData, generator: torch.Generator) -> torch.Tensor | None:
    """The point's training labels (with its label noise), drawn from ``generator`` on the host.
    None with a loader (no label noise there)."""
    if not data.tensors:
        return None
    if data.classification:
        return draw_label_noise(data.y.cpu(), point.label_noise, data.num_classes, generator)
    if point.label_noise > 0:
        raise ValueError("parameter 'label_noise': needs integer class labels")
    return data.y.cpu()


def _code_id(obj) -> str:
    """Qualified name and a hash of the source of a function or class (when Python has it), so that
    editing a model or a loss changes the keys of its results."""
    target = obj.func if hasattr(obj, "func") and hasattr(obj, "args") else obj  # functools.partial
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    try:
        src = inspect.getsource(target if (inspect.isfunction(target) or inspect.isclass(target)) else type(target))
    except (OSError, TypeError):
        src = ""
    extra = repr((obj.args, sorted(obj.keywords.items()))) if target is not obj else ""
    return name + ":" + hashlib.sha256((src + extra).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- model families
class ModuleFamily:
    """Models made by a factory ``model(**point.model) -> nn.Module``, trained through
    ``torch.func`` (the general case). ``loss(outputs, targets)`` must be a mean over the batch.
    ``metrics``: extra ``{name: fn(outputs, targets) -> batch mean}``, on train and test data."""

    kind = "module"

    def __init__(self, model: Callable[..., torch.nn.Module], loss: Callable, *, metrics: Mapping | None = None,
                 widths: str = "mask", tag: str | None = None, return_state: bool = False):
        if not callable(model):
            raise TypeError(f"parameter 'model': got {type(model).__name__}; expected a factory returning an nn.Module")
        if not callable(loss):
            raise TypeError(f"parameter 'loss': got {type(loss).__name__}; expected loss(outputs, targets)")
        self.factory, self.loss_fn = model, loss
        self.metrics = dict(metrics or {})
        for k, fn in self.metrics.items():
            if not callable(fn):
                raise TypeError(f"parameter 'metrics[{k!r}]': expected fn(outputs, targets)")
        self.widths = check_choice("widths", widths, ("mask", "group"))
        self.tag = tag
        self.return_state = bool(return_state)
        self._built: dict[str, torch.nn.Module] = {}
        self._flops: dict[str, float] = {}
        self._code_ids: dict[int, tuple[Any, str]] = {}

    def __getstate__(self):  # models and code ids are made again where they are used (a Ray worker)
        return {**self.__dict__, "_built": {}, "_code_ids": {}}

    # ---- building
    def build(self, point: Point) -> torch.nn.Module:
        """The point's model on the host in float32/64 as the factory makes it, initialized under
        ``torch.manual_seed(point.seed)`` (cached)."""
        k = spec_key(point.to_dict())
        if k not in self._built:
            with _seeded(point.seed):
                m = self.factory(**point.model)
            if not isinstance(m, torch.nn.Module):
                raise TypeError(f"parameter 'model': the factory returned {type(m).__name__}; expected an nn.Module")
            _check_supported(m)
            self._built[k] = m
        return self._built[k]

    def shapes(self, point: Point) -> tuple:
        m = self.build(point)
        return tuple((n, tuple(t.shape)) for n, t in itertools.chain(m.named_parameters(), m.named_buffers()))

    def structure(self, point: Point) -> tuple:
        """What must agree for two points to share a group (besides the schedule)."""
        shapes = self.shapes(point)
        if self.widths == "group":
            return (point.schedule(), shapes)
        return (point.schedule(), tuple((n, len(s)) for n, s in shapes))

    def dominates(self, big: Point, small: Point) -> bool:
        return all(a >= b for (_, sa), (_, sb) in zip(self.shapes(big), self.shapes(small)) for a, b in zip(sa, sb))

    def cost(self, point: Point, sample: torch.Tensor | None) -> float:
        """Multiply-adds per sample of a forward pass (counted once per shape), for grouping."""
        key = repr(self.shapes(point))
        if key not in self._flops:
            m = self.build(point)
            flops = 0.0
            if sample is not None:
                try:
                    from torch.utils.flop_counter import FlopCounterMode

                    with FlopCounterMode(display=False) as fc, torch.no_grad():
                        m(sample[:1].to(next(m.parameters()).dtype))
                    flops = fc.get_total_flops() / 2
                except Exception:  # an op the counter does not know: fall back to the parameter count
                    flops = 0.0
            self._flops[key] = flops or float(sum(p.numel() for p in m.parameters()))
        return self._flops[key]

    def _code_id(self, obj) -> str:
        """:func:`_code_id`, once per object for the family's life: reading a function's source
        back (``inspect.getsource``) takes milliseconds, and ``spec`` asks for it several times
        per point. Kept with the object itself, so that an id is never reused for another."""
        kept = self._code_ids.get(id(obj))
        if kept is None or kept[0] is not obj:
            kept = self._code_ids[id(obj)] = (obj, _code_id(obj))
        return kept[1]

    def spec(self, point: Point) -> dict:
        m = self.build(point)
        init = tensor_fingerprint(*[t for _, t in sorted(m.state_dict().items())])
        code = self._code_id
        return {"kind": self.kind, "point": point.to_dict(), "tag": self.tag,
                "model": {"factory": code(self.factory), "class": code(type(m)), "repr": repr(m), "init": init},
                "loss": code(self.loss_fn), "metrics": {k: code(f) for k, f in sorted(self.metrics.items())}}

    def result(self, point: Point, key: str, payload: dict) -> Result:
        return Result(point, key, list(payload["epochs"]), {k: list(v) for k, v in payload["metrics"].items()},
                      payload.get("_state"))

    # ---- a batched group
    def batched(self, points: Sequence[Point], data: SweepData, device, dtype, generators=None) -> "_BatchedModules":
        """The group stacked for ``vmap`` (initializations come from the seeded factory, not from
        ``generators``)."""
        return _BatchedModules(self, points, data, device, dtype)

    def payload(self, point: Point, key: str, epochs: list[int], metrics: dict[str, list[float]]) -> dict:
        return {"epochs": list(epochs), "metrics": metrics}


_MODE_DEPENDENT = (torch.nn.modules.dropout._DropoutNd,)


def _check_supported(m: torch.nn.Module) -> None:
    for name, sub in m.named_modules():
        if isinstance(sub, torch.nn.modules.batchnorm._NormBase) and sub.track_running_stats:
            raise ValueError(f"parameter 'model': module {name!r} ({type(sub).__name__}) keeps running statistics, "
                             "which a vmapped sweep cannot update; use track_running_stats=False, GroupNorm or "
                             "LayerNorm over unpadded dimensions, or no normalization")
        if isinstance(sub, _MODE_DEPENDENT) and sub.p > 0:
            raise ValueError(f"parameter 'model': module {name!r} ({type(sub).__name__}) is random in training; the "
                             "engine trains deterministic models (each model must follow the trajectory it has alone)")


class _BatchedModules:
    """A group of :class:`ModuleFamily` models stacked for ``vmap``."""

    def __init__(self, family: ModuleFamily, points, data: SweepData, device, dtype):
        self.family, self.points, self.device, self.dtype = family, list(points), device, dtype
        big = max(self.points, key=lambda p: sum(math.prod(s) for _, s in family.shapes(p)))
        with _seeded(0):
            template = family.factory(**big.model)
        self.template = template.to(device=device, dtype=dtype)
        self.template.train()
        shapes = dict(family.shapes(big))
        self.param_names = [n for n, _ in self.template.named_parameters()]
        self.buffer_names = [n for n, _ in self.template.named_buffers()]
        members = [family.build(p) for p in self.points]
        if all(family.shapes(p) == family.shapes(big) for p in self.points):
            # one architecture: torch.func's own stacking, of the cached host models (which it reads
            # and leaves as they are), then on the device in the dtype, as Module.to would
            stacked, buffers = stack_module_state(members)
            self.params = [_to(stacked[n].detach(), device, dtype).requires_grad_() for n in self.param_names]
            self.buffers = {n: _to(buffers[n], device, dtype) for n in self.buffer_names}
        else:  # widths by masking: every model zero-padded to the largest one's shapes
            states = [_padded_state(m, shapes, device, dtype) for m in members]
            self.params = [torch.stack([s[n] for s in states]).requires_grad_() for n in self.param_names]
            self.buffers = {n: torch.stack([s[n] for s in states]) for n in self.buffer_names}
        masks = []
        for n in self.param_names:
            full = shapes[n]
            own = [tuple(dict(m.named_parameters())[n].shape) for m in members]
            if all(o == full for o in own):
                masks.append(None)
                continue
            mk = torch.zeros((len(members),) + full, dtype=dtype, device=device)
            for i, o in enumerate(own):
                mk[(i,) + tuple(slice(0, s) for s in o)] = 1
            masks.append(mk)
        self.masks = masks
        self.classification = None
        # a few training samples on the device, for the checks below and the evaluation chunks
        x, y = _sample_batch(data, 8)
        sample = (_to(x, device, dtype), y.to(device))
        self._check_padding(members, sample)
        # on a CPU the grouped convolutions that vmap makes of M models' convolutions are slower than
        # M plain ones (two CNN1d's of width 32 on 4000 samples: 34 against 22 ms): such groups
        # evaluate model by model, in chunks sized for one model
        self.eval_per_model = torch.device(device).type == "cpu" and any(
            isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.template.modules())
        self.eval_chunk = eval_chunk(1 if self.eval_per_model else len(self.points),
                                     self._floats_per_sample(sample[0]))
        # a model class's own batched backward, defined on the class itself (a subclass may change
        # the forward): `batched_loss_grads(params, x, y)` for the summed mean cross-entropy of
        # integer class labels; used only where it gives autograd's gradients on a few samples
        # (a factory may have changed the instance: hooks, another convolution, renamed parameters)
        own = type(self.template).__dict__.get("batched_loss_grads")
        if (own is not None and family.loss_fn is torch.nn.functional.cross_entropy and data.tensors
                and data.classification and int(data.y.min()) >= 0):
            names = self.param_names

            def loss_grads(flat, xb, yb):
                grads = own(dict(zip(names, flat)), xb, yb)
                return [grads[n] for n in names]

            if self._agrees_with_autograd(loss_grads, sample):
                self.loss_grads = loss_grads

    def _check_padding(self, members, sample: tuple[torch.Tensor, torch.Tensor]):
        """The padded model must compute what the model built at its own width computes: outputs
        and gradients on a few training samples, for every member that is padded."""
        padded = sorted({i for mk in self.masks if mk is not None
                         for i in range(len(members)) if not bool(mk[i].all())})
        if not padded:
            return
        x, y = sample
        for i in padded:  # the member at its own width, on the device in the dtype (the cached model unchanged)
            own = {n: _to(t.detach(), self.device, self.dtype).clone().requires_grad_(t.requires_grad)
                   for n, t in itertools.chain(members[i].named_parameters(), members[i].named_buffers())}
            own_out = functional_call(members[i], own, (x,))
            own_params = [own[n] for n, _ in members[i].named_parameters()]
            own_grads = torch.autograd.grad(self.family.loss_fn(own_out, y), own_params)
            params = {n: p[i].detach().clone().requires_grad_() for n, p in zip(self.param_names, self.params)}
            buffers = {n: b[i] for n, b in self.buffers.items()}
            out = functional_call(self.template, (params, buffers), (x,))
            grads = torch.autograd.grad(self.family.loss_fn(out, y), list(params.values()), allow_unused=True)
            bad = self._differs(out, own_out)
            for (n, g), og in zip(zip(self.param_names, grads), own_grads):
                g = torch.zeros_like(params[n]) if g is None else g
                bad = bad or self._differs(g[tuple(slice(0, s) for s in og.shape)], og)
            if bad:
                raise ValueError(
                    f"parameter 'widths': padding the model {self.points[i].model} with zeros to the shapes of "
                    f"the group's largest model changes its outputs or gradients "
                    "(a normalization or reshape across a padded dimension?); use widths='group', which trains only "
                    "models of identical shapes together")

    def _floats_per_sample(self, x: torch.Tensor) -> int:
        """The largest input or submodule output of the group's largest model, per sample, on a few
        training samples ``x`` in eval mode (with no gradient: no state changes): what sizes the
        evaluation chunks."""
        sizes = [x[0].numel()]

        def note(module, inputs, out):
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel() // x.shape[0])

        hooks = [m.register_forward_hook(note) for m in self.template.modules()]
        try:
            self.template.eval()
            with torch.no_grad():
                self.template(x)
        finally:
            for h in hooks:
                h.remove()
            self.template.train()
        return max(sizes)

    def _agrees_with_autograd(self, loss_grads, sample: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether a model's own backward gives autograd's gradients for every model of the group on
        a few training samples (each model its own, as in training)."""
        x, y = sample
        M = len(self.points)
        xb = x.unsqueeze(0).expand(M, *x.shape).contiguous()
        yb = y.unsqueeze(0).expand(M, *y.shape).contiguous()
        try:
            mine = loss_grads(self.params, xb, yb)
        except Exception:  # e.g. a parameter the class does not expect (a parametrization)
            return False
        auto = torch.autograd.grad(self.loss(self.params, xb, yb, shared=False).sum(), self.params, allow_unused=True)
        return not any(self._differs(b, torch.zeros_like(b) if a is None else a) for a, b in zip(auto, mine))

    def _differs(self, got: torch.Tensor, want: torch.Tensor) -> bool:
        """Whether ``got`` is not ``want``: another shape, or a largest difference above 1e-4 (float32;
        1e-9 otherwise) times 1 + the largest magnitude in ``want``. The engine's checks of a padded
        model and of a model's own backward."""
        tol = 1e-4 if self.dtype == torch.float32 else 1e-9
        want = want.detach()
        return (got.shape != want.shape
                or float((got.detach() - want).abs().max()) > tol * (1.0 + float(want.abs().max())))

    def state_of(self, params, m: int) -> dict[str, torch.Tensor]:
        """Model ``m``'s parameters and buffers at its own shapes, on the host (a ``state_dict``)."""
        own = dict(self.family.shapes(self.points[m]))
        tensors = {**dict(zip(self.param_names, params)), **self.buffers}
        member = self.family.build(self.points[m])
        return {n: tensors[n][m][tuple(slice(0, s) for s in own[n])].detach().cpu().clone()
                for n in member.state_dict()}

    # ---- functional pieces
    def _one(self, params, buffers, x):
        return functional_call(self.template, (dict(zip(self.param_names, params)), buffers), (x,))

    def loss(self, params, xb, yb, shared: bool) -> torch.Tensor:
        """Per-model mean loss on the minibatch; ``xb`` (M, B, ...) per model or (B, ...) shared."""
        self.template.train()
        out = vmap(self._one, in_dims=(0, 0, None if shared else 0))(params, self.buffers, xb)
        return vmap(self.family.loss_fn, in_dims=(0, None if shared else 0))(out, yb)

    @torch.no_grad()
    def evaluate(self, params, x, y, per_model: bool, chunk: int | None = None) -> dict[str, list[float]]:
        """Mean loss, error (classification: argmax of 2-D outputs against integer labels) and
        custom metrics of every model on ``x`` (n, ...); ``y`` is (n, ...) shared or, with
        ``per_model``, (M, n, ...) (each model's own noisy labels). ``chunk``: samples per batched
        forward pass (default: :func:`eval_chunk` for the group)."""
        chunk = chunk or self.eval_chunk
        self.template.eval()
        fns = {"loss": self.family.loss_fn, **self.family.metrics}
        sums: dict[str, torch.Tensor] = {}
        n = x.shape[0]
        for s in range(0, n, chunk):
            xx, yy = x[s:s + chunk], (y[:, s:s + chunk] if per_model else y[s:s + chunk])
            if self.eval_per_model:
                out = torch.stack([self._one([t[m] for t in params], {k: t[m] for k, t in self.buffers.items()}, xx)
                                   for m in range(len(self.points))])
            else:
                out = vmap(self._one, in_dims=(0, 0, None))(params, self.buffers, xx)
            b = out.shape[1]
            y_dims = 0 if per_model else None
            vals = {k: vmap(fn, in_dims=(0, y_dims))(out, yy).to(torch.float64) * b for k, fn in fns.items()}
            if out.dim() == 3 and not yy.is_floating_point() and yy.dim() == (2 if per_model else 1):
                vals["error"] = (out.argmax(-1) != (yy if per_model else yy.unsqueeze(0))).sum(1).to(torch.float64)
            for k, v in vals.items():
                sums[k] = sums[k] + v if k in sums else v
        self.template.train()
        return {k: (v / n).tolist() for k, v in sums.items()}


def _to(t: torch.Tensor, device, dtype) -> torch.Tensor:
    """``t`` on ``device``, in ``dtype`` if it is floating point (what ``Module.to`` does to it)."""
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def _padded_state(m: torch.nn.Module, shapes: dict, device, dtype) -> dict[str, torch.Tensor]:
    out = {}
    for n, t in itertools.chain(m.named_parameters(), m.named_buffers()):
        full = shapes[n]
        t = _to(t.detach(), device, dtype)
        if tuple(t.shape) == full:
            out[n] = t.clone()
        else:
            z = torch.zeros(full, dtype=t.dtype, device=device)
            z[tuple(slice(0, s) for s in t.shape)] = t
            out[n] = z
    return out


def _sample_batch(data: SweepData, k: int):
    if data.tensors:
        return data.x[:k], data.y[:k]
    xb, yb = next(iter(_loader_epoch(data.train_loader, 1)))
    return xb[:k], yb[:k]


# ---------------------------------------------------------------- evaluation in chunks
EVAL_BUDGET = 2 ** 21  # floats in the largest intermediate of one evaluation chunk (8 MB in float32)


def eval_chunk(models: int, floats_per_sample: int, budget: int = EVAL_BUDGET) -> int:
    """Samples per batched evaluation pass: the largest power of two from 256 to 4096 for which
    the group's largest intermediate (``models`` x chunk x ``floats_per_sample``) stays within
    ``budget`` floats. On a CPU a pass whose activations outgrow the caches costs several times
    more per sample: two CNN1d's of width 32 on 4000 MNIST-1D samples took 95 ms in one pass and
    18 ms in passes of 512 (2 threads). It depends on shapes only, so results stay deterministic."""
    models = check_int("models", models, min=1)
    floats_per_sample = check_int("floats_per_sample", floats_per_sample, min=1)
    fits = max(1, budget // (models * floats_per_sample))
    return 1 << max(8, min(12, fits.bit_length() - 1))


# ---------------------------------------------------------------- the batched optimizer
class BatchedOptimizer:
    """One optimizer step for all models of a group: the update of ``torch.optim.SGD`` (dampening
    0), ``Adam`` or ``AdamW`` with per-model hyperparameters, as fused ``torch._foreach`` ops over
    the stacked parameters (model ``m`` is row ``m`` of every tensor)."""

    def __init__(self, points: Sequence[Point], params: list[torch.Tensor]):
        p0 = points[0]
        self.kind, self.nesterov = p0.optimizer, p0.nesterov
        self.params = params
        M = len(points)
        device, dtype = params[0].device, params[0].dtype
        col = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        per_model = lambda v: [v.view((M,) + (1,) * (t.dim() - 1)) for t in params]  # noqa: E731
        self.lr = per_model(col([p.lr for p in points]))
        self.wd = per_model(col([p.weight_decay for p in points]))
        self.use_wd = any(p.weight_decay > 0 for p in points)
        self.step_count = 0
        if self.kind == "sgd":
            self.mom = per_model(col([p.momentum for p in points]))
            self.buffers = [torch.zeros_like(t) for t in params]
        else:
            b1, b2 = col([p.betas[0] for p in points]), col([p.betas[1] for p in points])
            self.b1, self.b2 = per_model(b1), per_model(b2)
            self.one_minus_b1, self.one_minus_b2 = per_model(1 - b1), per_model(1 - b2)
            self._b1, self._b2 = b1, b2
            self.eps = per_model(col([p.eps for p in points]))
            self.exp_avg = [torch.zeros_like(t) for t in params]
            self.exp_avg_sq = [torch.zeros_like(t) for t in params]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        flat = self.params
        self.step_count += 1
        if self.kind == "sgd":
            # torch.optim.SGD: g <- g + wd theta; buf <- mu buf + g; theta <- theta - lr buf
            # (Nesterov: theta <- theta - lr (g + mu buf)). Masked entries have zero gradient and stay zero.
            # (each line one fused op per tensor: addcmul(a, b, c) = a + b c, the same products)
            if self.use_wd:
                grads = torch._foreach_addcmul(grads, flat, self.wd)
            self.buffers = torch._foreach_addcmul(grads, self.buffers, self.mom)
            upd = torch._foreach_addcmul(grads, self.buffers, self.mom) if self.nesterov else self.buffers
            torch._foreach_addcmul_(flat, upd, self.lr, value=-1)
            return
        # torch.optim.Adam / AdamW: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
        # theta <- theta - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)
        t = self.step_count
        if self.kind == "adamw" and self.use_wd:
            torch._foreach_mul_(flat, [1 - lr * wd for lr, wd in zip(self.lr, self.wd)])
        elif self.use_wd:
            grads = torch._foreach_add(grads, torch._foreach_mul(flat, self.wd))
        torch._foreach_mul_(self.exp_avg, self.b1)
        torch._foreach_add_(self.exp_avg, torch._foreach_mul(grads, self.one_minus_b1))
        torch._foreach_mul_(self.exp_avg_sq, self.b2)
        torch._foreach_add_(self.exp_avg_sq, torch._foreach_mul(torch._foreach_mul(grads, grads), self.one_minus_b2))
        bc1 = 1 - self._b1 ** t
        bc2_sqrt = (1 - self._b2 ** t).sqrt()
        shape = lambda v, ref: v.view((-1,) + (1,) * (ref.dim() - 1))  # noqa: E731
        step_size = [shape(bc1, p).reciprocal() * lr for p, lr in zip(flat, self.lr)]
        denom = torch._foreach_div(torch._foreach_sqrt(self.exp_avg_sq), [shape(bc2_sqrt, p) for p in flat])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_sub_(flat, torch._foreach_mul(torch._foreach_div(self.exp_avg, denom), step_size))

    def state(self) -> dict:
        bufs = self.buffers if self.kind == "sgd" else self.exp_avg + self.exp_avg_sq
        return {"step": self.step_count, "buffers": [b.detach().cpu() for b in bufs]}

    def load_state(self, state: dict) -> None:
        self.step_count = int(state["step"])
        bufs = self.buffers if self.kind == "sgd" else self.exp_avg + self.exp_avg_sq
        for b, s in zip(bufs, state["buffers"]):
            b.copy_(s)


# ---------------------------------------------------------------- grouping
def plan_groups(family, points: Sequence, max_group_size: int | None, group_overhead: float,
                sample: torch.Tensor | None = None) -> list[list[int]]:
    """Split point indices into batched groups of one structure (schedule and architecture),
    minimizing the cost model

        sum over groups of  group_overhead + M * cost(largest model of the group)

    (M: the group's size; cost: multiply-adds per sample of a forward pass; ``group_overhead``:
    the fixed cost of one batched step, in the same unit). Exact by dynamic programming over the
    points sorted by cost, where a group may only hold models that its largest one contains
    (every parameter at least as large). A large overhead (GPU) gives one group per structure, a
    small one (CPU) keeps wide models apart from narrow ones, whose padding would cost more than it
    saves."""
    by_structure: dict = {}
    for i, p in enumerate(points):
        by_structure.setdefault(family.structure(p), []).append(i)
    groups = []
    for idx in by_structure.values():
        costs = {i: family.cost(points[i], sample) for i in idx}
        idx = sorted(idx, key=lambda i: costs[i])
        cap = len(idx) if max_group_size is None else max_group_size
        best, cut = [0.0] + [float("inf")] * len(idx), [0] * (len(idx) + 1)
        for end in range(1, len(idx) + 1):  # best[end]: cheapest split of the first `end` points
            big = points[idx[end - 1]]
            for start in range(end - 1, max(0, end - cap) - 1, -1):
                if start < end - 1 and not family.dominates(big, points[idx[start]]):
                    break
                cost = best[start] + group_overhead + (end - start) * costs[idx[end - 1]]
                if cost < best[end]:
                    best[end], cut[end] = cost, start
        end = len(idx)
        while end > 0:
            groups.append(idx[cut[end]:end])
            end = cut[end]
    return groups


def group_id(keys: Sequence[str]) -> str:
    """The id of a batched group: a hash of its members' keys in stacking order."""
    return spec_key({"group": list(keys), "engine": ENGINE_VERSION})


# ---------------------------------------------------------------- training one group
def train_group(family, points: Sequence, keys: Sequence[str], data, device: torch.device, dtype: torch.dtype, *,
                store: Store | None = None, specs: Sequence[dict] | None = None,
                checkpoint_every: float | None = None, bar=None) -> list[dict]:
    """Train ``points`` (one structure) as one batched model; return one payload per point.

    With a ``store``, the group's state is saved to ``store`` every ``checkpoint_every`` seconds
    (at the end of an epoch; 0: every epoch) and a saved state is resumed, and with ``specs``
    the finished results are saved there as well."""
    data = as_data(data)
    points, keys = list(points), list(keys)
    p0, M = points[0], len(points)
    gid = group_id(keys)
    gens = [torch.Generator().manual_seed(p.seed) for p in points]
    labels = [point_labels(p, data, g) for p, g in zip(points, gens)]
    model = family.batched(points, data, device, dtype, gens)
    flat = model.params
    opt = BatchedOptimizer(points, flat)
    fdt = lambda t: _to(t, device, dtype)  # noqa: E731
    if data.tensors:
        x, y_train = fdt(data.x), torch.stack(labels).to(device)  # (M, n): each model's own labels
        n = x.shape[0]
    has_test = data.x_test is not None or data.test_loader is not None
    if data.x_test is not None:
        x_test, y_test = fdt(data.x_test), data.y_test.to(device)
    epochs_done: list[int] = []
    metrics: list[dict[str, list[float]]] = [{} for _ in points]

    def add(prefix, values):
        for k, vs in values.items():
            for m, v in enumerate(vs):
                metrics[m].setdefault(f"{prefix}_{k}", []).append(v)

    def loader_eval(loader):
        sums, count = {}, 0
        for xb, yb in _loader_epoch(loader, 0):
            vals = model.evaluate(flat, fdt(xb), yb.to(device), per_model=False)
            b = xb.shape[0]
            for k, vs in vals.items():
                sums[k] = [a + b * v for a, v in zip(sums.get(k, [0.0] * M), vs)]
            count += b
        return {k: [v / count for v in vs] for k, vs in sums.items()}

    def record(epoch):
        with torch.no_grad():
            if data.tensors:
                add("train", model.evaluate(flat, x, y_train, per_model=True))
            else:
                add("train", loader_eval(data.train_loader))
            if data.x_test is not None:
                add("test", model.evaluate(flat, x_test, y_test, per_model=False))
            elif has_test:
                add("test", loader_eval(data.test_loader))
        epochs_done.append(epoch)

    start = 0
    state = store.load_partial(gid) if store is not None else None
    if state is not None and list(state["keys"]) == keys:
        with torch.no_grad():
            for t, s in zip(flat, state["params"]):
                t.copy_(s)
        opt.load_state(state["opt"])
        for g, s in zip(gens, state["generators"]):
            g.set_state(s)
        epochs_done[:] = list(state["epochs"])
        metrics[:] = [dict(m) for m in state["metrics"]]
        start = int(state["epoch"])
        store.journal("resume", group=gid, keys=keys, epoch=start)
        if bar is not None:
            bar.update(M * start)
    else:
        if store is not None:
            store.journal("start", group=gid, keys=keys)
        record(0)

    record_at = set(p0.eval_epochs())
    by_hand = getattr(model, "loss_grads", None)
    last_save = time.monotonic()
    for epoch in range(start + 1, p0.epochs + 1):
        if data.tensors:
            B = p0.batch_size
            order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (M, n)
            for s in range(0, n, B):
                idx = order[:, s:s + B]
                xb, yb = _minibatch(x, y_train, idx)
                if by_hand is not None:  # a family's own backward (the MLP's), else autograd
                    grads = by_hand(flat, xb, yb)
                else:
                    grads = torch.autograd.grad(model.loss(flat, xb, yb, shared=False).sum(), flat)
                opt.step(_masked(grads, model.masks))
        else:
            for xb, yb in _loader_epoch(data.train_loader, epoch):
                loss = model.loss(flat, fdt(xb), yb.to(device), shared=True).sum()
                opt.step(_masked(torch.autograd.grad(loss, flat), model.masks))
        if epoch in record_at:
            record(epoch)
        if bar is not None:
            bar.update(M)
        if (store is not None and checkpoint_every is not None and epoch < p0.epochs
                and time.monotonic() - last_save >= checkpoint_every):
            store.save_partial(gid, {"group": gid, "engine": ENGINE_VERSION, "keys": keys, "epoch": epoch,
                                     "params": [t.detach().cpu() for t in flat], "opt": opt.state(),
                                     "generators": [g.get_state() for g in gens], "epochs": list(epochs_done),
                                     "metrics": metrics})
            store.journal("checkpoint", group=gid, epoch=epoch)
            last_save = time.monotonic()

    payloads = [family.payload(p, k, epochs_done, m) for p, k, m in zip(points, keys, metrics)]
    if getattr(family, "return_state", False):
        for m, pl in enumerate(payloads):
            pl["_state"] = model.state_of(flat, m)
    if store is not None:
        if specs is not None:
            for k, s, pl in zip(keys, specs, payloads):
                save_payload(store, k, s, pl)
        store.drop_partial(gid)
        store.journal("done", group=gid, keys=keys)
    return payloads


def _minibatch(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each model's own minibatch: rows ``idx`` (M, b) of the shared inputs x (n, ...) and of the
    model's own targets y (M, n, ...), as (M, b, ...) each. Flat ``index_select``s copy what
    ``x[idx]`` and ``y[arange(M)[:, None], idx]`` would, at a fraction of advanced indexing's cost
    on a CPU (a (12, 100) batch of MNIST-1D: 14 against 52 us)."""
    M, b = idx.shape
    xb = x.index_select(0, idx.reshape(-1)).view((M, b) + x.shape[1:])
    rows = (idx + torch.arange(M, device=idx.device).unsqueeze(1) * y.shape[1]).reshape(-1)
    yb = y.reshape((-1,) + y.shape[2:]).index_select(0, rows).view((M, b) + y.shape[2:])
    return xb, yb


def _masked(grads, masks):
    return [g if mk is None else g * mk for g, mk in zip(grads, masks)]


def save_payload(store: Store, key: str, spec: dict, payload: dict) -> None:
    """Save a result (and its model state, if it carries one, as ``<key>.pt``; state first, so an
    entry is never there without the state it was saved with)."""
    if payload.get("_state") is not None:
        store.save_state(key, payload["_state"])
    store.save(key, spec, {k: v for k, v in payload.items() if k != "_state"})


def load_payload(store: Store, key: str, spec: dict, with_state: bool) -> dict | None:
    payload = store.load(key, spec)
    if payload is None or not with_state:
        return payload
    state = store.load_state(key)
    return None if state is None else {**payload, "_state": state}
