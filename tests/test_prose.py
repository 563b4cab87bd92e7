"""The prose rules of the book (gdlab.book.prose; /work/notes/prose-rules.md): numbers from the
run, code width, citations, captioned figures, no development history. The checker is tested on
fixtures; then every chapter source, the intro and the bibliography are checked."""
from pathlib import Path

import nbformat
import pytest

from gdlab.book import notebooks, prose

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "prose"
KEYS = {"cohen2021gradient"}


def problems(text, keys=KEYS):
    return prose.check_source(text, "t.md", keys)


def rules(text, keys=KEYS):
    return sorted({p.rule for p in problems(text, keys)})


# ---- the checker on fixtures
def test_a_compliant_chapter_passes():
    assert problems((FIX / "good.md").read_text()) == []


def test_every_broken_rule_is_reported_where_it_is():
    found = {(p.line, p.rule, p.message.split("'")[1] if "'" in p.message else "")
             for p in problems((FIX / "bad.md").read_text())}
    for expected in [(3, "A number", "2021"), (3, "A number", "38.2"), (3, "A number", "0.031"),
                     (3, "A number", "100"), (3, "C plain citation", "et al"), (5, "A paper", ""),
                     (7, "A number", "256"), (7, "E history", "earlier version"), (7, "E history", "we retuned"),
                     (8, "A glue", "missing"), (8, "C citation", "nobody2099"), (11, "B width", ""),
                     (15, "D figure", ""), (26, "D figure", "Fig_Bad")]:
        assert any(f[0] == expected[0] and f[1] == expected[1] and expected[2] in f[2] for f in found), \
            (expected, sorted(found))


@pytest.mark.parametrize("text", [
    "We measured 0.5 here.", "It took 12 steps.", "A 100k model.", "Run 10x faster.", "At 5ms.",
    "In 2021, ...", "Smith et al. showed it.", "Rate -0.25 here.", "seeds 0-5 pass",
])
def test_typed_numbers_and_plain_citations_are_flagged(text):
    assert problems(text)


@pytest.mark.parametrize("text", [
    "The gap is {glue:text}`gap:.3f`.", "Math $x = 0.5$ and \\(y_1 = 2\\).", "Code `lr=0.1`.",
    "See Fig. 2, Figs. 2 and 3, Table 1b, Eq. (4), Eqs. (3)-(4), Sec. 3.2, Theorem 1, 2 and 4.",
    "Claims C2 and I1 on MNIST-1D, GPT-2, L2, fp32, v1.2, all-MiniLM-L6-v2.",
    "The 1st, 2nd, 3rd and 4th runs; 1D, 2D and 3D grids.", "[link](https://x.org/1/2.html)",
    "## 3.1 A heading", "1. an item", "{cite:t}`cohen2021gradient` report {paper}`38.2`.",
    "Python {fixed}`3.11`.", "three seeds and two layers",
])
def test_exempt_forms_pass(text):
    assert problems(text + "\n\n```{code-cell} ipython3\ngdlab.glue(\"gap\", 1)\n```\n") == []


def test_paper_value_needs_a_citation_in_its_paragraph():
    assert rules("A paper value {paper}`38.2`.") == ["A paper"]
    assert rules("{cite:t}`cohen2021gradient`\nreport {paper}`38.2`.") == []
    assert rules("{cite:t}`cohen2021gradient`.\n\nThen {paper}`38.2`.") == ["A paper"]


def test_code_width_counts_code_lines_not_the_option_header():
    long_caption = "x" * 120
    ok = f"```{{code-cell}} ipython3\n---\nmystnb:\n  figure:\n    caption: {long_caption}\n" \
         "    name: fig-a\n---\nplt.show()\n```\n\n{numref}`fig-a`\n"
    assert "B width" not in rules(ok)
    assert rules("```{code-cell} ipython3\n" + "y = 1" + " " * 86 + "\n```\n") == ["B width"]
    assert rules("```{code-cell} ipython3\n" + "y = 1" + " " * 85 + "\n```\n") == []


