"""Device, dtype, seeding, fidelity profiles and parameter validation.

Every chapter starts with ``rt = setup(profile, seed, device)``. The returned
:class:`Runtime` is the only piece of "global" state a chapter carries: it names
the profile, the seed, the device and the default dtype, and it picks
profile-dependent defaults for sizes the reader left as ``None``.
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

PROFILES = ("quick", "paper")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------- validation
def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"parameter {name!r}: got {value!r}; allowed values are {list(allowed)}")
    return value


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """Raise TypeError/ValueError unless ``value`` is an integer in [min, max]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter {name!r}: got {value!r} of type {type(value).__name__}; expected an integer")
    _check_bounds(name, value, min, max, "an integer")
    return int(value)


def check_float(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                open_min: bool = False) -> float:
    """Raise TypeError/ValueError unless ``value`` is a finite real number in [min, max].

    ``open_min=True`` excludes ``min`` itself (for step sizes and scales that must be > 0).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"parameter {name!r}: got {value!r} of type {type(value).__name__}; expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"parameter {name!r}: got {value!r}; expected a finite number")
    if open_min and min is not None and value <= min:
        raise ValueError(f"parameter {name!r}: got {value!r}; expected a number > {min}")
    _check_bounds(name, value, min, max, "a number")
    return value


def check_sequence(name: str, value: Any, check_item, *, min_len: int = 1) -> list:
    """Validate a list/tuple parameter item by item with ``check_item(name, item)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"parameter {name!r}: got {value!r}; expected a list")
    items = [check_item(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if len(items) < min_len:
        raise ValueError(f"parameter {name!r}: got {len(items)} items; expected at least {min_len}")
    return items


def _check_bounds(name, value, lo, hi, what):
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"parameter {name!r}: got {value!r}; expected {what} in {rng}")


# ---------------------------------------------------------------- device, dtype, seed
def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None gives CUDA when present, else CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"parameter 'device': got {device!r}; allowed values are 'auto', 'cpu', 'cuda', 'cuda:N'")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("parameter 'device': got 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return dev


def pick_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice("dtype", dtype, list(DTYPES))]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    seed = check_int("seed", seed, min=0)
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
        return self.profile == "quick"

    def pick(self, *, quick: Any, paper: Any) -> Any:
        """The profile's value: ``rt.pick(quick=2000, paper=20000)``."""
        return quick if self.quick else paper

    def default(self, value: Any, *, quick: Any, paper: Any) -> Any:
        """``value`` if the reader set it (not None), else the profile's default."""
        return self.pick(quick=quick, paper=paper) if value is None else value

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
          dtype: str | torch.dtype = "float32", style: bool = True) -> Runtime:
    """Validate the common parameters, seed everything, apply the figure style.

    Raises ValueError/TypeError naming the bad parameter.
    """
    check_choice("profile", profile, PROFILES)
    seed = check_int("seed", seed, min=0)
    rt = Runtime(profile=profile, seed=seed, device=pick_device(device), dtype=pick_dtype(dtype))
    seed_everything(seed)
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
