"""Notebook helpers for the chapters: measured numbers glued into the prose, and sharp figures.

``glue("c2_gap", 0.031)`` in a code cell stores the value in the cell's outputs without showing
it; the chapter's prose then shows it with ``{glue:text}`c2_gap:.3f``` (myst-nb). The output
has the format of ``myst_nb.glue`` (so the book renders it), without needing myst-nb in the
kernel (Colab has none).
"""
from __future__ import annotations

from typing import Any

__all__ = ["GLUE_PREFIX", "FIGURE_FORMAT", "glue", "figure_format"]

GLUE_PREFIX = "application/papermill.record/"
FIGURE_FORMAT = "retina"


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` for ``{glue:text}`` / ``{glue}`` roles in the chapter's prose.

    Tensors and NumPy scalars are stored as plain Python numbers, so that format specs such as
    ``:.3f`` work. ``display=True`` also shows the value in the cell's output."""
    import IPython
    from IPython.display import display as ipy_display

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue: name must be an identifier, got {name!r}")
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    bundle, metadata = IPython.core.formatters.format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def figure_format(fmt: str = FIGURE_FORMAT) -> bool:
    """Show inline figures sharp on high-density screens: ``"retina"`` PNGs have twice the pixels
    and carry their display size in the output's metadata (the book's HTML shows them at that
    size). PNG outputs are not compared by nbval, so validation stays stable; an SVG would be.

    Does nothing outside IPython (a script, a test); returns whether the format was set."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    if get_ipython() is None:
        return False
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats(fmt)
    return True
