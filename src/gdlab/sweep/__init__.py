"""Sweeps: many small models (widths, seeds, learning rates, label noise) trained as ONE batched
computation, with results in a resumable, content-addressed on-disk store.

For any model::

    from gdlab import sweep

    class CNN(torch.nn.Module):
        def __init__(self, width): ...

    results = sweep.run(CNN, torch.nn.functional.cross_entropy, (x, y, x_test, y_test),
                        sweep.grid(width=[4, 8, 16], seed=range(3), lr=[0.1, 0.03], momentum=0.9,
                                   epochs=20, batch_size=64),
                        store="_build/sweeps/cnn")
    results[0].point.model["width"], results[0].test_error[-1]

:func:`run` stacks the models of each group with ``torch.func`` and trains them with ``vmap``
and a batched optimizer step (:mod:`gdlab.sweep.engine`); :mod:`gdlab.sweep.store` keeps the
results; :mod:`gdlab.sweep.executors` trains groups here or as Ray tasks (``executor="ray"``).
The MNIST-1D MLP of deep double descent is one use of the engine with a hand-written batched
forward: :class:`~gdlab.sweep.mlp.MLPPoint`, :func:`~gdlab.sweep.mlp.run_sweep` and
:func:`~gdlab.sweep.mlp.train_one` (:mod:`gdlab.sweep.mlp`).
:func:`gdlab.sweep.reference.train_reference` is the per-model ``torch.optim`` loop that the
engine replaces (the tests compare the two).

Used for the deep double descent experiment of Nakkiran et al. 2019 on MNIST-1D (Greydanus 2020).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from gdlab.sweep.engine import (ModuleFamily, Point, Result, SweepData, as_data, grid, plan_groups,
                                train_group)
from gdlab.sweep.mlp import (MLPPoint, PointResult, data_fingerprint, init_mlp, load_result, run_sweep,
                             train_one)
from gdlab.sweep.store import ENGINE_VERSION, Store
from gdlab.sweep import models  # noqa: E402,F401

__all__ = ["run", "grid", "Point", "Result", "SweepData", "as_data", "Store", "MLPPoint", "PointResult",
           "run_sweep", "train_one", "data_fingerprint", "load_result", "init_mlp", "plan_groups", "train_group",
           "ModuleFamily", "models", "ENGINE_VERSION"]


def run(model: Callable[..., torch.nn.Module], loss: Callable, data, points: Iterable[Point], *,
        store: str | Path | None = None, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
        widths: str = "mask", metrics: Mapping[str, Callable] | None = None, tag: str | None = None,
        max_group_size: int | None = None, group_overhead: float | None = None,
        checkpoint_every: float | None = 120.0, executor: str = "local", ray_options: dict | None = None,
        return_state: bool = False, show_progress: bool = True) -> list[Result]:
    """Train a model for every point as one batched computation per group; results in input order.

    ``model``: a factory (a function or an ``nn.Module`` class) called as ``model(**point.model)``
    under ``torch.manual_seed(point.seed)``. ``loss(outputs, targets)``: a mean over the batch,
    such as ``F.cross_entropy``. ``data``: a :class:`gdlab.data.Split`, tensors ``(x, y)`` or
    ``(x, y, x_test, y_test)``, a dict of them, or a ``DataLoader`` (see
    :func:`gdlab.sweep.engine.as_data`). ``points``: :class:`~gdlab.sweep.engine.Point` s, e.g.
    from :func:`~gdlab.sweep.engine.grid`.

    ``widths``: ``"mask"`` pads models of different sizes into one group (checked exact) and
    ``"group"`` trains only equal shapes together. ``metrics``: extra ``{name: fn(outputs,
    targets)}`` batch means, recorded as ``train_<name>``/``test_<name>``. ``tag``: a string
    added to the keys, for a change that the keys cannot see (they cover the model's class and
    factory source, its printed architecture and initial weights, the loss's and metrics' source,
    the data, the dtype and the device type).

    ``store``: a folder; finished points are saved and read back instead of recomputed, and a
    group in training saves its state every ``checkpoint_every`` seconds (None: never), so an
    interrupted sweep loses at most that much work. ``max_group_size`` caps the models per group;
    ``group_overhead`` is the fixed cost of a batched step in multiply-adds per sample (default
    2e4 on a CPU, 1e9 on a GPU; see :func:`gdlab.sweep.engine.plan_groups`). ``executor``:
    ``"local"`` or ``"ray"`` (see :mod:`gdlab.sweep.executors`). ``return_state=True`` keeps each
    trained model's ``state_dict`` (``result.state``, ``result.model(factory)``; stored as
    ``<key>.pt`` beside the entry).
    """
    from gdlab.sweep.executors import execute

    points = list(points)
    if not points:
        raise ValueError("parameter 'points': got an empty list; expected at least one Point")
    for i, p in enumerate(points):
        if not isinstance(p, Point):
            raise TypeError(f"parameter 'points[{i}]': got {type(p).__name__}; expected a gdlab.sweep.Point "
                            "(make them with gdlab.sweep.grid)")
    family = ModuleFamily(model, loss, metrics=metrics, widths=widths, tag=tag, return_state=return_state)
    return execute(family, points, as_data(data), store=store, device=device, dtype=dtype,
                   max_group_size=max_group_size, group_overhead=group_overhead, checkpoint_every=checkpoint_every,
                   executor=executor, ray_options=ray_options, show_progress=show_progress)