def test_history_phrases_are_flagged_outside_code():
    assert rules("This used to fail at seed 3.") == ["A number", "E history"]
    assert rules("Under the new seeding it passes.") == ["E history"]
    assert rules("```{code-cell} ipython3\n# an earlier version\n```\n") == []


def test_bibliography_checks():
    bib = ("@article{a2020x,\n  title = {X},\n  eprint = {2001.00001},\n}\n\n"
           "@article{b2020y,\n  title = {Y},\n  doi = {10.1/abc},\n}\n\n"
           "@article{a2020x,\n  title = {X again},\n  doi = {10.1/x},\n}\n\n"
           "@misc{c2020z,\n  title = {Z},\n}\n")
    msgs = [p.message for p in prose.check_bib(bib)]
    assert any("duplicate key 'a2020x'" in m for m in msgs)
    assert any("'c2020z' has neither eprint nor doi" in m for m in msgs)
    assert len(msgs) == 2
    assert [e["key"] for e in prose.parse_bib(bib)] == ["a2020x", "b2020y", "a2020x", "c2020z"]


def test_figure_problems_in_an_executed_notebook():
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"},
           "metadata": {}}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("plt.show()", outputs=[nbformat.from_dict(png)]),
                nbformat.v4.new_code_cell("plt.show()", outputs=[nbformat.from_dict(png)] * 2,
                                          metadata={"mystnb": {"figure": {"caption": "c", "name": "fig-x"}}}),
                nbformat.v4.new_code_cell("plt.show()", outputs=[nbformat.from_dict(png)],
                                          metadata={"mystnb": {"figure": {"caption": "c", "name": "fig-y"}}})]
    out = prose.figure_problems(nb)
    assert len(out) == 2 and "cell 0" in out[0] and "2 images" in out[1]


# ---- the book's own sources
CHAPTERS = notebooks.chapters(ROOT)


@pytest.mark.parametrize("source", CHAPTERS + [ROOT / "book" / "intro.md"], ids=lambda p: p.stem)
def test_chapter_prose_follows_the_rules(source):
    """Every rule on one chapter source. Fix the listed lines (see the rules in gdlab.book.prose)."""
    found = prose.check_file(source, ROOT)
    assert not found, f"{len(found)} prose problem(s):\n" + "\n".join(map(str, found))


def test_references_bib_has_unique_keys_with_eprint_or_doi():
    found = prose.check_bib((ROOT / "book" / "references.bib").read_text())
    assert not found, "\n".join(map(str, found))


def test_every_citation_resolves():
    keys = prose.bib_keys(ROOT)
    pages = sorted((ROOT / "book").glob("*.md"))
    missing = [(p.name, k) for p in pages for k in prose.cited_keys(p.read_text()) if k not in keys]
    assert not missing, f"cited keys not in book/references.bib: {missing}"


def test_figure_names_are_unique_across_the_book():
    seen = {}
    for source in CHAPTERS:
        for line, name in prose.figure_names(source.read_text()):
            assert name not in seen, f"figure name {name!r} in {source.name}:{line} and {seen[name]}"
            seen[name] = f"{source.name}:{line}"


@pytest.mark.parametrize("kept", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_kept_notebooks_show_every_figure_with_a_caption(kept):
    found = prose.figure_problems(nbformat.read(kept, as_version=4), kept.name)
    assert not found, "\n".join(found)


def test_bibliography_parses_as_bibtex():
    """A union merge of references.bib (.gitattributes) can drop an entry's closing lines when
    two branches end entries alike; pybtex (what sphinxcontrib-bibtex reads with) must parse it."""
    import pybtex.database

    path = Path(__file__).resolve().parents[1] / "book" / "references.bib"
    bib = pybtex.database.parse_file(str(path))
    text = path.read_text()
    assert len(bib.entries) == text.count("\n@") + text.startswith("@")
