"""Strict device mode: catch CPU/GPU mix-ups on a machine without a GPU.

On CUDA, a tensor on the GPU and a non-scalar tensor on the CPU cannot meet in one operation,
``.numpy()`` (and so matplotlib) refuses GPU tensors, and a generator draws only on its own
device. On a CPU-only machine (CI) all of these pass silently, because the run's device *is*
the CPU. This module keeps the run's device apart from the host the way CUDA does, with a
:class:`torch.overrides.TorchFunctionMode` that tags host tensors and propagates the tag:

* **the run's device is the default**: every tensor counts as on the device unless it is proven
  to be on the host;
* **host tensors** are those made by a factory without ``device=`` (``torch.zeros(3)``,
  ``torch.tensor(data)``, ``torch.randn(n, generator=g)``), by ``torch.from_numpy`` and
  ``torch.as_tensor(ndarray)``, by ``.cpu()``, and by any operation whose tensor inputs are all
  host tensors;
* ``.to(anything)`` and factories with an explicit ``device=`` give device tensors; the
  ``.device`` of a host tensor is recognised as the host (``torch.zeros(3, device=x.device)``);
* generators made by :meth:`gdlab.runtime.Runtime.generator` for the run's device are device
  generators (see :func:`mark_device_generator`); every other ``torch.Generator`` is a host
  generator.

In this mode, CUDA's rules apply (see :class:`DeviceMixError` and friends):

* an operation that mixes a device tensor with a *non-scalar* host tensor raises (a 0-dim host
  tensor is allowed, as CUDA allows CPU scalars; ``torch.cat``/``torch.stack``, matrix
  products and index-taking ops allow no host tensor at all);
* indexing: a device tensor may be indexed by host indices; a host tensor indexed by device
  indices raises, and so does writing non-scalar values of the other side by advanced indexing
  (``x[idx] = v``); plain ``x[0] = v`` copies across, as on CUDA;
* ``.numpy()`` and ``__array__`` (what NumPy and matplotlib call) on a device tensor raise;
* drawing a host tensor with a device generator, or a device tensor with a host generator, raises;
* ``torch.lerp`` with a host tensor weight on device tensors raises (CUDA accepts it only from
  torch 2.6 on; the project's floor is lower).

``.to(device)`` of a host tensor and ``.cpu()`` of a device tensor return copies (as on CUDA)
instead of the tensor itself, so the original keeps its side. NumPy results are unchanged:
only aliasing between the two sides differs from a plain CPU run, as it does on CUDA.

Limits: tensors the mode never sees being made count as device tensors: batches from DataLoader
worker processes (``num_workers > 0``), ``torch.load`` results (load with
``map_location=rt.device`` and use ``.cpu()`` for NumPy), and ``from_numpy`` bound by
``from torch import from_numpy`` before the mode was on. Ops allowed on CUDA with a 0-dim CPU
tensor are modelled broadly (elementwise ops, reductions, ``where``); a few rarer ops that refuse
even a CPU scalar on CUDA may pass here.

Use it as ``with strict_device(rt.device): ...``, or ``enable(rt.device)`` / ``disable()``;
``gdlab.setup`` enables it when the environment variable ``GDLAB_STRICT_DEVICE=1`` is set
(``gdlab run CHAPTER --strict-device``). With a run device other than the CPU the hardware
enforces all of this itself, and the mode checks only the ``lerp`` weights.
"""
from __future__ import annotations

import collections
import contextlib
import weakref
from typing import Any, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

__all__ = ["DeviceCheckError", "DeviceMixError", "HostConversionError", "GeneratorDeviceError",
           "enable", "disable", "strict_device", "enabled", "is_host", "mark_host", "mark_device",
           "mark_device_generator", "violations"]

Tensor = torch.Tensor
HOST, DEVICE = "host", "device"
_HINT = ("(strict device check: the run's device is kept apart from the host as on CUDA; "
         "host tensors come from factories without device=, torch.from_numpy/torch.tensor of host "
         "data, .cpu(), and ops on host tensors only)")


class DeviceCheckError(Exception):
    """Base class of the strict mode's errors."""


class DeviceMixError(DeviceCheckError, RuntimeError):
    """A device tensor met a host tensor in an operation that CUDA refuses."""


