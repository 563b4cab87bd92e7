"""Mechanical checks of a chapter source's reader-facing text (the book's prose rules).

Rules (the full text, with examples, is in the "Writing a chapter" section of the book's
contributor notes and in ``tests/test_prose.py``):

A. numbers in prose come from the run (``{glue:text}``), or are exempt: math, code, roles
   (``{cite}``, ``{numref}``, ``{paper}``, ``{fixed}``, ...), links, heading/list numbering,
   identifiers (``C2``, ``MNIST-1D``), reference numbers (``Fig. 2``, ``Eq. (3)``); a
   ``{paper}`` value needs a ``{cite}`` in its paragraph; every glued name is glued in a cell;
B. code lines at most :data:`MAX_CODE_LINE` characters;
C. citations through ``{cite:t}`` / ``{cite:p}`` roles, no "et al" in plain text; keys resolve in
   ``book/references.bib``, whose entries have an ``eprint`` or a ``doi`` and unique keys;
D. a cell that draws a figure has a ``mystnb: figure: {caption, name}`` option, names unique and
   referenced with ``{numref}``;
E. no development history ("an earlier version", "we retuned", ...) in the reader's text.

Run ``python -m gdlab.book.prose book/NN-*.md`` to list the problems of a chapter.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_CODE_LINE", "HISTORY", "Problem", "Cell", "parse", "strip_exempt", "number_problems",
           "strip_for_cite", "figure_option", "figure_names", "check_source", "check_file", "cited_keys",
           "parse_bib", "check_bib", "bib_keys", "figure_problems", "main"]

#: The longest code line a chapter may have (characters): what fits the page.
MAX_CODE_LINE = 90

# ---------------------------------------------------------------- parsing a MyST chapter


@dataclass
class Problem:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


@dataclass
class Cell:
    """A code cell of a MyST notebook: its first code line number, its code lines and options."""
    line: int
    code: list[str]
    options: dict


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,}|:{3,})\s*(\{([\w:-]+)\})?\s*(.*)$")
CODE_DIRECTIVES = {"code-cell", "code-block", "code", "sourcecode", "literalinclude", "math", "raw",
                   "glue:figure", "glue:math", "bibliography", "toctree", "tableofcontents", "image",
                   "figure", "include", "list-table", "csv-table", "eval-rst", "mermaid", "graphviz"}


def _front_matter_end(lines: list[str]) -> int:
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                return i + 1
    return 0


def _cell_options(body: list[str]) -> tuple[dict, int]:
    """(options, number of header lines) of a code cell body: a ``---`` YAML block or ``:key: value``
    lines at its start."""
    import yaml

    if body and body[0].strip() == "---":
        for j in range(1, len(body)):
            if body[j].strip() == "---":
                try:
                    opts = yaml.safe_load("\n".join(body[1:j])) or {}
                except yaml.YAMLError:
                    opts = {"_yaml_error": True}
                return (opts if isinstance(opts, dict) else {"_yaml_error": True}), j + 1
    n, opts = 0, {}
    while n < len(body) and re.match(r"^:[\w-]+:", body[n]):
        key, _, value = body[n][1:].partition(":")
        opts[key] = value.strip()
        n += 1
    return opts, n


def parse(text: str) -> tuple[list[tuple[int, str]], list[Cell]]:
    """Split a MyST source into prose lines ``(line number, text)`` and code cells.

    Prose excludes the front matter, code-like fenced blocks, display math, comments and
    directive option lines; it includes the text inside admonitions and colon fences."""
    lines = text.split("\n")
    prose: list[tuple[int, str]] = []
    cells: list[Cell] = []
    i = _front_matter_end(lines)
    in_math = False
    in_comment = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if in_comment:
            if "-->" in line:
                in_comment = False
                rest = line.split("-->", 1)[1]
                if rest.strip():
                    prose.append((i + 1, rest))
            i += 1
            continue
        if in_math:
            if stripped.endswith("$$") or stripped.endswith("\\]"):
                in_math = False
            i += 1
            continue
        m = FENCE.match(line)
        if m:
            fence, directive = m.group(2), (m.group(4) or "")
            is_code = fence[0] != ":" and (not m.group(3) or directive in CODE_DIRECTIVES)
            is_code = is_code or directive in CODE_DIRECTIVES
            # find the closing fence (same character, at least as long)
            j = i + 1
            while j < len(lines):
                close = lines[j].strip()
                if close and set(close) == {fence[0]} and len(close) >= len(fence):
                    break
                j += 1
            body = lines[i + 1:j]
            if directive == "code-cell":
                opts, n = _cell_options(body)
                cells.append(Cell(i + 2 + n, body[n:], opts))
            elif not is_code:
                # an admonition-like directive: skip its option lines, keep its text as prose
                _, n = _cell_options(body)
                for k, b in enumerate(body[n:]):
                    if not FENCE.match(b):
                        prose.append((i + 2 + n + k, b))
                # nested fences inside are rare; treat the body line by line above
            i = j + 1
            continue
        if stripped.startswith("%") or stripped.startswith("+++"):
            i += 1
            continue
        if stripped.startswith("<!--"):
            if "-->" not in stripped:
                in_comment = True
            i += 1
            continue
        if stripped.startswith("$$") or stripped.startswith("\\["):
            closed = (len(stripped) > 2 and (stripped[2:].rstrip().endswith("$$")
                                             or stripped.endswith("\\]")))
            if not closed:
                in_math = True
            i += 1
            continue
        if stripped.startswith("(") and stripped.endswith(")=") and " " not in stripped:
            i += 1  # a MyST target label: (sec-name)=
            continue
        prose.append((i + 1, line))
        i += 1
    return prose, cells


# ---------------------------------------------------------------- rule A: numbers
ROLE = re.compile(r"\{([\w:.-]+)\}`([^`]*)`")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$|\\\((.+?)\\\)")
LINK_TARGET = re.compile(r"\]\(([^)]*)\)|<https?://[^>]*>|https?://\S+")
HEADING_NUM = re.compile(r"^(\s*#{1,6}\s+)(\d+(\.\d+)*\.?)(?=\s)")
LIST_MARKER = re.compile(r"^(\s*)(\d+[.)])(?=\s)")
REF_WORDS = (r"Sections?|Secs?\.|§§?|Figures?|Figs?\.|Tables?|Tabs?\.|Equations?|Eqs?\.|Theorems?|Thms?\.|"
             r"Lemmas?|Lemmata|Propositions?|Props?\.|Corollar(?:y|ies)|Cors?\.|Definitions?|Defs?\.|"
             r"Assumptions?|Remarks?|Algorithms?|Algs?\.|Appendix|Appendices|App\.|Chapters?|Chs?\.|Parts?|"
             r"Examples?|Exercises?|Panels?|Lines?|pages?|pp?\.")
REF_ITEM = r"\(?[A-Z]?\d+(?:\.\d+)*[a-z]?\)?"
REF = re.compile(rf"\b(?:{REF_WORDS})\s*{REF_ITEM}(?:\s*(?:,|–|-|—|and|&|or|to)\s*{REF_ITEM})*",
                 re.IGNORECASE)
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(?<![A-Za-z]-)\d+(?:[.,]\d+)*(?!st\b|nd\b|rd\b|th\b|[dD]\b)")
IDENT_TOKEN = re.compile(r"\b[A-Za-z][A-Za-z0-9_]*(?:[-.][A-Za-z0-9_]+)+\b")
GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")
PAPER_ROLE = re.compile(r"\{paper\}`")
CITE_ROLE = re.compile(r"\{cite(?::\w+)?\}`([^`]*)`")


def _blank(m: re.Match) -> str:
    return " " * (m.end() - m.start())


def strip_exempt(line: str) -> str:
    """The line with every exempt span (math, code, roles, links, numbering, identifiers,
    reference numbers) replaced by spaces, so that the columns of what remains still match."""
    s = ROLE.sub(_blank, line)
    s = INLINE_CODE.sub(_blank, s)
    s = INLINE_MATH.sub(_blank, s)
    s = LINK_TARGET.sub(_blank, s)
    s = HEADING_NUM.sub(lambda m: m.group(1) + " " * len(m.group(2)), s)
    s = LIST_MARKER.sub(lambda m: m.group(1) + " " * len(m.group(2)), s)
    s = re.sub(r"\[\^[\w-]+\]", _blank, s)  # footnote labels
    s = REF.sub(_blank, s)
    s = IDENT_TOKEN.sub(lambda m: _blank(m) if re.search(r"[A-Za-z]", m.group(0).split("-")[0].split(".")[0])
                        else m.group(0), s)
    return s


def number_problems(line: str) -> list[str]:
    """The numbers in a prose line that no exemption covers."""
    return [m.group(0) for m in NUMBER.finditer(strip_exempt(line))]


def _paragraphs(prose: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    paras, cur, last = [], [], None
    for no, text in prose:
        if not text.strip() or (last is not None and no != last + 1):
            if cur:
                paras.append(cur)
            cur = []
        if text.strip():
            cur.append((no, text))
        last = no
    if cur:
        paras.append(cur)
    return paras


# ---------------------------------------------------------------- rule D: figures
FIGURE_CALL = re.compile(r"\b(plt\.show|plt\.subplots|plt\.figure|plotting\.subplots|plotting\.figure|"
                         r"plotting\.show)\(")
FIG_NAME = re.compile(r"^fig-[a-z0-9-]+$")
NUMREF = re.compile(r"\{numref\}`(?:[^`<]*<)?([\w-]+)>?`")


def figure_option(opts: dict) -> dict | None:
    fig = (opts.get("mystnb") or {}).get("figure") if isinstance(opts.get("mystnb"), dict) else None
    return fig if isinstance(fig, dict) else None


def figure_names(text: str) -> list[tuple[int, str]]:
    """(line, name) of every figure label declared by a code cell option."""
    _, cells = parse(text)
    out = []
    for c in cells:
        fig = figure_option(c.options)
        if fig and fig.get("name"):
            out.append((c.line, str(fig["name"])))
    return out


# ---------------------------------------------------------------- rule E: history
#: Phrases of development history that reader text must not contain (case-insensitive regexes).
HISTORY = [r"earlier version", r"previous version", r"older version", r"new version", r"this version",
           r"earlier draft", r"previous draft", r"earlier run", r"previous run", r"earlier session",
           r"we first tried", r"now passes", r"now fails", r"no longer passes",
           r"no longer fails", r"used to pass", r"used to fail", r"we changed", r"we fixed",
           r"we retuned", r"retuned", r"re-tuned", r"we switched", r"we replaced", r"was changed",
           r"were changed", r"has been changed", r"was fixed", r"bug", r"bugfix", r"the fix", r"new seeding",
           r"old seeding", r"re-saved", r"resaved", r"kept notebook", r"claims v2", r"TODO", r"FIXME", r"XXX",
           r"issue #", r"issue \d+", r"commit [0-9a-f]{7}", r"the lead"]
HISTORY_RE = re.compile(r"\b(" + "|".join(HISTORY) + r")\b", re.IGNORECASE)


# ---------------------------------------------------------------- the whole check
def check_source(text: str, path: str = "<source>", bib_keys: set[str] | None = None,
                 numbers: bool = True) -> list[Problem]:
    """Every problem of one MyST source under rules A-E (C's key resolution when ``bib_keys``)."""
    prose, cells = parse(text)
    problems: list[Problem] = []
    add = lambda no, rule, msg: problems.append(Problem(path, no, rule, msg))  # noqa: E731

    # captions are prose too
    captions = []
    for c in cells:
        fig = figure_option(c.options)
        if fig and isinstance(fig.get("caption"), str):
            captions.append((c.line - 1, fig["caption"].replace("\n", " ")))

    code_text = "\n".join("\n".join(c.code) for c in cells)
    glued = set(re.findall(r"\bglue\(\s*[\"']([A-Za-z_]\w*)[\"']", code_text))
    for no, line in prose + captions:
        if numbers:
            for num in number_problems(line):
                add(no, "A number", f"{num!r} typed in prose: glue it from a cell ({{glue:text}}), "
                                    "or use {paper}/{fixed}, math, or words")
        for name in GLUE_ROLE.findall(line):
            if name.strip() not in glued:
                add(no, "A glue", f"{{glue}} name {name.strip()!r} is not glued in any code cell "
                                  f"(gdlab.glue({name.strip()!r}, value))")
        if re.search(r"\bet al\b", strip_for_cite(line)):
            add(no, "C plain citation", "'et al' in plain text: cite with {cite:t}`key`")
        for keys in CITE_ROLE.findall(line):
            for key in (k.strip() for k in keys.split(",")):
                if bib_keys is not None and key and key not in bib_keys:
                    add(no, "C citation", f"key {key!r} is not in book/references.bib")
        for m in HISTORY_RE.finditer(strip_for_cite(line)):
            add(no, "E history", f"development history in reader text: {m.group(0)!r}")
    # {paper} needs a citation in its paragraph
    for para in _paragraphs(prose):
        joined = " ".join(t for _, t in para)
        if PAPER_ROLE.search(joined) and not CITE_ROLE.search(joined):
            add(para[0][0], "A paper", "{paper} value without a {cite:...} role in the same paragraph")
    # B: code line width
    for c in cells:
        for k, code in enumerate(c.code):
            if len(code) > MAX_CODE_LINE:
                add(c.line + k, "B width", f"code line of {len(code)} characters (at most {MAX_CODE_LINE})")
    # D: figures
    referenced = set()
    for _, line in prose + captions:
        referenced.update(NUMREF.findall(line))
    for c in cells:
        code = "\n".join(l for l in c.code if not l.lstrip().startswith("#"))
        fig = figure_option(c.options)
        if c.options.get("_yaml_error"):
            add(c.line, "D figure", "the cell's option header is not valid YAML")
        if FIGURE_CALL.search(code) and fig is None:
            add(c.line, "D figure", "this cell draws a figure: give it a `mystnb: figure: {caption, name}` option")
        if fig is not None:
            name, caption = str(fig.get("name") or ""), fig.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                add(c.line, "D figure", "figure option without a caption")
            if not FIG_NAME.match(name):
                add(c.line, "D figure", f"figure name {name!r} must match fig-[a-z0-9-]+")
            elif name not in referenced:
                add(c.line, "D figure", f"figure {name!r} is never referenced with {{numref}}`{name}`")
    return problems


def strip_for_cite(line: str) -> str:
    """The line without roles, code and link targets (where 'et al' and history phrases may stand)."""
    s = ROLE.sub(_blank, line)
    s = INLINE_CODE.sub(_blank, s)
    return LINK_TARGET.sub(_blank, s)


def cited_keys(text: str) -> list[str]:
    """Every citation key of the ``{cite...}`` roles of a source (prose and captions)."""
    keys = []
    for group in CITE_ROLE.findall(text):
        keys += [k.strip() for k in group.split(",") if k.strip()]
    return keys


# ---------------------------------------------------------------- the bibliography
ENTRY = re.compile(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)


def parse_bib(text: str) -> list[dict]:
    """The entries of a BibTeX file: ``{"type", "key", "line", "fields"}`` (field names lowercase).
    Parsed by brace matching, enough for the book's own file."""
    out = []
    for m in ENTRY.finditer(text):
        if m.group(1).lower() in ("comment", "preamble", "string"):
            continue
        depth, j = 1, text.index("{", m.start()) + 1
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        body = text[m.end():j - 1]
        fields = {f.lower(): v.strip() for f, v in re.findall(r"(\w+)\s*=\s*([{\"]?[^\n]*)", body)}
        out.append({"type": m.group(1).lower(), "key": m.group(2), "line": text.count("\n", 0, m.start()) + 1,
                    "fields": fields})
    return out


def check_bib(text: str, path: str = "book/references.bib") -> list[Problem]:
    """Unique keys, and an ``eprint`` or ``doi`` in every entry."""
    problems, seen = [], {}
    for e in parse_bib(text):
        if e["key"] in seen:
            problems.append(Problem(path, e["line"], "C bib", f"duplicate key {e['key']!r} "
                                                              f"(first at line {seen[e['key']]})"))
        seen.setdefault(e["key"], e["line"])
        if not (e["fields"].get("eprint") or e["fields"].get("doi")):
            problems.append(Problem(path, e["line"], "C bib", f"entry {e['key']!r} has neither eprint nor doi"))
    return problems


def bib_keys(root: Path) -> set[str]:
    path = root / "book" / "references.bib"
    return {e["key"] for e in parse_bib(path.read_text())} if path.exists() else set()


def check_file(path: Path, root: Path | None = None, numbers: bool = True) -> list[Problem]:
    """:func:`check_source` on a file, with the citation keys of ``<root>/book/references.bib``."""
    root = root or path.resolve().parent.parent
    return check_source(path.read_text(), str(path), bib_keys(root), numbers=numbers)


# ---------------------------------------------------------------- executed notebooks
def figure_problems(nb, path: str = "<notebook>") -> list[str]:
    """In an executed notebook: every image output sits in a cell with a ``mystnb.figure`` caption
    and name, and such a cell shows exactly one image."""
    out = []
    for k, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        images = sum(1 for o in cell.get("outputs", []) for mime in o.get("data", {})
                     if mime.startswith("image/"))
        fig = figure_option(cell.get("metadata", {}))
        if images and fig is None:
            out.append(f"{path}: cell {k} shows {images} image(s) without a mystnb figure option")
        elif fig is not None and images != 1:
            out.append(f"{path}: cell {k} has a figure option and {images} images (exactly one expected)")
        elif fig is not None and not (fig.get("caption") and fig.get("name")):
            out.append(f"{path}: cell {k}: the figure option needs a caption and a name")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m gdlab.book.prose book/NN-chapter.md [...]")
        return 2
    problems = []
    for arg in argv:
        problems += check_file(Path(arg))
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
