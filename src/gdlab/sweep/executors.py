"""Where the groups of a sweep are trained: in this process, or as Ray tasks on a cluster.

:func:`execute` is what :func:`gdlab.sweep.run` and :func:`gdlab.sweep.mlp.run_sweep` call. It
computes every point's key, reads what the store already has, resumes the groups the store holds
checkpoints for, plans the rest into batched groups and trains them:

- ``executor="local"``: one group after the other in this process;
- ``executor="ray"``: each group is a Ray task (``pip install 'gdlab[ray]'``). Call
  ``ray.init(address=...)`` first to use a cluster; otherwise ``ray.init()`` connects to the
  cluster named by ``RAY_ADDRESS`` or starts a local instance. A task asks for
  ``ray_options`` (default: 1 CPU, and half a GPU when the device is CUDA, so two groups share a
  GPU) and is retried when its worker dies. Results come back to this process, which saves them
  in the store; when the store's folder is also visible to the worker (the same machine or a
  shared file system), the worker saves its results and checkpoints there itself, so that a
  retried task resumes where the dead one stopped. Keys do not depend on where a point was
  trained, only on the device type, so cluster and local runs fill the same store and resume
  each other.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

from gdlab.runtime import check_choice, check_float, check_int, pick_device, pick_dtype, progress
from gdlab.sweep.engine import (SweepData, as_data, load_payload, plan_groups, save_payload, train_group,
                                _sample_batch)
from gdlab.sweep.store import ENGINE_VERSION, Store, spec_key

__all__ = ["EXECUTORS", "execute"]

EXECUTORS = ("local", "ray")


def execute(family, points: Sequence, data: SweepData, *, store=None, device="cpu", dtype="float32",
            max_group_size: int | None = None, group_overhead: float | None = None,
            checkpoint_every: float | None = 120.0, executor: str = "local", ray_options: dict | None = None,
            show_progress: bool = True) -> list:
    """Train (or read back) every point; results in input order, as ``family.result`` makes them."""
    check_choice("executor", executor, EXECUTORS)
    if max_group_size is not None:
        check_int("max_group_size", max_group_size, min=1)
    if checkpoint_every is not None:
        checkpoint_every = check_float("checkpoint_every", checkpoint_every, min=0.0)
    data = as_data(data)
    if not data.tensors and any(p.label_noise > 0 for p in points):
        raise ValueError("parameter 'label_noise': label noise needs tensor data (each model draws its own noisy "
                         "labels), not a DataLoader")
    dtype = pick_dtype(dtype)
    ray = _ray() if executor == "ray" else None
    device = _ray_device(ray, device) if ray is not None else pick_device(device)
    if group_overhead is None:
        group_overhead = 2e4 if device.type == "cpu" else 1e9
    group_overhead = check_float("group_overhead", group_overhead, min=0.0)

    fp = data.fingerprint()
    specs = [{**family.spec(p), "data": fp, "dtype": str(dtype), "device": device.type, "engine": ENGINE_VERSION}
             for p in points]
    keys = [spec_key(s) for s in specs]
    st = Store(store) if store is not None else None
    payloads: dict[str, dict] = {}
    if st is not None:
        st.clean()
        for k, s in dict(zip(keys, specs)).items():
            r = load_payload(st, k, s, getattr(family, "return_state", False))
            if r is not None:
                payloads[k] = r
    todo_idx, seen = [], set()
    for i, k in enumerate(keys):
        if k not in payloads and k not in seen:
            todo_idx.append(i)
            seen.add(k)
    groups = _groups(family, points, keys, todo_idx, st, data, ray, device, max_group_size, group_overhead)
    bar = progress(total=sum(points[i].epochs for i in todo_idx), desc="sweep",
                   enabled=None if show_progress else False)
    try:
        if ray is None:
            for g in groups:
                gpoints, gkeys, gspecs = [points[i] for i in g], [keys[i] for i in g], [specs[i] for i in g]
                out = train_group(family, gpoints, gkeys, data, device, dtype, store=st, specs=gspecs,
                                  checkpoint_every=checkpoint_every, bar=bar)
                payloads.update(zip(gkeys, out))
        else:
            _run_ray(ray, family, points, keys, specs, groups, data, st, device, dtype, checkpoint_every,
                     ray_options, bar, payloads)
    finally:
        bar.close()
    return [family.result(p, k, payloads[k]) for p, k in zip(points, keys)]


def _groups(family, points, keys, todo_idx, st, data, ray, device, max_group_size, group_overhead):
    """Groups to train: first those with a checkpoint in the store (in their stored order), then a
    plan of the rest."""
    groups = []
    where = {keys[i]: i for i in todo_idx}
    if st is not None:
        for gid, gkeys in st.partial_groups().items():
            if all(k in where for k in gkeys):
                groups.append([where.pop(k) for k in gkeys])
            elif not any(k in where for k in gkeys):
                st.drop_partial(gid)  # its points are all finished
    rest = [i for i in todo_idx if keys[i] in where]
    if not rest:
        return groups
    if ray is not None and max_group_size is None:
        max_group_size = max(1, math.ceil(len(rest) / (2 * _ray_slots(ray, device))))
    sample = _sample_batch(data, 1)[0] if data is not None else None
    for g in plan_groups(family, [points[i] for i in rest], max_group_size, group_overhead, sample):
        groups.append([rest[j] for j in g])
    return groups


# ---------------------------------------------------------------- Ray
def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("executor='ray' needs Ray: pip install 'gdlab[ray]' (or pip install ray)") from e
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    return ray


def _ray_device(ray, device) -> torch.device:
    """The device the workers train on. "auto" means CUDA when the cluster has GPUs; the device
    type is part of every key, so it is fixed here, before any task runs."""
    if device is None or device == "auto":
        return torch.device("cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu")
    dev = torch.device(device)
    check_choice("device", dev.type, ("cpu", "cuda"))
    return dev


def _ray_slots(ray, device) -> int:
    res = ray.cluster_resources()
    if device.type == "cuda":
        return max(1, int(res.get("GPU", 1) / 0.5))
    return max(1, int(res.get("CPU", 1)))


def _ray_options(device, ray_options) -> dict:
    opts = {"num_cpus": 1, "max_retries": 5}
    if device.type == "cuda":
        opts["num_gpus"] = 0.5
    opts.update(ray_options or {})
    return opts


def _ray_train_group(family, data, points, keys, specs, device: str, dtype: torch.dtype, store_path, checkpoint_every,
                     threads: int):
    """A Ray task: train one group on the worker and return its payloads."""
    torch.set_num_threads(max(1, threads))
    dev = pick_device("cuda" if torch.device(device).type == "cuda" else device)
    if dev.type != torch.device(device).type:  # pragma: no cover - a misconfigured cluster
        raise RuntimeError(f"the sweep's keys are for device type {torch.device(device).type!r} but this worker "
                           f"has {dev.type!r}")
    st = Store(store_path) if store_path is not None and Path(store_path).is_dir() else None
    return train_group(family, points, keys, data, dev, pick_dtype(dtype), store=st, specs=specs,
                       checkpoint_every=checkpoint_every)


def _run_ray(ray, family, points, keys, specs, groups, data, st, device, dtype, checkpoint_every, ray_options,
             bar, payloads):
    opts = _ray_options(device, ray_options)
    task = ray.remote(_ray_train_group).options(**opts)
    threads = int(max(1, opts.get("num_cpus", 1)))
    store_path = None
    if st is not None:
        st.path.mkdir(parents=True, exist_ok=True)
        store_path = str(st.path.resolve())
    fam_ref, data_ref = ray.put(family), ray.put(data)
    pending = {}
    for g in groups:
        ref = task.remote(fam_ref, data_ref, [points[i] for i in g], [keys[i] for i in g], [specs[i] for i in g],
                          str(device), dtype, store_path, checkpoint_every, threads)
        pending[ref] = g
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        g = pending.pop(done[0])
        out = ray.get(done[0])
        for i, payload in zip(g, out):
            if st is not None and load_payload(st, keys[i], specs[i], "_state" in payload) is None:
                save_payload(st, keys[i], specs[i], payload)
            payloads[keys[i]] = payload
        bar.update(sum(points[i].epochs for i in g))
