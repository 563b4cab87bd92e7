"""One figure style for the whole book, and a few figure helpers.

The style lives in a matplotlib style file shipped with the package (``gdlab.mplstyle``,
:data:`STYLE_PATH`). Importing gdlab changes nothing: use it for some figures with
``with plotting.style(): ...``, or for the whole session with :func:`use_style` (what the
chapters do) or ``plt.style.use(plotting.STYLE_PATH)``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["COLORS", "STYLE", "STYLE_PATH", "style", "use_style", "subplots", "heatmap", "reference_line"]

#: The path of the book's matplotlib style file, ``gdlab.mplstyle`` inside the package.
STYLE_PATH = str(Path(__file__).with_name("gdlab.mplstyle"))
COLORS = ["#0b5fa5", "#d1495b", "#2a9d8f", "#edae49", "#6a4c93", "#8d99ae", "#3d405b", "#f4a261"]


def _read_style() -> dict:
    import matplotlib

    return dict(matplotlib.rc_params_from_file(STYLE_PATH, use_default_template=False))


def __getattr__(name):
    if name == "STYLE":  # the style file's settings as a dict (read when asked for)
        return _read_style()
    raise AttributeError(f"module 'gdlab.plotting' has no attribute {name!r}")


@contextlib.contextmanager
def style():
    """The book's figure style inside a ``with`` block only; matplotlib's settings are restored
    on leaving it."""
    import matplotlib.pyplot as plt

    with plt.style.context(STYLE_PATH):
        yield


def use_style() -> None:
    """Apply the book's figure style globally, for the rest of the session (an explicit opt-in;
    idempotent)."""
    import matplotlib.pyplot as plt

    plt.style.use(STYLE_PATH)
    from gdlab.notebook import figure_format
    figure_format()  # inline figures sharp on high-density screens (retina PNG)


def subplots(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 3.0, **kw):
    """``plt.subplots`` sized per panel, with constrained layout."""
    import matplotlib.pyplot as plt

    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)


def heatmap(ax, matrix, title: str = "", symmetric: bool = True, colorbar: bool = True):
    """A matrix as an image, with a colour scale centred at zero when ``symmetric``."""
    import numpy as np

    m = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    vmax = float(np.abs(m).max()) or 1.0
    kw = dict(vmin=-vmax, vmax=vmax) if symmetric else {}
    im = ax.imshow(m, **kw)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return im


def reference_line(ax, y: float, label: str, color: str = "0.3", style: str = "--") -> None:
    """A horizontal reference (a paper's value, a bound such as 2/eta)."""
    ax.axhline(y, color=color, ls=style, lw=1.0, label=label)