class HostConversionError(DeviceCheckError, TypeError):
    """A device tensor went to NumPy (``.numpy()``, ``np.asarray``, matplotlib) without ``.cpu()``.

    A TypeError, like torch's own error for CUDA tensors, so that callers which catch it
    behave as they would on CUDA.
    """


class GeneratorDeviceError(DeviceCheckError, RuntimeError):
    """A generator drew a tensor on the other side (device generator, host tensor or vice versa)."""


# ---------------------------------------------------------------- tags
_host: dict[int, weakref.ref] = {}                       # id(tensor) -> weak reference, host tensors only
_device_generators: dict[int, torch.Generator] = {}    # while the mode is on (torch < 2.12: no weakrefs)
_host_devices: dict[int, torch.device] = {}              # torch.device objects returned by host .device
_host_device_order: collections.deque = collections.deque()
_HOST_DEVICES_KEPT = 4096
_state: dict[str, Any] = {"mode": None, "device": None, "patches": [], "on_error": "raise"}


def _forget(i: int, ref: weakref.ref) -> None:
    if _host.get(i) is ref:
        del _host[i]


def _tag(t: Tensor, side: str) -> None:
    i = id(t)
    if side == HOST:
        r = _host.get(i)
        if r is None or r() is not t:
            _host[i] = weakref.ref(t, lambda ref, i=i: _forget(i, ref))
    else:
        _host.pop(i, None)


def _side(t: Tensor) -> str:
    r = _host.get(id(t))
    return HOST if r is not None and r() is t else DEVICE


def is_host(t: Tensor) -> bool:
    """Whether the strict mode counts ``t`` as a host tensor (always ``t.is_cpu`` when the mode is off
    or the run's device is not the CPU)."""
    if _state["mode"] is None or _state["device"].type != "cpu":
        return bool(t.is_cpu)
    return _side(t) == HOST


def mark_host(t: Tensor) -> Tensor:
    """Count ``t`` as a host tensor (for tensors the mode cannot see being made); returns ``t``."""
    _tag(t, HOST)
    return t


def mark_device(t: Tensor) -> Tensor:
    """Count ``t`` as a tensor on the run's device; returns ``t``."""
    _tag(t, DEVICE)
    return t


def mark_device_generator(g: torch.Generator) -> torch.Generator:
    """Count ``g`` as a generator on the run's device (what :meth:`gdlab.runtime.Runtime.generator` makes); returns ``g``.

    A no-op when the mode is off, so the runtime calls it for every run generator; generators
    made before the mode is on count as host generators. The mode keeps them until it is disabled.
    """
    if _state["mode"] is not None:
        _device_generators[id(g)] = g
    return g


def _generator_side(g: torch.Generator) -> str:
    return DEVICE if _device_generators.get(id(g)) is g else HOST


def _device_arg_side(dev: Any, fallback: str | None = None) -> str:
    """The side an explicit ``device=`` argument names.

    The ``.device`` of a host tensor is the host; the run's device object, and CUDA devices, are
    the device; any other value (``"cpu"``, ``g.device``, ``torch.device("cpu")``) is ambiguous on
    a CPU machine: it counts as the device, or as ``fallback`` (the generator's side) when given.
    """
    if _host_devices.get(id(dev)) is dev:
        return HOST
    if dev is _state["device"]:
        return DEVICE
    kind = dev.type if isinstance(dev, torch.device) else dev if isinstance(dev, str) else None
    if isinstance(kind, str) and not kind.startswith("cpu"):
        return DEVICE
    return fallback if fallback is not None else DEVICE


def _host_device_object(d: torch.device) -> torch.device:
    _host_devices[id(d)] = d
    _host_device_order.append(d)
    if len(_host_device_order) > _HOST_DEVICES_KEPT:
        old = _host_device_order.popleft()
        if _host_devices.get(id(old)) is old:
            del _host_devices[id(old)]
    return d


# ---------------------------------------------------------------- messages
def _name(func) -> str:
    q = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    for prefix, repl in (("_VariableFunctionsClass.", "torch."), ("TensorBase.", "Tensor."),
                         ("_TensorBase.", "Tensor.")):
        if q.startswith(prefix):
            return repl + q[len(prefix):]
    if "." not in q:
        mod = getattr(func, "__module__", None) or "torch"
        return f"{mod}.{q}"
    return q


def _desc(t: Any) -> str:
    if isinstance(t, np.ndarray):
        return f"a NumPy array of shape {tuple(t.shape)}"
    side = "host" if _side(t) == HOST else "device"
    return f"a {side} tensor of shape {tuple(t.shape)} ({str(t.dtype).replace('torch.', '')})"


