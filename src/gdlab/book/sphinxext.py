"""A small Sphinx extension for the book (listed in ``_config.yml`` under ``extra_extensions``).

Roles that mark a number the prose states without a run producing it (see
:mod:`gdlab.book.prose`, rule A):

- ``{paper}`38.2``` -- a value reported by the paper cited in the same paragraph;
- ``{fixed}`384``` -- a number fixed by the text itself (a version, a model's published size).

Both render their text unchanged (in a ``<span>`` with the class ``paper-value`` or
``fixed-value``).

It adds the book's small stylesheet (``_static/gdlab.css``): code cells in a font size at which a
line of :data:`gdlab.book.prose.MAX_CODE_LINE` characters fits the page's text column on a
1280-pixel-wide screen, and figures no wider than the column.

It registers the citation style ``author_year_round`` for sphinxcontrib-bibtex: author-year
citations in round brackets, ``{cite:t}`` giving "Cohen et al. (2021)" and ``{cite:p}`` giving
"(Cohen et al., 2021)".

It also removes duplicated ``<script>`` entries from every page: sphinx-thebe adds its inline
configuration once per reading phase, and a second copy is a JavaScript error
("Identifier 'THEBE_JS_URL' has already been declared") that the browser check catches.
"""
from __future__ import annotations

__all__ = ["CSS", "paper_role", "fixed_role", "dedupe_scripts", "write_css", "register_citation_style", "setup"]

#: The book's stylesheet, written to ``_static/gdlab.css``.
#:
#: :meta hide-value:
CSS = """/* gdlab: code cells fit 90 characters in the text column (sphinx-book-theme, 1280 px screen) */
div.cell div.highlight pre, div.cell_output pre, div.output pre {
  font-size: 0.75em; line-height: 1.45; padding-left: 0.75rem; padding-right: 0.75rem;
}
figure img, div.figure img, div.cell_output img { max-width: 100%; height: auto; }
"""


def _role(cls: str, title: str):
    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        from docutils import nodes

        node = nodes.inline(rawtext, text, classes=[cls])
        node["title"] = title  # not written by the HTML writer; the class carries the meaning
        return [node], []

    return role


paper_role = _role("paper-value", "value reported by the cited paper")
fixed_role = _role("fixed-value", "a number fixed by the text, not by a run")


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``: keep the first of identical script entries (same file or body; an
    inline script may be registered with the file name None and again with "")."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique  # in place: handlers after this one (MathJax) add to the same list


def write_css(app, exception) -> None:
    """``build-finished``: write :data:`CSS` into the HTML output's ``_static`` folder."""
    from pathlib import Path

    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / "gdlab.css").write_text(CSS)


def register_citation_style() -> bool:
    """Register ``author_year_round`` (sphinxcontrib-bibtex's author-year style with round brackets).
    Returns False where sphinxcontrib-bibtex is not installed."""
    try:
        import sphinxcontrib.bibtex.plugin as plugin
        from sphinxcontrib.bibtex.style.referencing import BracketStyle
        from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
    except ImportError:
        return False
    from dataclasses import dataclass, field

    def round_brackets() -> BracketStyle:
        return BracketStyle(left="(", right=")")

    @dataclass
    class AuthorYearRound(AuthorYearReferenceStyle):
        bracket_parenthetical: BracketStyle = field(default_factory=round_brackets)
        bracket_textual: BracketStyle = field(default_factory=round_brackets)
        bracket_author: BracketStyle = field(default_factory=round_brackets)
        bracket_label: BracketStyle = field(default_factory=round_brackets)
        bracket_year: BracketStyle = field(default_factory=round_brackets)

    plugin.register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round", AuthorYearRound,
                           force=True)
    return True


def setup(app):
    """Register the roles, the citation style, the stylesheet and the script de-duplication."""
    register_citation_style()
    app.add_css_file("gdlab.css")
    app.connect("build-finished", write_css)
    app.add_role("paper", paper_role)
    app.add_role("fixed", fixed_role)
    app.connect("html-page-context", dedupe_scripts, priority=100)  # before any handler that returns a template (emit_firstresult)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
