"""The per-model loop that the sweep engine replaces: one model, ``torch.optim``, plain autograd.

:func:`train_reference` trains one :class:`gdlab.sweep.engine.Point` exactly as :func:`gdlab.sweep.run`
would (same initialization, noisy labels, minibatch order and metrics) but with an ordinary
``nn.Module``, ``loss.backward()`` and ``torch.optim.SGD``/``Adam``/``AdamW``. The tests and
``benchmarks/bench_sweep.py`` compare the two.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from gdlab.runtime import pick_device, pick_dtype
from gdlab.sweep.engine import Point, Result, _loader_epoch, _seeded, as_data, point_labels
from gdlab.sweep.store import spec_key

__all__ = ["train_reference"]


def train_reference(model: Callable[..., torch.nn.Module], loss: Callable, data, point: Point, *,
                    device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                    metrics: Mapping[str, Callable] | None = None) -> Result:
    """Train ``point`` alone with ``torch.optim``; metrics as :func:`gdlab.sweep.run` records them."""
    device, dtype = pick_device(device), pick_dtype(dtype)
    data = as_data(data)
    g = torch.Generator().manual_seed(point.seed)
    y = point_labels(point, data, g)
    with _seeded(point.seed):
        net = model(**point.model)
    net = net.to(device=device, dtype=dtype)
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[point.optimizer]
    kw = (dict(momentum=point.momentum, nesterov=point.nesterov) if point.optimizer == "sgd"
          else dict(betas=point.betas, eps=point.eps))
    opt = opt_cls(net.parameters(), lr=point.lr, weight_decay=point.weight_decay, **kw)
    fdt = lambda t: t.to(device, dtype if t.is_floating_point() else t.dtype)  # noqa: E731
    fns = {"loss": loss, **dict(metrics or {})}
    result = Result(point, spec_key(point.to_dict()))

    @torch.no_grad()
    def measure(batches):
        sums, count = {}, 0
        net.eval()
        for xb, yb in batches:
            out = net(xb)
            b = xb.shape[0]
            vals = {k: float(fn(out, yb)) * b for k, fn in fns.items()}
            if out.dim() == 2 and not yb.is_floating_point() and yb.dim() == 1:
                vals["error"] = float((out.argmax(-1) != yb).sum())
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            count += b
        net.train()
        return {k: v / count for k, v in sums.items()}

    def record(epoch):
        parts = {}
        if data.tensors:
            parts["train"] = measure([(fdt(data.x), y.to(device))])
        else:
            parts["train"] = measure((fdt(a), b.to(device)) for a, b in _loader_epoch(data.train_loader, 0))
        if data.x_test is not None:
            parts["test"] = measure([(fdt(data.x_test), data.y_test.to(device))])
        elif data.test_loader is not None:
            parts["test"] = measure((fdt(a), b.to(device)) for a, b in _loader_epoch(data.test_loader, 0))
        for prefix, vals in parts.items():
            for k, v in vals.items():
                result.metrics.setdefault(f"{prefix}_{k}", []).append(v)
        result.epochs.append(epoch)

    net.train()
    record(0)
    record_at = set(point.eval_epochs())
    for epoch in range(1, point.epochs + 1):
        if data.tensors:
            x, yy, n = fdt(data.x), y.to(device), data.x.shape[0]
            order = torch.randperm(n, generator=g).to(device)
            batches = ((x[order[s:s + point.batch_size]], yy[order[s:s + point.batch_size]])
                       for s in range(0, n, point.batch_size))
        else:
            batches = ((fdt(a), b.to(device)) for a, b in _loader_epoch(data.train_loader, epoch))
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            loss(net(xb), yb).backward()
            opt.step()
        if epoch in record_at:
            record(epoch)
    return result