def _mix_error(func, dev: Any, host: Any, rule: str) -> DeviceMixError:
    return DeviceMixError(
        f"{_name(func)} mixes {_desc(dev)} (on the run's device) with {_desc(host)}: {rule} "
        f"Move the host tensor with .to(device) before the operation, or bring the device tensor "
        f"to the host with .cpu(). {_HINT}")


# ---------------------------------------------------------------- raising or recording
_violations: list[dict] = []
_TORCH_DIR = str(__import__("pathlib").Path(torch.__file__).parent)


def _fail(error: DeviceCheckError) -> None:
    """Raise ``error``, or record it and carry on when the mode was enabled with ``on_error="record"``."""
    if _state.get("on_error", "raise") == "raise":
        raise error
    import traceback

    frames = [f for f in traceback.extract_stack()[:-2]
              if not f.filename.startswith(_TORCH_DIR) and f.filename != __file__]
    where = frames[-1] if frames else None
    key = (type(error).__name__, where.filename if where else "?", where.lineno if where else 0)
    for v in _violations:
        if v["key"] == key:
            v["count"] += 1
            return
    _violations.append({"key": key, "error": type(error).__name__, "message": str(error), "count": 1,
                        "stack": [(f.filename, f.lineno, f.name, f.line) for f in frames]})


def violations() -> list[dict]:
    """What the mode recorded since it was enabled with ``on_error="record"`` (one entry per error
    type and source line: ``error``, ``message``, ``count``, ``stack`` as (file, line, function, code))."""
    return list(_violations)


# ---------------------------------------------------------------- the mode
def _walk(obj: Any, out: list) -> None:
    """Collect tensors (and non-scalar NumPy arrays) from an argument, two list levels deep."""
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for b in obj:
            if isinstance(b, Tensor):
                out.append(b)
            elif isinstance(b, (list, tuple)):
                out.extend(c for c in b if isinstance(c, Tensor))
            elif isinstance(b, np.ndarray) and b.ndim:
                out.append(b)
    elif isinstance(obj, np.ndarray) and obj.ndim:
        out.append(obj)


def _tag_result(result: Any, side: str, inputs_had_host: bool) -> None:
    if side == DEVICE and not inputs_had_host:
        return                                            # untagged is the device: nothing to do
    if isinstance(result, Tensor):
        _tag(result, side)
    elif isinstance(result, (tuple, list)):
        for r in result:
            if isinstance(r, Tensor):
                _tag(r, side)


def _is_index_scalar(t: Tensor) -> bool:
    return t.dim() == 0 and not t.dtype.is_floating_point and t.dtype != torch.bool


