"""A small Sphinx extension for the book (listed in ``_config.yml`` under ``extra_extensions``).

Roles that mark a number the prose states without a run producing it (see
:mod:`gdlab.book.prose`, rule A):

- ``{paper}`38.2``` -- a value reported by the paper cited in the same paragraph;
- ``{fixed}`384``` -- a number fixed by the text itself (a version, a model's published size).

Both render their text unchanged (in a ``<span>`` with the class ``paper-value`` or
``fixed-value``, and a tooltip saying where the number comes from).
"""
from __future__ import annotations

__all__ = ["paper_role", "fixed_role", "setup"]


def _role(cls: str, title: str):
    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        from docutils import nodes

        node = nodes.inline(rawtext, text, classes=[cls])
        node["title"] = title  # not written by the HTML writer; the class carries the meaning
        return [node], []

    return role


paper_role = _role("paper-value", "value reported by the cited paper")
fixed_role = _role("fixed-value", "a number fixed by the text, not by a run")


def setup(app):
    """Register the ``paper`` and ``fixed`` roles."""
    app.add_role("paper", paper_role)
    app.add_role("fixed", fixed_role)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
