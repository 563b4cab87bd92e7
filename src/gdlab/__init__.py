"""gdlab: the library behind "Gradient Descent, Reproduced".

Cross-cutting modules: :mod:`gdlab.runtime`, :mod:`gdlab.claims`, :mod:`gdlab.plotting`,
:mod:`gdlab.train`, :mod:`gdlab.data`, :mod:`gdlab.notebook`, :mod:`gdlab.book` (the pipeline).
Per phenomenon: :mod:`gdlab.icl` and the chapters' own modules.
"""
from gdlab.claims import Claims, Control
from gdlab.notebook import glue
from gdlab.runtime import Runtime, setup

__version__ = "0.1.0"


def __getattr__(name: str):
    """Submodules on first access: ``import gdlab; gdlab.hessian`` imports :mod:`gdlab.hessian`."""
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"gdlab.{name}") is not None:
        return importlib.import_module(f"gdlab.{name}")
    raise AttributeError(f"module 'gdlab' has no attribute {name!r}")
__all__ = ["Claims", "Control", "Runtime", "glue", "setup", "__version__"]

# submodules are reachable as attributes without an import of their own (``gdlab.hessian``),
# imported on first use so that ``import gdlab`` stays light


def _submodules() -> list[str]:
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name):
    if not name.startswith("_") and name in _submodules():
        import importlib

        return importlib.import_module(f"gdlab.{name}")
    raise AttributeError(f"module 'gdlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_submodules()))