def _index_tensors(idx: Any) -> tuple[list, bool]:
    """Tensors used as indices, and whether the index is advanced (tensor/list/array indices)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    tensors, advanced = [], False
    for it in items:
        if isinstance(it, Tensor):
            if not _is_index_scalar(it):
                tensors.append(it)
                advanced = True
        elif isinstance(it, (list, np.ndarray)):
            advanced = True
            tensors.extend(x for x in (it if isinstance(it, list) else ()) if isinstance(x, Tensor))
    return tensors, advanced


def _check_put(func, self_t: Tensor, idx_tensors: list, advanced: bool, value: Any) -> None:
    self_side = _side(self_t)
    if self_side == HOST:
        for it in idx_tensors:
            if _side(it) == DEVICE:
                _fail(_mix_error(func, it, self_t,
                                 "a host tensor cannot be indexed by indices on the device "
                                 "(CUDA: 'indices should be either on cpu or on the same device')."))
    if advanced and isinstance(value, Tensor) and value.dim() > 0 and _side(value) != self_side:
        dev, host = (self_t, value) if self_side == DEVICE else (value, self_t)
        _fail(_mix_error(func, dev, host, "writing values by advanced indexing needs them on the "
                                          "indexed tensor's side (only a 0-dim value may cross)."))


_STRICT = set()          # ops in which not even a 0-dim host tensor may meet device tensors
_GENERIC_NO_MIX_NAMES = (
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
    "row_stack", "block_diag", "cartesian_prod", "meshgrid", "matmul", "mm", "bmm", "mv", "dot",
    "vdot", "outer", "ger", "inner", "tensordot", "kron", "einsum", "index_select", "gather",
    "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
    "index_add", "index_add_", "index_copy", "index_copy_", "take",
    "take_along_dim", "put", "put_", "searchsorted", "bucketize", "cdist", "embedding", "linear",
    "bilinear", "masked_select", "masked_scatter", "masked_scatter_")
for _n in _GENERIC_NO_MIX_NAMES:
    for _owner in (torch, torch.Tensor, torch.nn.functional):
        _f = getattr(_owner, _n, None)
        if _f is not None:
            _STRICT.add(_f)

_FACTORIES_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
_NEW = {getattr(torch.Tensor, n) for n in ("new_tensor", "new_zeros", "new_ones", "new_empty",
                                          "new_full", "new_empty_strided") if hasattr(torch.Tensor, n)}
_FROM_DATA = _FACTORIES_FROM_DATA | _NEW      # copy their data to the target side: no mixing
_LERP = {torch.lerp, torch.Tensor.lerp, torch.Tensor.lerp_}
_FOREACH_LERP = {getattr(torch, n) for n in ("_foreach_lerp", "_foreach_lerp_") if hasattr(torch, n)}
_KEEP_SELF = {torch.Tensor.copy_, torch.Tensor.set_}   # cross-device by design; self keeps its side
_INDEX_PUT = {f for f in (getattr(torch.Tensor, "index_put_", None), getattr(torch.Tensor, "index_put", None),
                          getattr(torch, "index_put", None), getattr(torch, "index_put_", None)) if f is not None}


def _lerp_weight(func, args, kwargs):
    if "weight" in kwargs:
        return kwargs["weight"]
    return args[2] if len(args) > 2 else None


class _StrictMode(TorchFunctionMode):
    """Tags host tensors, propagates the tags and applies CUDA's rules (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        special = _SPECIAL.get(func)
        if special is not None:
            return special(func, args, kwargs)
        if type(func) is _MethodWrapper:                # property getters and setters
            return _property(func, args, kwargs)
        return _generic(func, args, kwargs)


_MethodWrapper = type(torch.Tensor.grad.__get__)
_Parameter = torch.nn.Parameter
_PLAIN = frozenset({int, float, bool, complex, str, type(None), slice, type(Ellipsis), torch.dtype,
                    torch.device, torch.Size, torch.memory_format, torch.layout})


def _generic(func, args, kwargs):
    tensors: list = []
    for a in args:
        ta = type(a)
        if ta is Tensor or ta is _Parameter:
            tensors.append(a)
        elif ta not in _PLAIN:
            _walk(a, tensors)
    if kwargs:
        for k, v in kwargs.items():
            if k != "generator" and type(v) not in _PLAIN:
                _walk(v, tensors)
    dev = host = host_big = None
    for t in tensors:
        r = _host.get(id(t))
        if r is None or r() is not t:
            if type(t) is np.ndarray:
                host = host_big = t
            elif dev is None:
                dev = t
        else:
            host = t
            if host_big is None and t.dim() > 0:
                host_big = t
    if host is None and tensors and not kwargs and func not in _FROM_DATA:
        return func(*args)                               # the common case: device tensors only
    if dev is not None and host is not None and func not in _FROM_DATA:
        if host_big is not None:
            _fail(_mix_error(func, dev, host_big, "CUDA refuses it ('Expected all tensors to be on "
                                                  "the same device'); only 0-dim host tensors may meet "
                                                  "device tensors, as scalars."))
        if func in _STRICT:
            _fail(_mix_error(func, dev, host, "this operation takes no host tensor at all on CUDA, "
                                              "not even a 0-dim one."))
    gen = kwargs.get("generator")
    device_kw = kwargs.get("device")
    if func in _FACTORIES_FROM_DATA:
        data = args[0] if args else kwargs.get("data")
        if device_kw is not None:
            side = _device_arg_side(device_kw)
        elif isinstance(data, Tensor):
            side = _side(data)
        else:
            side = HOST
    elif func in _NEW:
        side = _device_arg_side(device_kw) if device_kw is not None else _side(args[0])
    else:
        gside = _generator_side(gen) if gen is not None else None
        if device_kw is not None:
            side = _device_arg_side(device_kw, fallback=gside)
        elif not tensors:
            side = HOST                                  # a factory without device=
        else:
            side = HOST if (host is not None and dev is None) else DEVICE
        if gside is not None and gside != side:
            what = "host tensor" if side == HOST else "tensor on the run's device"
            fix = ("pass device=generator.device to the factory" if side == HOST
                   else "draw with a generator on the tensor's device (rt.generator(k) for the run's "
                        "device) or draw on the host and move the result with .to(device)")
            _fail(GeneratorDeviceError(
                f"{_name(func)} draws a {what} with a {gside} generator; CUDA refuses it "
                f"('Expected a ... device type for generator'): {fix}. {_HINT}"))
    result = func(*args, **kwargs)
    _tag_result(result, side, host is not None)
    return result


