"""Device, dtype, seeding, fidelity profiles and parameter validation.

Every chapter starts with ``rt = setup(profile, seed, device)``. The returned
:class:`Runtime` is the only piece of "global" state a chapter carries: it names
the profile, the seed, the device and the default dtype. ``rt.params(globals(), ...)``
then declares the chapter's knobs in one place, with their kinds, ranges and
per-profile defaults (:class:`Int`, :class:`Float`, :class:`Ints`, :class:`Floats`,
:class:`Choice`, :class:`Flag`, :class:`Text`), and checks them all at once.

Profiles: ``smoke`` runs every cell at tiny sizes in seconds (claims recorded, not
judged), ``quick`` is the CPU default, ``paper`` the papers' scale on a GPU.
"""
from __future__ import annotations

import math
import numbers
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from gdlab import devicecheck

__all__ = ["PROFILES", "DTYPES", "MAX_SEED", "ParameterError", "ParameterTypeError", "check_choice",
           "check_int", "check_float", "check_sequence", "Int", "Float", "Ints", "Floats", "Choice", "Flag",
           "Text", "Params", "check_params", "pick_device", "pick_dtype", "seed_everything", "make_generator",
           "device_name", "Runtime", "setup", "progress"]


PROFILES = ("quick", "paper", "smoke")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SEED = 2**64 - 1  # torch.manual_seed accepts seeds up to 2**64 - 1


class ParameterError(ValueError):
    """A bad parameter: the message names the parameter, the value and what is allowed.

    The book pipeline exits with its own code for this error (not the code of a failed claim)."""


class ParameterTypeError(ParameterError, TypeError):
    """A parameter of the wrong type (also a TypeError)."""


