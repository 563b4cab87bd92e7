"""One figure style for the whole book, and a few figure helpers."""
from __future__ import annotations

import matplotlib

__all__ = ["COLORS", "STYLE", "use_style", "subplots", "heatmap", "reference_line"]


COLORS = ["#0b5fa5", "#d1495b", "#2a9d8f", "#edae49", "#6a4c93", "#8d99ae", "#3d405b", "#f4a261"]

STYLE = {
    "figure.figsize": (6.0, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 1.6,
    "image.cmap": "RdBu_r",
    "axes.prop_cycle": matplotlib.cycler(color=COLORS),
}


def use_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
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