def _property(func, args, kwargs):
    """Other property getters (.T, .mT, .real, .shape, ...) and setters."""
    r = func(*args, **kwargs)
    if type(r) is Tensor and _side(args[0]) == HOST:
        _tag(r, HOST)
    return r


def _device_get(func, args, kwargs):
    d = func(*args, **kwargs)
    if _side(args[0]) == HOST:
        return _host_device_object(d)                    # recognised later as the host
    return _state["device"] if d == _state["device"] else d


def _same_side_get(func, args, kwargs):
    """``.grad`` and ``.data`` are on their tensor's side (autograd makes ``.grad`` unseen)."""
    r = func(*args, **kwargs)
    if r is not None:
        _tag(r, _side(args[0]))
    return r


def _data_set(func, args, kwargs):
    r = func(*args, **kwargs)
    if isinstance(args[1], Tensor):
        _tag(args[0], _side(args[1]))                    # nn.Module.to sets param.data
    return r


def _numpy(func, args, kwargs):
    t = args[0]
    if _side(t) == DEVICE and not kwargs.get("force", False):
        _fail(HostConversionError(
            f"Tensor.numpy() of {_desc(t)} on the run's device: CUDA refuses it ('can't convert "
            f"cuda:0 device type tensor to numpy'). Use .cpu() before .numpy() (x.detach().cpu().numpy()). "
            f"{_HINT}"))
    return func(*args, **kwargs)


def _array(func, args, kwargs):
    t = args[0]
    if _side(t) == DEVICE:
        _fail(HostConversionError(
            f"NumPy (np.asarray, matplotlib, ...) got {_desc(t)} on the run's device: CUDA refuses "
            f"it ('can't convert cuda:0 device type tensor to numpy'). Move it with .cpu() first, "
            f"e.g. plt.plot(x.cpu()) or np.asarray(x.cpu()). {_HINT}"))
    return func(*args, **kwargs)


def _cpu(func, args, kwargs):
    t = args[0]
    r = func(*args, **kwargs)
    if _side(t) == DEVICE and r is t:
        r = t.clone()                                    # a copy, as on CUDA, so t stays on the device
    _tag(r, HOST)
    return r


def _to(func, args, kwargs):
    t = args[0]
    target = None                                        # the side named by a device or tensor argument
    if "device" in kwargs and kwargs["device"] is not None:
        target = _device_arg_side(kwargs["device"])
    elif "other" in kwargs and isinstance(kwargs["other"], Tensor):
        target = _side(kwargs["other"])
    elif len(args) > 1:
        a = args[1]
        if isinstance(a, Tensor):
            target = _side(a)
        elif isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
            target = _device_arg_side(a)
    r = func(*args, **kwargs)
    side = _side(t) if target is None else target
    if r is t and side != _side(t):
        r = t.clone()                                    # a copy, as on CUDA, so t keeps its side
    _tag(r, side)
    return r


def _type_as(func, args, kwargs):
    t, other = args[0], (args[1] if len(args) > 1 else kwargs.get("other"))
    r = func(*args, **kwargs)
    side = _side(other) if isinstance(other, Tensor) else _side(t)
    if r is t and side != _side(t):
        r = t.clone()
    _tag(r, side)
    return r


def _keep_self(func, args, kwargs):
    return func(*args, **kwargs)                         # copy_/set_ cross sides; self keeps its tag


def _getitem(func, args, kwargs):
    t, idx = args[0], args[1]
    idx_tensors, _ = _index_tensors(idx)
    if _side(t) == HOST:
        for it in idx_tensors:
            if _side(it) == DEVICE:
                _fail(_mix_error(func, it, t, "a host tensor cannot be indexed by indices on the device "
                                              "(CUDA: 'indices should be either on cpu or on the same "
                                              "device as the indexed tensor')."))
    r = func(*args, **kwargs)
    _tag(r, _side(t))
    return r