# ---------------------------------------------------------------- validation
def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ParameterError(f"parameter {name!r}: got {value!r}; allowed values are {list(allowed)}")
    return value


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """Raise TypeError/ValueError unless ``value`` is an integer in [min, max]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterTypeError(f"parameter {name!r}: got {value!r} of type {type(value).__name__}; "
                                 "expected an integer")
    _check_bounds(name, value, min, max, "an integer")
    return int(value)


def check_float(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                open_min: bool = False) -> float:
    """Raise TypeError/ValueError unless ``value`` is a finite real number in [min, max].

    ``open_min=True`` excludes ``min`` itself (for step sizes and scales that must be > 0).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(f"parameter {name!r}: got {value!r} of type {type(value).__name__}; "
                                 "expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise ParameterError(f"parameter {name!r}: got {value!r}; expected a finite number")
    if open_min and min is not None and value <= min:
        raise ParameterError(f"parameter {name!r}: got {value!r}; expected a number > {min}")
    _check_bounds(name, value, min, max, "a number")
    return value


def check_sequence(name: str, value: Any, check_item, *, min_len: int = 1) -> list:
    """Validate a list/tuple parameter item by item with ``check_item(name, item)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ParameterTypeError(f"parameter {name!r}: got {value!r}; expected a list")
    items = [check_item(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if len(items) < min_len:
        raise ParameterError(f"parameter {name!r}: got {len(items)} items; expected at least {min_len}")
    return items


def _check_bounds(name, value, lo, hi, what):
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ParameterError(f"parameter {name!r}: got {value!r}; expected {what} in {rng}")


# ---------------------------------------------------------------- parameter declarations
class _Unset:
    def __repr__(self):
        return "unset"


_UNSET = _Unset()


@dataclass(frozen=True)
class _Param:
    """A chapter knob: its kind and range, and its default per profile (None in the parameters
    cell means "the profile's default"). ``smoke`` falls back to ``quick``."""

    default: Any = _UNSET
    quick: Any = _UNSET
    paper: Any = _UNSET
    smoke: Any = _UNSET
    help: str = ""

    def profile_default(self, name: str, profile: str) -> Any:
        order = {"quick": ("quick", "default"), "paper": ("paper", "default"),
                 "smoke": ("smoke", "quick", "default")}[profile]
        for attr in order:
            value = getattr(self, attr)
            if value is not _UNSET:
                return value
        raise ParameterError(f"parameter {name!r}: got None, and it has no default at the {profile!r} "
                             f"profile; {self.describe()}")

    def __post_init__(self):
        missing = [f for f in ("min", "max") if hasattr(self, f) and getattr(self, f) is None]
        if missing:
            raise TypeError(f"{type(self).__name__}: give {' and '.join(missing)} (use math.inf for no upper bound)")

    def check(self, name: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _range(lo, hi, open_lo=False) -> str:
    return f"{'(' if open_lo else '['}{lo}, {hi}]"


@dataclass(frozen=True)
class Int(_Param):
    """An integer in [min, max]."""

    min: int = None
    max: int = None

    def check(self, name, value):
        return check_int(name, value, min=self.min, max=self.max)

    def describe(self):
        return f"expected an integer in {_range(self.min, self.max)}"


@dataclass(frozen=True)
class Float(_Param):
    """A finite number in [min, max] (or (min, max] with ``open_min``)."""

    min: float = None
    max: float = None
    open_min: bool = False

    def check(self, name, value):
        return check_float(name, value, min=self.min, max=self.max, open_min=self.open_min)

    def describe(self):
        return f"expected a number in {_range(self.min, self.max, self.open_min)}"


@dataclass(frozen=True)
class _Seq(_Param):
    length: tuple = (1, 64)
    increasing: bool = False

    def check(self, name, value):
        items = check_sequence(name, value, self.item, min_len=self.length[0])
        if len(items) > self.length[1]:
            raise ParameterError(f"parameter {name!r}: got {len(items)} items; expected at most {self.length[1]}")
        if self.increasing and any(b <= a for a, b in zip(items, items[1:])):
            raise ParameterError(f"parameter {name!r}: got {value!r}; expected increasing values")
        return items

    def describe(self):
        inc = " increasing" if self.increasing else ""
        return f"expected a list of {self.length[0]} to {self.length[1]}{inc} items, each {self.item_text()}"


@dataclass(frozen=True)
class Ints(_Seq):
    """A list of integers, each in [min, max], of length in ``length`` = (lo, hi)."""

    min: int = None
    max: int = None

    def item(self, name, v):
        return check_int(name, v, min=self.min, max=self.max)

    def item_text(self):
        return f"an integer in {_range(self.min, self.max)}"


@dataclass(frozen=True)
class Floats(_Seq):
    """A list of finite numbers, each in [min, max], of length in ``length`` = (lo, hi)."""

    min: float = None
    max: float = None
    open_min: bool = False

    def item(self, name, v):
        return check_float(name, v, min=self.min, max=self.max, open_min=self.open_min)

    def item_text(self):
        return f"a number in {_range(self.min, self.max, self.open_min)}"


@dataclass(frozen=True)
class Choice(_Param):
    """One of ``choices``."""

    choices: tuple = ()

    def __init__(self, choices, **kw):
        object.__setattr__(self, "choices", tuple(choices))
        for k, v in {"default": _UNSET, "quick": _UNSET, "paper": _UNSET, "smoke": _UNSET, "help": ""}.items():
            object.__setattr__(self, k, kw.pop(k, v))
        if kw:
            raise TypeError(f"Choice: unexpected arguments {sorted(kw)}")

    def check(self, name, value):
        return check_choice(name, value, self.choices)

    def describe(self):
        return f"allowed values are {list(self.choices)}"


@dataclass(frozen=True)
class Flag(_Param):
    """True or False."""

    def check(self, name, value):
        if not isinstance(value, bool):
            raise ParameterTypeError(f"parameter {name!r}: got {value!r}; expected True or False")
        return value

    def describe(self):
        return "expected True or False"


@dataclass(frozen=True)
class Text(_Param):
    """A string of at most ``max_len`` characters."""

    max_len: int = 200

    def check(self, name, value):
        if not isinstance(value, str) or len(value) > self.max_len:
            raise ParameterTypeError(f"parameter {name!r}: got {value!r}; {self.describe()}")
        return value

    def describe(self):
        return f"expected a string of at most {self.max_len} characters"


class Params:
    """The checked values of a chapter's knobs: ``p.d``, ``p.as_dict()`` (read-only)."""

    def __init__(self, values: dict, specs: dict):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_specs", dict(specs))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; the parameters are {sorted(self._values)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("parameters are read-only; change them in the parameters cell")

    def as_dict(self) -> dict:
        return dict(self._values)

    def table(self) -> str:
        """A plain-text table of the knobs, their values and what is allowed."""
        rows = [(k, repr(v), self._specs[k].describe(), self._specs[k].help) for k, v in self._values.items()]
        w = [max([len(r[i]) for r in rows] + [1]) for i in range(3)]
        return "\n".join(f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c.ljust(w[2])}  {d}".rstrip() for a, b, c, d in rows)

    def __repr__(self):
        return "Params(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def check_params(namespace: dict, profile: str, specs: dict) -> Params:
    """Check every declared knob's value in ``namespace`` (None: the profile's default)."""
    values = {}
    for name, spec in specs.items():
        if not isinstance(spec, _Param):
            raise TypeError(f"parameter {name!r}: declare it with Int, Float, Ints, Floats, Choice, Flag or Text")
        if name not in namespace:
            raise ParameterError(f"parameter {name!r} is declared but not set in the parameters cell")
        value = namespace[name]
        if isinstance(value, tuple):
            value = list(value)
        if value is None:
            value = spec.profile_default(name, profile)
        values[name] = spec.check(name, value)
    return Params(values, specs)


# ---------------------------------------------------------------- device, dtype, seed
def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None gives CUDA when present, else CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"parameter 'device': got {device!r}; allowed values are 'auto', 'cpu', 'cuda', "
                             "'cuda:N'")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("parameter 'device': got 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return dev


def pick_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice("dtype", dtype, list(DTYPES))]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    seed = check_int("seed", seed, min=0, max=MAX_SEED)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (same seed + device gives the same numbers)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def device_name(device: torch.device) -> str:
    """Human-readable device name for claim tables ("cpu (2 threads)", "NVIDIA H100 ...")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- profile
@dataclass(frozen=True)
class Runtime:
    """What a chapter runs on: profile, seed, device and default dtype."""

    profile: str
    seed: int
    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def quick(self) -> bool:
        """True at the quick profile and at smoke (which runs the quick code paths at tiny sizes)."""
        return self.profile in ("quick", "smoke")

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    @property
    def judged(self) -> bool:
        """Whether claims are judged (not at the smoke profile)."""
        return self.profile != "smoke"

    def pick(self, *, quick: Any, paper: Any, smoke: Any = _UNSET) -> Any:
        """The profile's value: ``rt.pick(quick=2000, paper=20000, smoke=20)`` (smoke defaults to quick)."""
        if self.profile == "paper":
            return paper
        return quick if self.profile == "quick" or smoke is _UNSET else smoke

    def default(self, value: Any, *, quick: Any, paper: Any, smoke: Any = _UNSET) -> Any:
        """``value`` if the reader set it (not None), else the profile's default."""
        return self.pick(quick=quick, paper=paper, smoke=smoke) if value is None else value

    def params(self, namespace: dict, **specs: _Param) -> Params:
        """Declare and check a chapter's knobs in one place: ``p = rt.params(globals(), d=Int(quick=5,
        paper=20, smoke=3, min=1, max=64))``. A None value takes the profile's default; a bad value
        raises :class:`ParameterError` naming the parameter, the value and what is allowed."""
        return check_params(namespace, self.profile, specs)

    def generator(self, offset: int = 0, device: str | torch.device | None = None) -> torch.Generator:
        """A fresh generator for experiment ``offset`` of this run's seed.

        Its seed is drawn by :class:`numpy.random.SeedSequence` from the pair (seed, offset), so streams never
        coincide across runs: seed 1's stream 4 is not seed 0's stream 5, as it would be with ``seed + offset``.
        """
        offset = check_int("offset", offset, min=0)
        state = np.random.SeedSequence([self.seed, offset]).generate_state(1, dtype=np.uint64)[0]
        g = make_generator(int(state), self.device if device is None else device)
        # the strict device check (gdlab.devicecheck) counts the run's generators as on the run's device
        return devicecheck.mark_device_generator(g) if device is None or device is self.device else g

    @property
    def device_name(self) -> str:
        return device_name(self.device)


def setup(profile: str = "quick", seed: int = 0, device: str | None = "auto",
          dtype: str | torch.dtype = "float32", style: bool = False) -> Runtime:
    """Validate the common parameters and seed everything. ``style=True`` also applies the book's
    figure style globally (the chapters opt in; a researcher's notebook is left alone).

    Raises :class:`ParameterError` naming the bad parameter. When the environment variable
    ``GDLAB_STRICT_DEVICE=1`` is set (``gdlab run --strict-device``), device mix-ups raise
    (:mod:`gdlab.devicecheck`).
    """
    check_choice("profile", profile, PROFILES)
    seed = check_int("seed", seed, min=0, max=MAX_SEED)
    rt = Runtime(profile=profile, seed=seed, device=pick_device(device), dtype=pick_dtype(dtype))
    seed_everything(seed)
    if os.environ.get("GDLAB_STRICT_DEVICE") == "1":
        from gdlab import devicecheck

        devicecheck.enable(rt.device)
    if style:
        from gdlab import plotting

        plotting.use_style()
    return rt


def progress(iterable=None, *, total: int | None = None, desc: str | None = None, enabled: bool | None = None):
    """A tqdm progress bar; off when ``GDLAB_PROGRESS=0`` (the book pipeline sets it
    so that executed notebooks stay clean; the pipeline shows its own progress)."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = os.environ.get("GDLAB_PROGRESS", "1") != "0"
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)