def _setitem(func, args, kwargs):
    t, idx, value = args[0], args[1], args[2]
    idx_tensors, advanced = _index_tensors(idx)
    _check_put(func, t, idx_tensors, advanced, value)
    return func(*args, **kwargs)


def _index_put(func, args, kwargs):
    t = args[0]
    indices = args[1] if len(args) > 1 else kwargs.get("indices")
    values = args[2] if len(args) > 2 else kwargs.get("values")
    idx = [i for i in (indices or ()) if isinstance(i, Tensor)]
    _check_put(func, t, idx, True, values)
    r = func(*args, **kwargs)
    _tag(r, _side(t))
    return r


def _lerp(func, args, kwargs):
    w = _lerp_weight(func, args, kwargs)
    if isinstance(w, Tensor) and _side(w) == HOST:
        ends = [a for a in args[:2] if isinstance(a, Tensor)] + \
               [v for k, v in kwargs.items() if k in ("input", "end") and isinstance(v, Tensor)]
        dev = next((a for a in ends if _side(a) == DEVICE), None)
        if dev is not None:
            _fail(_mix_error(func, dev, w, "torch.lerp with a host tensor weight works on CUDA only "
                                           "from torch 2.6 on. Pass a Python float (float(weight)) or "
                                           "the weight on the device."))
    return _generic(func, args, kwargs)


def _foreach_lerp(func, args, kwargs):
    w = args[2] if len(args) > 2 else kwargs.get("weight", kwargs.get("weights"))
    ws = w if isinstance(w, (list, tuple)) else [w]
    host_w = next((x for x in ws if isinstance(x, Tensor) and _side(x) == HOST), None)
    if host_w is not None:
        dev = next((x for x in list(args[0]) + list(args[1]) if _side(x) == DEVICE), None)
        if dev is not None:
            _fail(_mix_error(func, dev, host_w, "lerp with a host tensor weight works on CUDA only from "
                                                "torch 2.6 on. Pass Python floats as weights."))
    return _generic(func, args, kwargs)


def _autograd_grad(func, args, kwargs):
    inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
    r = func(*args, **kwargs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs or ())
    if isinstance(r, (tuple, list)):
        for g, x in zip(r, ins):
            if isinstance(g, Tensor) and isinstance(x, Tensor):
                _tag(g, _side(x))
    return r


_SPECIAL = {
    torch.Tensor.numpy: _numpy,
    torch.Tensor.__array__: _array,
    torch.Tensor.cpu: _cpu,
    torch.Tensor.to: _to,
    torch.Tensor.type_as: _type_as,
    torch.Tensor.__getitem__: _getitem,
    torch.Tensor.__setitem__: _setitem,
    torch.autograd.grad: _autograd_grad,
}
_SPECIAL.update({f: _keep_self for f in _KEEP_SELF})
_SPECIAL.update({torch.Tensor.device.__get__: _device_get, torch.Tensor.grad.__get__: _same_side_get,
                 torch.Tensor.data.__get__: _same_side_get, torch.Tensor.data.__set__: _data_set})
# metadata queries that compute nothing: no check, no tag
_PASS_NAMES = ("_has_compatible_shallow_copy_type", "is_same_size", "is_set_to", "data_ptr",
               "untyped_storage", "storage", "_is_view", "is_shared", "get_device")
_SPECIAL.update({f: _keep_self for n in _PASS_NAMES for f in (getattr(torch, n, None), getattr(torch.Tensor, n, None))
                 if f is not None})
_SPECIAL.update({f: _index_put for f in _INDEX_PUT})
_SPECIAL.update({f: _lerp for f in _LERP})
_SPECIAL.update({f: _foreach_lerp for f in _FOREACH_LERP})


class _LerpOnlyMode(TorchFunctionMode):
    """On a real accelerator the hardware checks devices; only lerp's host weight (accepted from torch
    2.6 on, below the project's floor) needs a check."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LERP:
            w = _lerp_weight(func, args, kwargs)
            ends = [a for a in args[:2] if isinstance(a, Tensor)]
            if isinstance(w, Tensor) and w.is_cpu and any(not e.is_cpu for e in ends):
                _fail(DeviceMixError(f"{_name(func)} with a weight tensor on the CPU and inputs on "
                                     f"{ends[0].device}: this works only from torch 2.6 on. Pass a Python "
                                     f"float (float(weight)) or the weight on the inputs' device."))
        return func(*args, **kwargs)


# ---------------------------------------------------------------- objects the mode cannot see being made
def _patch(owner: Any, name: str, make) -> None:
    if owner is None or not hasattr(owner, name):
        return
    original = owner.__dict__[name] if isinstance(owner, type) and name in owner.__dict__ else getattr(owner, name)
    _state["patches"].append((owner, name, original))
    setattr(owner, name, make(getattr(owner, name)))


def _host_result(orig):
    def wrapper(*args, **kwargs):
        return mark_host(orig(*args, **kwargs))
    wrapper.__wrapped__ = orig
    return wrapper


def _same_side(orig):
    """functorch's wrap/unwrap helpers make new tensor objects the mode does not see: keep the side."""
    def wrapper(x, *args, **kwargs):
        r = orig(x, *args, **kwargs)
        if isinstance(x, Tensor) and isinstance(r, Tensor) and _side(x) == HOST:
            _tag(r, HOST)
        return r
    wrapper.__wrapped__ = orig
    return wrapper


def _parameter_new(orig):
    def __new__(cls, data=None, requires_grad=True):
        p = orig(cls, data, requires_grad)
        if isinstance(data, Tensor) and _side(data) == HOST:
            _tag(p, HOST)
        return p
    return staticmethod(__new__)


def _install_patches() -> None:
    import importlib

    _patch(torch, "from_numpy", _host_result)
    _patch(torch, "frombuffer", _host_result)
    _patch(torch.nn.Parameter, "__new__", _parameter_new)
    for modname, names in (("torch._functorch.vmap", ("_add_batch_dim", "_remove_batch_dim")),
                           ("torch._functorch.eager_transforms", ("_wrap_for_grad", "_unwrap_for_grad",
                                                                  "_wrap_functional_tensor",
                                                                  "_unwrap_functional_tensor")),
                           ("torch._functorch.autograd_function", ("_wrap_for_grad", "_unwrap_for_grad",
                                                                   "_add_batch_dim"))):
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # pragma: no cover - other torch layouts
            continue
        for n in names:
            _patch(mod, n, _same_side)


def _remove_patches() -> None:
    while _state["patches"]:
        owner, name, original = _state["patches"].pop()
        setattr(owner, name, original)


# ---------------------------------------------------------------- public switch
def enabled() -> bool:
    """Whether the strict device mode is on."""
    return _state["mode"] is not None


def enable(device: str | torch.device, *, on_error: str = "raise") -> None:
    """Turn the strict device mode on for a run on ``device`` (pass ``rt.device`` itself).

    On a CPU run, tensors of the run's device are kept apart from host tensors (see the module
    docstring); on a CUDA/MPS run only lerp's host weights are checked. ``on_error="record"``
    collects every violation in :func:`violations` and carries on instead of raising (to survey
    a whole chapter in one run). Enabling it again (a notebook's setup cell run twice) keeps the
    tags and takes the new device object when the device is the same; another device restarts it.
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"parameter 'on_error': got {on_error!r}; allowed values are ['raise', 'record']")
    dev = device if isinstance(device, torch.device) else torch.device(device)
    if _state["mode"] is not None:
        if _state["device"] == dev:
            _state["device"], _state["on_error"] = dev, on_error
            return
        disable()
    _state["on_error"] = on_error
    _violations.clear()
    mode = _StrictMode() if dev.type == "cpu" else _LerpOnlyMode()
    _state["device"] = dev
    if dev.type == "cpu":
        _install_patches()
    mode.__enter__()
    _state["mode"] = mode


def disable() -> None:
    """Turn the strict device mode off (no-op when it is off) and forget every tag (the recorded
    :func:`violations` stay until the next :func:`enable`)."""
    mode = _state["mode"]
    if mode is None:
        return
    _state["mode"] = None
    try:
        mode.__exit__(None, None, None)
    finally:
        _remove_patches()
        _host.clear()
        _host_devices.clear()
        _host_device_order.clear()
        _device_generators.clear()
        _state["device"] = None


@contextlib.contextmanager
def strict_device(device: str | torch.device) -> Iterator[None]:
    """``with strict_device(rt.device): ...`` runs the block in the strict device mode."""
    enable(device)
    try:
        yield
    finally:
        disable()
